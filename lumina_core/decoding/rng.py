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
STREAM_CANDIDATE = 1_000_003  # SJD's tests of the other candidates for a position (past any re-draft stream)


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


def seed_sequence(seed: int, n: int) -> list[int]:
    """Seeds seed, seed+1, ... of a batch, wrapped to 64 bits as the generator uses them (so the seed shown
    for image i can be typed back into a seed widget that stops at 2**64-1)."""
    return [(int(seed) + i) & 0xFFFFFFFFFFFFFFFF for i in range(n)]


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
    return hash_to_unit(_mix32(h + key.unsqueeze(-1)))


def hash_to_unit(h: torch.Tensor) -> torch.Tensor:
    """32-bit hashes (in int64) -> float32 in (0, 1) from their top 24 bits (float64 is missing on some
    backends). The top value, 2^24 - 0.5, is not a float32 and rounds up to 2^24: the clamp keeps u below 1,
    so Gumbel noise stays finite (every other value, and so every seed's image, is unchanged)."""
    return (((h >> 8).float() + 0.5) * (1.0 / 16777216.0)).clamp_(max=1.0 - 2.0 ** -24)


def gumbel(seeds: torch.Tensor, counters: torch.Tensor, n: int, stream: int = STREAM_SAMPLE) -> torch.Tensor:
    """Standard Gumbel noise: argmax(logits + gumbel) is an exact categorical sample."""
    u = uniform(seeds, counters, n, stream)
    return -torch.log(-torch.log(u))
