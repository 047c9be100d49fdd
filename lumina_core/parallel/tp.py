"""Tensor parallelism over torch.distributed (NCCL on GPUs, gloo on CPU): one model split across N ranks.

Each decoder layer is split by attention heads and by MLP hidden units (Megatron style): q/k/v and
gate/up are column-parallel (a rank computes its own heads / hidden units), o and down are row-parallel
(a rank multiplies its part of the input and one all-reduce sums the partial outputs). The per-head q/k
LayerNorm weights, the rotary table and the KV cache are local to a rank's heads. The lm_head rows are
split too: a rank holds its share of the image-code rows and of the other rows, and an all-gather puts
the logits back together exactly. Embedding and RMSNorm weights are replicated (small).

Every rank runs the same decoding loop on identical logits; sampling noise is counter-based (rng.py),
so every rank draws the same token without any extra communication.

Loading: `load_sharded` builds the model on the meta device at the rank's local shapes and streams only
the rank's slices out of the safetensors files (checkpoint.load_state_streaming with a `transform`).
Quantization runs after sharding, on the rank's local float layers (per-output-channel int8 is exact per
shard), through a function that takes one local nn.Linear and returns its replacement.
"""
from __future__ import annotations

import os
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from ..errors import CheckpointError, InputError
from ..model.transformer import HeadLayerNorm
from .collectives import ShardedHead, add_collectives_  # noqa: F401 (ShardedHead: part of tp's surface)
from .group import Rendezvous, init_env_group, init_group, leave_group  # noqa: F401 (tp's callers start groups here)
from .shard import Shard

QuantizeFn = Callable[[nn.Linear, bool], nn.Module]  # (local float layer, row_parallel) -> layer


def check_divisible(cfg, world: int) -> None:
    """A clear error when the model cannot be split `world` ways."""
    if world < 1:
        raise InputError(f"a tensor-parallel group needs at least 1 rank, got {world}")
    for what, n in (("attention heads", cfg.num_attention_heads), ("key/value heads", cfg.num_key_value_heads),
                    ("MLP hidden units (intermediate_size)", cfg.intermediate_size)):
        if n % world:
            raise InputError(f"the model's {n} {what} do not split evenly over {world} devices; use a number of "
                             f"devices that divides {n} (e.g. 2 or 4 for Lumina-mGPT 2.0).")


# ----------------------------------------------------------------------------------------- what each rank holds
def _rows(t, a: int, b: int) -> torch.Tensor:
    return t[a:b]


def _cols(t, a: int, b: int) -> torch.Tensor:
    return t[:, a:b]


def _whole(t) -> torch.Tensor:
    return t[:]


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    if t.shape[0] == rows:
        return t
    return torch.cat([t, t.new_zeros(rows - t.shape[0], *t.shape[1:])])


