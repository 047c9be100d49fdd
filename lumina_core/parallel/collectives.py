"""The communication a split model does: one all-reduce after each row-parallel block (attention and MLP
outputs) and the lm_head whose rows are split over the ranks, its logits all-gathered back exactly.
`plan` is a tp.Plan (what each rank holds)."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..model.transformer import _on


class ShardedHead(nn.Module):
    """The lm_head of one rank: its rows in a local linear (float or quantized); logits all-gathered.

    Local rows: [image-code chunk | chunk of the other rows], both zero padded to equal sizes per rank.
    """

    def __init__(self, local: nn.Module, plan):
        super().__init__()
        self.local = local
        self.group = plan.shard.group
        self.world = plan.shard.world
        self.code_rows = plan.code_rows
        self.vocab = plan.cfg.vocab_size
        self.code_chunk, self.rest_chunk = plan.codes[2], plan.rest[2]

    @property
    def weight(self) -> torch.Tensor:
        return self.local.weight

    def _gather(self, part: torch.Tensor, keep: int) -> torch.Tensor:
        part = part.contiguous()
        if self.world == 1:
            return part[..., :keep]
        parts = [torch.empty_like(part) for _ in range(self.world)]
        dist.all_gather(parts, part, group=self.group)
        return torch.cat(parts, -1)[..., :keep]

    def _local_rows(self, x: torch.Tensor, a: int, b: int) -> torch.Tensor:
        if hasattr(self.local, "forward_rows"):
            return self.local.forward_rows(x, a, b)
        w = self.local.weight[a:b]
        return F.linear(x, _on(w, x))

    def code_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits over the image-code rows, every rank's chunk gathered: [..., n_codes]."""
        c0, c1 = self.code_rows
        return self._gather(self._local_rows(x, 0, self.code_chunk), c1 - c0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c0, c1 = self.code_rows
        local = self.local(x)
        codes = self._gather(local[..., : self.code_chunk], c1 - c0)
        rest = self._gather(local[..., self.code_chunk:], self.vocab - (c1 - c0))
        return torch.cat([rest[..., :c0], codes, rest[..., c0:]], -1)

    def forward_rows(self, x: torch.Tensor, a: int, b: int) -> torch.Tensor:
        c0, c1 = self.code_rows
        if c0 <= a and b <= c1 and c1 > c0:
            return self.code_logits(x)[..., a - c0:b - c0]
        return self.forward(x)[..., a:b]


def _all_reduce_hook(group):
    def hook(module, inputs, output):
        dist.all_reduce(output, group=group)
        return output
    return hook


def add_collectives_(model, plan) -> None:
    """One all-reduce after each row-parallel layer (on the attention and MLP blocks' outputs), and the
    gathering lm_head."""
    if plan.shard.world > 1:
        for layer in model.model.layers:
            layer.self_attn.register_forward_hook(_all_reduce_hook(plan.shard.group))
            layer.mlp.register_forward_hook(_all_reduce_hook(plan.shard.group))
    model.lm_head = ShardedHead(model.lm_head, plan)
    model.tp_shard = plan.shard


