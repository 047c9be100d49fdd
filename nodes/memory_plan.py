"""The memory planner's choices inside ComfyUI: the Sampler's `kv_cache` input (auto asks the planner with
ComfyUI's free-memory figure). The loader's `quantization: auto` is in loaders.py."""
from __future__ import annotations

import logging

import comfy.model_management as mm

from ..lumina_core.memory.planner import kv_cache_for
from ..lumina_core.memory.quant import weight_format
from .memory import freeable_bytes
from .validation import choice_problem, require

log = logging.getLogger(__name__)

KV_CACHES = ("auto", "bf16", "int8")
KV_TOOLTIP = ("KV cache (what was painted so far, 9.2 GB in bf16 for a 768x768 image with guidance). auto: the "
              "memory planner picks bf16 when it fits the GPU next to the weights, else int8 (half the size, a "
              "scale and zero per token and head; on the demo model 9 of 10 greedy images are identical to "
              "the float cache's). bf16: the compute dtype. int8: always "
              "8-bit. Optional: workflows saved before it existed use auto.")


def kv_cache_format(choice: str, engine, width: int, height: int, images: int, guidance: bool, window: int,
                    prompt_tokens: int) -> str:
    """The cache format for this run; for auto, the planner's choice given ComfyUI's free memory plus what
    the model already holds on the GPU (the planner counts the weights itself)."""
    require(choice_problem("kv_cache", choice, KV_CACHES))
    loaded = getattr(engine, "memory_plan_loaded", None) or f"{weight_format(engine)} weights"
    device = mm.get_torch_device()
    if choice != "auto":
        fmt, note = choice, f"{choice} cache (chosen)"
    elif device.type != "cuda":
        fmt, note = "bf16", "bf16 cache (auto: system memory, the compute-dtype cache)"
    else:
        free = freeable_bytes(device)
        fmt, note = kv_cache_for(engine, width, height, free, batch=images, guidance=guidance, window=window,
                                 prompt_tokens=prompt_tokens)
        note = f"{fmt} cache (auto): {note}"
        log.info("Lumina-mGPT 2.0: %s", note)
    engine.memory_plan = f"{loaded}; {note}"  # the Sampler's stats event shows it
    return fmt
