"""A static, preallocated key/value cache shared by all streams of one generation.

Every row of the batch is one stream (the conditional and unconditional CFG streams of each image).
Rows are left-aligned to a common write pointer: a shorter prompt is left-padded and `starts[b]`
marks its first real slot. Positions restart at 0 from there, so each stream sees exactly the
sequence it would see alone.
"""
from __future__ import annotations

import torch


class KVCache:
    def __init__(self, num_layers: int, batch: int, num_kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str):
        shape = (batch, num_kv_heads, max_len, head_dim)
        # zeros, not empty: masked slots still enter the attention product and must be finite.
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.starts = torch.zeros(batch, dtype=torch.long, device=device)
        self.max_len = max_len
        self.length = 0  # slots filled so far (host-side write pointer)

    @classmethod
    def for_model(cls, model, batch: int, max_len: int) -> "KVCache":
        cfg = model.config
        heads = getattr(model, "local_kv_heads", cfg.num_key_value_heads)  # a tensor-parallel shard's own (tp.py)
        return cls(cfg.num_hidden_layers, batch, heads, max_len, cfg.head_dim,
                   model.compute_dtype, model.device)

    def row_view(self, step: int) -> "KVCache":
        """A cache over rows 0, step, 2*step, ... sharing this cache's storage (writes land here)."""
        view = KVCache.__new__(KVCache)
        view.k = [t[::step] for t in self.k]
        view.v = [t[::step] for t in self.v]
        view.starts = self.starts[::step]
        view.max_len, view.length = self.max_len, self.length
        return view

    @property
    def batch(self) -> int:
        return self.starts.shape[0]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    @staticmethod
    def estimate_bytes(config, batch: int, max_len: int, dtype: torch.dtype) -> int:
        per = torch.tensor([], dtype=dtype).element_size()
        return 2 * config.num_hidden_layers * batch * config.num_key_value_heads * max_len * config.head_dim * per

    def slots(self, count: int) -> torch.Tensor:
        if self.length + count > self.max_len:
            raise RuntimeError(f"KV cache overflow: {self.length}+{count} > {self.max_len}")
        return torch.arange(self.length, self.length + count, device=self.starts.device)

    def rollback(self, count: int) -> None:
        """Forget the last `count` slots (speculative tokens that were not accepted)."""
        if count < 0 or count > self.length:
            raise ValueError(f"cannot roll back {count} of {self.length} slots")
        self.length -= count
