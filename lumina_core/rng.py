"""Counter-based random numbers: noise is a pure function of (seed, token index, stream, vocab index).

Why not torch.Generator: a counter-based stream makes an image depend only on its own seed, not on
what else is in the batch, how many forwards SJD took, or which device ran it; and it needs no
generator state inside a CUDA graph. The hash is a 32-bit integer mix computed in int64 so no step
overflows.
"""
from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF

# Streams keep independent uses of randomness apart.
STREAM_SAMPLE = 0      # the token drawn at a position (plain sampling, SJD drafts)
STREAM_ACCEPT = 1      # SJD acceptance test
STREAM_RESIDUAL = 2    # SJD resampling after a rejection
STREAM_INIT = 3        # SJD random draft initialisation
STREAM_DRAFT = 4       # SJD re-drafts; the image's iteration number is added, so each re-draft has fresh noise


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit avalanche hash (xorshift-multiply rounds); every product fits in int64."""
    x = x & _MASK32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK32
    return (x >> 16) ^ x


def _key(seeds: torch.Tensor, counters: torch.Tensor, stream: int) -> torch.Tensor:
    seeds = seeds.long()
    lo, hi = seeds & _MASK32, (seeds >> 32) & _MASK32
    k = _mix32(lo * 0x61C88647 + 0x7F4A7C15)
    k = _mix32(k ^ _mix32(hi + 0x632BE5AB))
    k = _mix32(k ^ (counters.long() * 0x27D4EB2F & _MASK32))
    return _mix32(k ^ (stream * 0x165667B1 + 0x5BD1E995))


def seed_tensor(seeds, device=None) -> torch.Tensor:
    """Python ints of any size (ComfyUI seeds go up to 2**64-1) -> int64 tensor, wrapping to 64 bits."""
    vals = []
    for s in seeds:
        s = int(s) & 0xFFFFFFFFFFFFFFFF
        vals.append(s - (1 << 64) if s >= (1 << 63) else s)
    return torch.tensor(vals, dtype=torch.long, device=device)


def uniform(seeds: torch.Tensor, counters: torch.Tensor, n: int, stream: int = STREAM_SAMPLE) -> torch.Tensor:
    """Uniform floats in (0, 1), shape counters.shape + (n,).

    seeds: [B] int64; counters: [B] or [B, L] int64 (e.g. the token index in the image);
    stream: an int, or an int64 tensor that broadcasts against counters (one stream per image).
    """
    key = _key(seeds.view(-1, *([1] * (counters.ndim - 1))), counters, stream)
    idx = torch.arange(n, device=counters.device, dtype=torch.long)
    h = _mix32(key.unsqueeze(-1) ^ _mix32(idx * 0x2C1B3C6D + 0x297A2D39))
    h = _mix32(h + key.unsqueeze(-1))
    # top 24 bits -> float32 without rounding to 0 or 1 (float64 is missing on some backends)
    return ((h >> 8).float() + 0.5) * (1.0 / 16777216.0)


def gumbel(seeds: torch.Tensor, counters: torch.Tensor, n: int, stream: int = STREAM_SAMPLE) -> torch.Tensor:
    """Standard Gumbel noise: argmax(logits + gumbel) is an exact categorical sample."""
    u = uniform(seeds, counters, n, stream)
    return -torch.log(-torch.log(u))