class Plan:
    """Which part of each checkpoint tensor a rank holds (names are the checkpoint's keys).

    Works on a safetensors slice (reads only those bytes) or on a full in-memory tensor alike.
    code_rows: the vocabulary rows [c0, c1) of the image codes (the rows the samplers ask for).
    """

    def __init__(self, cfg, shard: Shard, code_rows: tuple[int, int] | None):
        self.cfg, self.shard = cfg, shard
        self.code_rows = code_rows or (0, 0)
        D = cfg.head_dim
        q0, q1 = shard.span(cfg.num_attention_heads)
        k0, k1 = shard.span(cfg.num_key_value_heads)
        self.q_heads, self.kv_heads = (q0, q1), (k0, k1)
        self.q_feat, self.kv_feat = (q0 * D, q1 * D), (k0 * D, k1 * D)
        self.mlp = shard.span(cfg.intermediate_size)
        c0, c1 = self.code_rows
        self.codes = shard.padded_span(c1 - c0)                    # over the image-code rows
        self.rest = shard.padded_span(cfg.vocab_size - (c1 - c0))  # over every other row, in vocabulary order

    @property
    def head_rows(self) -> int:
        """Rows of this rank's lm_head: its image-code chunk, then its chunk of the other rows (zero padded)."""
        return self.codes[2] + self.rest[2]

    def take(self, name: str, t) -> torch.Tensor:
        """This rank's part of checkpoint tensor `name` (t: a safetensors slice or a tensor)."""
        leaf = name.rsplit(".", 2)
        kind = leaf[-2] if len(leaf) >= 2 else ""
        is_bias = name.endswith(".bias")
        if kind == "q_proj":
            return _rows(t, *self.q_feat)
        if kind in ("k_proj", "v_proj"):
            return _rows(t, *self.kv_feat)
        if kind in ("gate_proj", "up_proj"):
            return _rows(t, *self.mlp)
        if kind in ("o_proj", "down_proj"):
            if is_bias:  # added once to the sum, not once per rank
                full = _whole(t)
                return full if self.shard.rank == 0 else torch.zeros_like(full)
            return _cols(t, *(self.q_feat if kind == "o_proj" else self.mlp))
        if kind in ("q_norm", "k_norm"):
            return self._head_norm(t, kind)
        if name == "lm_head.weight":
            return self._head(t)
        return _whole(t)  # embedding, RMSNorm weights: replicated

    def _head_norm(self, t, kind: str) -> torch.Tensor:
        full = _whole(t)
        groups = full.shape[0] if full.ndim == 2 else 1
        if groups == 1:
            return full  # one gamma/beta for every head: replicated
        heads = self.cfg.num_attention_heads if kind == "q_norm" else self.cfg.num_key_value_heads
        a, b = self.q_heads if kind == "q_norm" else self.kv_heads
        return full.repeat_interleave(heads // groups, 0)[a:b]  # per head, this rank's heads

    def _head(self, t) -> torch.Tensor:
        c0, c1 = self.code_rows
        ca, cb, cchunk = self.codes
        ra, rb, rchunk = self.rest
        codes = _rows(t, c0 + ca, c0 + cb) if cb > ca else None
        parts = []
        # the other rows in vocabulary order: [0, c0) then [c1, V); this rank's [ra, rb) of them
        if ra < min(rb, c0):
            parts.append(_rows(t, ra, min(rb, c0)))
        lo, hi = max(ra, c0), rb
        if lo < hi:
            parts.append(_rows(t, lo - c0 + c1, hi - c0 + c1))
        hidden = self.cfg.hidden_size
        codes = _pad_rows(codes if codes is not None else torch.zeros(0, hidden, dtype=_dtype_of(parts, t)), cchunk)
        rest = torch.cat(parts) if parts else torch.zeros(0, hidden, dtype=codes.dtype)
        return torch.cat([codes, _pad_rows(rest.to(codes.dtype), rchunk)])


def _dtype_of(parts, t) -> torch.dtype:
    if parts:
        return parts[0].dtype
    return t.dtype if isinstance(t, torch.Tensor) else torch.float32


# ----------------------------------------------------------------------------------------- local module shapes
def _resize_linear_(lin: nn.Module, out_features: int | None = None, in_features: int | None = None) -> None:
    out, inp = out_features or lin.out_features, in_features or lin.in_features
    dtype = lin.weight.dtype
    lin.weight = nn.Parameter(torch.empty(out, inp, device="meta", dtype=dtype), requires_grad=False)
    if lin.bias is not None:
        lin.bias = nn.Parameter(torch.empty(out, device="meta", dtype=dtype), requires_grad=False)
    lin.out_features, lin.in_features = out, inp


def _resize_head_norm_(norm: HeadLayerNorm, local_heads: int) -> None:
    norm.num_heads = local_heads
    if norm.groups == 1:
        return
    D, dtype = norm.weight.shape[-1], norm.weight.dtype
    norm.groups = local_heads  # stored per head once sliced (see Plan._head_norm)
    norm.weight = nn.Parameter(torch.empty(local_heads, D, device="meta", dtype=dtype), requires_grad=False)
    norm.bias = nn.Parameter(torch.empty(local_heads, D, device="meta", dtype=dtype), requires_grad=False)


def localize_(model, plan: Plan) -> None:
    """Give the (meta) model this rank's shapes: local heads, hidden units and lm_head rows."""
    cfg = model.config
    H, Hkv, D = (plan.q_heads[1] - plan.q_heads[0]), (plan.kv_heads[1] - plan.kv_heads[0]), cfg.head_dim
    inter = plan.mlp[1] - plan.mlp[0]
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        attn.num_heads, attn.num_kv_heads = H, Hkv
        _resize_linear_(attn.q_proj, out_features=H * D)
        _resize_linear_(attn.k_proj, out_features=Hkv * D)
        _resize_linear_(attn.v_proj, out_features=Hkv * D)
        _resize_linear_(attn.o_proj, in_features=H * D)
        _resize_head_norm_(attn.q_norm, H)
        _resize_head_norm_(attn.k_norm, Hkv)
        _resize_linear_(mlp.gate_proj, out_features=inter)
        _resize_linear_(mlp.up_proj, out_features=inter)
        _resize_linear_(mlp.down_proj, in_features=inter)
    _resize_linear_(model.lm_head, out_features=plan.head_rows)
    model.local_kv_heads = Hkv  # KVCache.for_model allocates this many heads


ROW_PARALLEL = ("o_proj", "down_proj")


def quantize_linears_(model, quantize: QuantizeFn) -> None:
    """Replace every local nn.Linear (body and lm_head) by quantize(linear, row_parallel), one at a time.
    row_parallel: the layer holds a slice of the input features (o_proj, down_proj)."""
    targets = [(parent, name) for parent in model.modules() for name, child in parent.named_children()
               if isinstance(child, nn.Linear)]
    for parent, name in targets:
        setattr(parent, name, quantize(getattr(parent, name), name in ROW_PARALLEL))


def int8_quantizer(dtype: torch.dtype, shard: Shard) -> QuantizeFn:
    """Per-output-channel int8 giving every rank the int8 values and scales of the unsplit layer: a
    row-parallel layer's channel amax is the max over every rank's slice (one all-reduce per layer)."""
    from ..memory.quant import Int8Linear

    def quantize(lin: nn.Linear, row_parallel: bool) -> nn.Module:
        w = lin.weight.detach().float()
        amax = w.abs().amax(dim=1)
        if row_parallel and shard.world > 1:
            dist.all_reduce(amax, op=dist.ReduceOp.MAX, group=shard.group)
        scale = amax.clamp(min=1e-12) / 127.0  # as quant.quantize_per_channel, with the whole row's amax
        q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
        bias = None if lin.bias is None else lin.bias.detach()
        return Int8Linear(q, scale, bias, dtype)
    return quantize


def quantizer(name: str | None, dtype: torch.dtype, shard: Shard) -> QuantizeFn | None:
    """The per-layer quantize function for a quantization name: 'none', 'int8', or a quant.py layer class
    with from_linear(linear, dtype=) (e.g. 'int4': group-wise along the input features, exact per shard
    when its group size divides the local input features)."""
    if name in (None, "none"):
        return None
    if name == "int8":
        return int8_quantizer(dtype, shard)
    from ..memory import quant
    maker = {"int4": getattr(quant, "Int4Linear", None)}.get(name)
    if maker is None:
        raise InputError(f"quantization {name!r} is not available; use 'none' or 'int8'")
    return lambda lin, row_parallel: maker.from_linear(lin, dtype=dtype)


# ----------------------------------------------------------------------------------------- entry points
def _code_rows(model) -> tuple[int, int] | None:
    tok = getattr(model, "tokenizer", None)
    return tok.special.image_rows if tok is not None else None


def _finish(model, plan: Plan, quantize: QuantizeFn | None) -> None:
    if quantize is not None:
        quantize_linears_(model, quantize)
    add_collectives_(model, plan)


def shard_(model, shard: Shard | None = None, quantize: QuantizeFn | None = None,
           code_rows: tuple[int, int] | None = None):
    """Shard an already loaded LuminaMGPT in place (every rank holding the whole model first: for tests,
    benchmarks and small models; `load_sharded` never holds more than the rank's part). code_rows: the
    image-code rows of the vocabulary (default: from the model's tokenizer). Returns the model."""
    shard = shard or Shard.current()
    cfg = model.config
    check_divisible(cfg, shard.world)
    if model.lm_head is None:
        raise CheckpointError("tensor parallelism needs an untied lm_head (Lumina-mGPT 2.0 has one)")
    plan = Plan(cfg, shard, code_rows or _code_rows(model))
    local = {n: plan.take(n, p.detach()).clone() for n, p in model.named_parameters()}
    device = model.device
    localize_(model, plan)
    from ..model.safetensors_files import set_tensor
    for n, t in local.items():
        set_tensor(model, n, t.to(device))
    _finish(model, plan, quantize)
    return model


def load_sharded(cls, path: str, shard: Shard | None = None, dtype=torch.bfloat16, device="cpu",
                 attention: str = "sdpa", quantize: QuantizeFn | None = None):
    """Load this rank's part of a checkpoint folder: the model is built on meta at local shapes and only
    the rank's slices are read from the safetensors files. `cls` is LuminaMGPT (or a subclass)."""
    from ..model import checkpoint as ck
    from ..model.safetensors_files import safetensors_shapes
    from ..model.config import read_config
    from ..model.tokenizer import TextTokenizer

    shard = shard or Shard.current()
    ck.check_transformer_path(path)
    cfg = read_config(path)
    files = ck.weight_files(path)
    shapes = {}
    for file in files:
        shapes.update(safetensors_shapes(file))
    for which in ("q", "k"):
        shape = shapes.get(f"model.layers.0.self_attn.{which}_norm.weight")
        if shape is not None:
            setattr(cfg, f"{which}_norm_groups", shape[0] if len(shape) == 2 else 1)
    cfg.validate()
    check_divisible(cfg, shard.world)
    if cfg.tie_word_embeddings:
        raise CheckpointError("tensor parallelism needs an untied lm_head (Lumina-mGPT 2.0 has one)")
    tokenizer = TextTokenizer.from_pretrained(path) if os.path.isfile(os.path.join(path, "tokenizer.json")) else None
    if tokenizer is not None:
        tokenizer.check_model_vocab(cfg.vocab_size)
    device = torch.device(device)
    with torch.device("meta"):
        model = cls(cfg, device="meta", dtype=dtype)
    expected = {n: tuple(p.shape) for n, p in model.named_parameters()}
    plan = Plan(cfg, shard, tokenizer.special.image_rows if tokenizer is not None else None)
    localize_(model, plan)
    ck.load_state_streaming(model, files, dtype, device, transform=plan.take, expected_shapes=expected)
    model.rotary = type(model.rotary)(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta, device)
    leftovers = [n for n, p in model.named_parameters() if p.is_meta]
    if leftovers:
        raise CheckpointError(f"parameters left unloaded: {leftovers[:5]}")
    model.eval().requires_grad_(False)
    model.set_attention_backend(attention)
    model.tokenizer = tokenizer
    _finish(model, plan, quantize)
    return model


def resident_weight_bytes(model) -> int:
    """Bytes of every parameter and persistent weight buffer this process holds for the model."""
    seen, total = set(), 0
    for t in list(model.parameters()) + [b for n, b in model.named_buffers() if "rotary" not in n]:
        if t is None or t.data_ptr() in seen or t.is_meta:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total
