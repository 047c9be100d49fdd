"""A process's place in a tensor-parallel group (rank, world size, process group) and its share of n things."""
from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist


@dataclass(frozen=True)
class Shard:
    """This process's place in a tensor-parallel group."""
    rank: int
    world: int
    group: object = None  # a torch.distributed ProcessGroup; None = the default group

    @classmethod
    def current(cls, group=None) -> "Shard":
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("tensor parallelism needs torch.distributed.init_process_group() first")
        return cls(dist.get_rank(group), dist.get_world_size(group), group)

    def span(self, n: int) -> tuple[int, int]:
        """This rank's equal part [a, b) of n things (n divisible by world)."""
        step = n // self.world
        return self.rank * step, (self.rank + 1) * step

    def padded_span(self, n: int) -> tuple[int, int, int]:
        """This rank's part [a, b) of n things in chunks of ceil(n / world) (the last may be short), and the chunk."""
        chunk = -(-n // self.world) if n else 0
        a = min(n, self.rank * chunk)
        return a, min(n, a + chunk), chunk
