"""A static, preallocated key/value cache shared by all streams of one generation.

Every row of the batch is one stream (the conditional and unconditional CFG streams of each image).
Rows are left-aligned to a common write pointer: a shorter prompt is left-padded and `starts[b]`
marks its first real slot. Positions restart at 0 from there, so each stream sees exactly the
sequence it would see alone.

Formats: "bf16" keeps keys and values in the model's compute dtype (bf16 on GPUs; the default).
"int8" keeps them as int8 with a float32 scale and zero per token and head (asymmetric: the
token-head vector's min..max in 255 steps), which halves the cache. Asymmetric, not amax/127: keys
carry per-channel offsets (the q/k-norm bias), and on the demo model symmetric keys flipped 4 of 10
greedy images against 2 of 10 for asymmetric ones (a bf16 cache also flips 2 of 10 there). Each token's scale is its own, so a slot rewritten by a later SJD window or
forgotten by rollback never touches another slot: rollback still only moves the write pointer.
Attention reads an int8 layer by dequantising its first kv_len slots into one pair of buffers
shared by all layers (one layer's worth of compute-dtype K and V), never the whole cache.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

KV_FORMATS = ("bf16", "int8")


def quantize_kv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., D] -> (int8 q [..., D], float32 [..., 2] = (scale, zero)) with x ~= q * scale + zero."""
    x = x.float()
    lo, hi = x.amin(-1), x.amax(-1)
    scale = ((hi - lo) / 255.0).clamp(min=1e-12)
    zero = lo + 128.0 * scale
    q = torch.round((x - zero[..., None]) / scale[..., None]).clamp_(-128, 127).to(torch.int8)
    return q, torch.stack((scale, zero), -1)


@contextmanager
def kv_cache_format(model, fmt: str | None):
    """Generations inside use a `fmt` ("bf16"/"int8") cache (None: leave the model's choice), e.g.
    `with kv_cache_format(model, "int8"): generate(model, ...)`. The choice lives on the model as
    `kv_cache_format`, which every sampler's KVCache.for_model reads."""
    if fmt is not None and fmt not in KV_FORMATS:
        raise ValueError(f"KV cache format must be one of {KV_FORMATS}, got {fmt!r}")
    before = getattr(model, "kv_cache_format", None)
    if fmt is not None:
        model.kv_cache_format = fmt
    try:
        yield
    finally:
        model.kv_cache_format = before


