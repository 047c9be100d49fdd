"""How the processes of a tensor-parallel group meet and part: a rendezvous store held by the process that starts
the ranks, joining it (NCCL for CUDA devices, gloo otherwise), or torchrun's env:// group, and leaving
together."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from .shard import Shard


class Rendezvous:
    """Where the ranks of a group meet: a TCPStore server on a free 127.0.0.1 port, held by the process that
    starts the ranks (the Multi-GPU Loader's parent, a test, a benchmark), never by a rank. With tcp:// the
    store lives in rank 0, whose exit then tears it down under ranks still using it; here it outlives them."""

    def __init__(self, host: str = "127.0.0.1", timeout_s: float = 300.0):
        import datetime
        self.host = host
        self._store = dist.TCPStore(host, 0, is_master=True, wait_for_workers=False,
                                    timeout=datetime.timedelta(seconds=timeout_s))
        self.port = self._store.port

    def close(self) -> None:
        self._store = None


def init_group(rank: int, world: int, port: int, device: str | torch.device = "cpu", host: str = "127.0.0.1",
               timeout_s: float = 300.0) -> Shard:
    """Join a `world`-rank group through the Rendezvous on host:port: NCCL for CUDA devices, gloo otherwise."""
    import datetime
    device = torch.device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = datetime.timedelta(seconds=timeout_s)
    store = dist.TCPStore(host, port, is_master=False, timeout=timeout)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
    return Shard(rank, world)


def leave_group() -> None:
    """Leave the group together: a barrier first, so no rank closes its connections while a peer still has
    collective traffic in flight to it, then the process group is destroyed."""
    if dist.is_initialized():
        try:
            dist.barrier()
        finally:  # a peer that died fails the barrier: leave anyway
            dist.destroy_process_group()


def init_env_group(device: str | torch.device | None = None) -> tuple[Shard, torch.device]:
    """Join the group torchrun describes (env://: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT),
    across machines as on one. device None: cuda:LOCAL_RANK when CUDA is available, else the CPU."""
    local = int(os.environ.get("LOCAL_RANK", 0))
    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://")
    return Shard.current(), device
