"""How many CPU threads the decode loop uses: one for a small model, all of them for a big one.

A decode step of a small model is thousands of tiny operations. With several intra-op threads each of them
ends at an OpenMP barrier, and when another process holds one of the cores the barrier waits for a
descheduled thread: the bundled demo ran 100-200x slower through ComfyUI on a 2-core machine with one core
busy than on one thread (BENCHMARKS.md, "A busy CPU"). Threads pay only when each operation is big enough to
split: the largest matrix product of a step (tokens per forward x hidden x the wider of the MLP and the
image-code head) decides. The 7.9B model's step (2 x 4096 x 16384 multiply-adds) keeps every thread; the demo's
(2 x 192 x 1000) runs on one.

The choice holds only inside `decode_threads` and is undone on the way out, so ComfyUI's and the user's own
setting (torch.set_num_threads, OMP_NUM_THREADS) stays what it was for every other node; it never raises the
count above that setting. LUMINA_CPU_THREADS overrides it: a number, or "torch" to leave torch's setting as it
is (the behaviour before this choice existed, for comparisons).
"""
from __future__ import annotations

import os
from contextlib import contextmanager

import torch

ENV = "LUMINA_CPU_THREADS"
# Below this many multiply-adds in a step's largest product, one thread: ~1-2 ms of work for one core, the
# order of what a barrier can cost when a core is taken by another process.
PARALLEL_MIN_MACS = 32_000_000


def largest_product_macs(config, tokens_per_forward: int, head_rows: int) -> int:
    """Multiply-adds of the biggest matrix product in one forward of `tokens_per_forward` tokens (head_rows:
    the output head's rows a step computes, the image codes)."""
    widest = max(config.intermediate_size, head_rows, config.hidden_size)
    return tokens_per_forward * config.hidden_size * widest


def decode_thread_count(config, tokens_per_forward: int, head_rows: int, available: int | None = None) -> int:
    """Threads for a decode loop whose forwards carry `tokens_per_forward` tokens (all streams together)."""
    available = available or torch.get_num_threads()
    setting = os.environ.get(ENV, "auto").strip().lower()
    if setting == "torch":
        return available
    if setting not in ("", "auto"):
        try:
            return max(1, min(available, int(setting)))
        except ValueError:
            raise ValueError(f"{ENV} must be 'auto', 'torch' or a number of threads, got {setting!r}") from None
    if largest_product_macs(config, tokens_per_forward, head_rows) < PARALLEL_MIN_MACS:
        return 1
    return available


@contextmanager
def decode_threads(model, tokens_per_forward: int):
    """Run the body with the thread count chosen for `model` on the CPU (nothing changes on a GPU)."""
    device = getattr(model, "device", None)
    if device is None or torch.device(device).type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    tok = getattr(model, "tokenizer", None)
    head_rows = tok.special.num_image_codes if tok is not None else model.config.vocab_size
    wanted = decode_thread_count(model.config, tokens_per_forward, head_rows, before)
    if wanted != before:
        torch.set_num_threads(wanted)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