class KVCache:
    def __init__(self, num_layers: int, batch: int, num_kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str, fmt: str = "bf16"):
        if fmt not in KV_FORMATS:
            raise ValueError(f"KV cache format must be one of {KV_FORMATS}, got {fmt!r}")
        shape = (batch, num_kv_heads, max_len, head_dim)
        self.format, self.dtype = fmt, dtype
        store = dtype if fmt == "bf16" else torch.int8
        # zeros, not empty: masked slots still enter the attention product and must be finite.
        self.k = [torch.zeros(shape, dtype=store, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=store, device=device) for _ in range(num_layers)]
        if fmt == "int8":
            # (scale, zero) per slot: [B, heads, slots, 2]
            self.k_scale = [torch.zeros(*shape[:3], 2, dtype=torch.float32, device=device) for _ in range(num_layers)]
            self.v_scale = [torch.zeros(*shape[:3], 2, dtype=torch.float32, device=device) for _ in range(num_layers)]
            # the read buffers: one layer of K and V in the compute dtype, reused by every layer
            self.read_k = torch.zeros(shape, dtype=dtype, device=device)
            self.read_v = torch.zeros(shape, dtype=dtype, device=device)
        else:
            self.k_scale = self.v_scale = []
        self.starts = torch.zeros(batch, dtype=torch.long, device=device)
        self.max_len = max_len
        self.length = 0  # slots filled so far (host-side write pointer)

    @classmethod
    def for_model(cls, model, batch: int, max_len: int, fmt: str | None = None) -> "KVCache":
        """fmt: "bf16" or "int8"; default the model's `kv_cache_format` attribute (else "bf16")."""
        cfg = model.config
        fmt = fmt or getattr(model, "kv_cache_format", None) or "bf16"
        heads = getattr(model, "local_kv_heads", cfg.num_key_value_heads)  # a tensor-parallel shard's own (tp.py)
        return cls(cfg.num_hidden_layers, batch, heads, max_len, cfg.head_dim,
                   model.compute_dtype, model.device, fmt)

    def row_view(self, step: int) -> "KVCache":
        """A cache over rows 0, step, 2*step, ... sharing this cache's storage (writes land here)."""
        view = KVCache.__new__(KVCache)
        view.format, view.dtype = self.format, self.dtype
        view.k = [t[::step] for t in self.k]
        view.v = [t[::step] for t in self.v]
        view.k_scale = [t[::step] for t in self.k_scale]
        view.v_scale = [t[::step] for t in self.v_scale]
        if self.format == "int8":  # scratch: the first rows of the read buffers serve the view
            rows = view.k[0].shape[0] if view.k else 0
            view.read_k, view.read_v = self.read_k[:rows], self.read_v[:rows]
        view.starts = self.starts[::step]
        view.max_len, view.length = self.max_len, self.length
        return view

    @property
    def batch(self) -> int:
        return self.starts.shape[0]

    def tensors(self) -> list[torch.Tensor]:
        """Every per-row tensor [B, heads, slots, ...] (values, scales and zeros): what a prompt copy copies."""
        return self.k + self.v + self.k_scale + self.v_scale

    def layer(self, i: int):
        """What layer i's attention gets: (K, V) buffers for the bf16 format, an Int8LayerKV otherwise."""
        if self.format == "bf16":
            return self.k[i], self.v[i]
        return Int8LayerKV(self, i)

    def nbytes(self) -> int:
        extra = [self.read_k, self.read_v] if self.format == "int8" else []
        return sum(t.numel() * t.element_size() for t in self.tensors() + extra)

    @staticmethod
    def estimate_bytes(config, batch: int, max_len: int, dtype: torch.dtype, fmt: str = "bf16") -> int:
        """Bytes of a cache of `batch` rows and `max_len` slots (int8: values, scales and read buffers)."""
        per = torch.tensor([], dtype=dtype).element_size()
        values = 2 * config.num_hidden_layers * batch * config.num_key_value_heads * max_len * config.head_dim
        if fmt == "bf16":
            return values * per
        scales = 2 * config.num_hidden_layers * batch * config.num_key_value_heads * max_len * 8
        read = 2 * batch * config.num_key_value_heads * max_len * config.head_dim * per
        return values + scales + read

    @classmethod
    def gather(cls, parts: list[tuple["KVCache", torch.Tensor]], max_len: int) -> "KVCache":
        """A new cache of `max_len` slots holding the given rows of other caches, in order: parts are (cache,
        row indices). Only the filled slots are copied (every part must hold the same length), so a cache can
        shrink to the rows that survive (best-of-N's early pruning) and grow to the slots they still need;
        the rows' values, scales and starts are copied bit for bit."""
        first = parts[0][0]
        length = first.length
        if any(c.length != length for c, _ in parts):
            raise ValueError("the caches to gather hold different lengths: " + ", ".join(str(c.length) for c, _ in parts))
        if max_len < length:
            raise ValueError(f"a gathered cache of {max_len} slots cannot hold the {length} filled ones")
        rows = sum(len(index) for _, index in parts)
        batch, heads, _, head_dim = first.k[0].shape
        out = cls(len(first.k), rows, heads, max_len, head_dim, first.dtype, first.k[0].device, first.format)
        at = 0
        for cache, index in parts:
            index = index.to(cache.starts.device)
            for dst, src in zip(out.tensors(), cache.tensors()):
                dst[at:at + len(index), :, :length] = src[index, :, :length]
            out.starts[at:at + len(index)] = cache.starts[index]
            at += len(index)
        out.length = length
        return out

    def slots(self, count: int) -> torch.Tensor:
        if self.length + count > self.max_len:
            raise RuntimeError(f"KV cache overflow: {self.length}+{count} > {self.max_len}")
        return torch.arange(self.length, self.length + count, device=self.starts.device)

    def rollback(self, count: int) -> None:
        """Forget the last `count` slots (speculative tokens that were not accepted)."""
        if count < 0 or count > self.length:
            raise ValueError(f"cannot roll back {count} of {self.length} slots")
        self.length -= count


class Int8LayerKV:
    """One layer of an int8 cache: `update` writes new keys/values and returns the attended K and V."""

    def __init__(self, cache: KVCache, i: int):
        self.k, self.v = cache.k[i], cache.v[i]
        self.k_scale, self.v_scale = cache.k_scale[i], cache.v_scale[i]
        self.read_k, self.read_v = cache.read_k, cache.read_v

    def update(self, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor, kv_len: int):
        """k, v [B, heads, T, D] written at `slots` ([T], or [B, T] per row); returns K, V [B, heads, kv_len, D]
        in the compute dtype (views of the shared read buffers, valid until the next layer's update)."""
        for new, q_buf, s_buf in ((k, self.k, self.k_scale), (v, self.v, self.v_scale)):
            q, s = quantize_kv(new)
            if slots.ndim == 1:
                q_buf.index_copy_(2, slots, q)
                s_buf.index_copy_(2, slots, s)
            else:
                rows = torch.arange(new.shape[0], device=slots.device)[:, None]
                q_buf[rows, :, slots] = q.transpose(1, 2)
                s_buf[rows, :, slots] = s.transpose(1, 2)
        out = []
        for q_buf, s_buf, read in ((self.k, self.k_scale, self.read_k), (self.v, self.v_scale, self.read_v)):
            dst = read[:, :, :kv_len]
            sz = s_buf[:, :, :kv_len]
            torch.mul(q_buf[:, :, :kv_len], sz[..., :1], out=dst)
            dst.add_(sz[..., 1:])
            out.append(dst)
        return out[0], out[1]
