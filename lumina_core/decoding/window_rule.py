"""How many tokens one SJD forward should feed on a given device: the rule behind SJDecoder(window="auto").

A decode step of the 7.9B model reads every weight once, whatever the number of tokens it feeds, and spends
(tokens x FLOPs per token) on compute. While the weight read takes longer than the compute, extra draft tokens
ride along for free; past the knee they cost real time:

    knee = weight bytes / bandwidth  /  (FLOPs per token / peak FLOPs)
         = bytes per weight x peak FLOPs / (2 x bandwidth x streams)       (2 FLOPs per weight and stream)

independent of the model's size. Guidance doubles the streams and halves the knee; int8 weights halve the
bytes and the knee, int4 quarter them. The budget is half the knee (the step then stays within ~1.5x of
its weight-read time even at realistic, below-peak, FLOP rates), and the tree is the largest measured shape
that fits it (BENCHMARKS.md, "SJD": codes per forward against tokens per forward on the demo model).

Datasheet figures (NVIDIA architecture whitepapers and product pages; bf16 tensor FLOPs with fp32 accumulate,
dense, which is what PyTorch's bf16 matmul runs):
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Device:
    name: str
    bandwidth_gb_s: float
    bf16_tflops: float


DEVICES = (  # matched by substring of torch.cuda.get_device_name, most specific first
    Device("H200", 4800, 989),
    Device("H100", 3350, 989),       # SXM; the PCIe card has 2,000 GB/s and 756 TFLOPS
    Device("A100", 2039, 312),       # 80 GB SXM
    Device("RTX 4090", 1008, 165.2),
    Device("RTX 4080", 716.8, 97.5),
    Device("RTX 3090", 936, 71),
    Device("RTX 3060", 360, 25.6),
)
BYTES_PER_WEIGHT = {"none": 2.0, "int8": 1.0, "int4": 0.5}

# Measured tree shapes, by tokens per forward (SJDecoder keywords); the rule takes the largest that fits.
TREES = (
    (16, dict(window=16)),
    (47, dict(window=32, candidates=4, branch=4)),
    (59, dict(window=32, candidates=4, branch=8)),
    (95, dict(window=32, candidates=8, branch=8)),
)
# On a CPU a forward's cost grows with its tokens from the first one (at the 7B width a 59-token tree step costs
# 3.9x a 1-token step, exactly what it saves), and the tree's verification work is a visible share of a small
# model's step (the demo: chain 16 as fast as plain decoding, the 59-token tree 1.5x slower): upstream's chain.
CPU_TOKENS = 16
UNKNOWN_GPU_KNEE = 64.0  # bf16 with guidance, between a consumer card and an H100


def knee_tokens(device: Device, weight_format: str = "none", streams: int = 2) -> float:
    """Token positions per forward at which compute time equals the weight-read time."""
    return BYTES_PER_WEIGHT[weight_format] * device.bf16_tflops * 1e12 / (2 * device.bandwidth_gb_s * 1e9 * streams)


def device_for(name: str) -> Device | None:
    return next((d for d in DEVICES if d.name.lower() in name.lower()), None)


def token_budget(device: torch.device | str, weight_format: str = "none", streams: int = 2) -> int:
    """Tokens one forward may feed on `device` before more drafts cost time (half the knee)."""
    device = torch.device(device)
    if device.type != "cuda":
        return CPU_TOKENS
    known = device_for(torch.cuda.get_device_name(device))
    knee = knee_tokens(known, weight_format, streams) if known else \
        UNKNOWN_GPU_KNEE * BYTES_PER_WEIGHT[weight_format] / BYTES_PER_WEIGHT["none"] * 2 / streams
    return max(16, int(knee / 2))


def auto_tree(budget: int) -> dict:
    """The SJDecoder keywords of the largest measured shape within `budget` tokens per forward."""
    fitting = [kw for tokens, kw in TREES if tokens <= budget]
    return dict(fitting[-1] if fitting else TREES[0][1])
