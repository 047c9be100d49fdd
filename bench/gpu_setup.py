"""Shared set-up for the GPU scripts (bench/gpu.py, bench/gpu_check.py): the Lumina-mGPT 2.0 7B shapes with
random weights, a benchmark prompt plan, and the timing helpers (a synchronising clock, the copy bandwidth,
one plain decode step or one SJD window at a fixed KV length).

Needs only torch: when lumina_core/__init__ cannot import its image helpers (numpy, PIL), the torch-only
submodules are imported directly.
"""
from __future__ import annotations

import os
import sys
import time
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402


def import_engine():
    """The decode path needs only torch; the package __init__ also imports image helpers (numpy, PIL).
    Without them, load the submodules directly."""
    try:
        import lumina_core  # noqa: F401
    except ImportError as e:
        print(f"[note] lumina_core/__init__ needs {e.name}; importing the torch-only submodules directly")
        for name in [m for m in sys.modules if m == "lumina_core" or m.startswith("lumina_core.")]:
            del sys.modules[name]
        pkg = types.ModuleType("lumina_core")
        pkg.__path__ = [os.path.join(ROOT, "lumina_core")]
        sys.modules["lumina_core"] = pkg


import_engine()
from lumina_core.decoding import rng  # noqa: E402
from lumina_core.model.config import LuminaConfig  # noqa: E402
from lumina_core.model.transformer import LuminaMGPT  # noqa: E402
from lumina_core.decoding.sampler import pick_codes  # noqa: E402
from lumina_core.layout import ImageLayout  # noqa: E402
from lumina_core.decoding.tasks import PromptPlan, get_task  # noqa: E402
from lumina_core.model.tokenizer import SpecialTokens  # noqa: E402

PROMPT_TOKENS = 150           # a typical t2i prompt (template + caption)
IMAGE = 768
GIB = 2**30


# ----------------------------------------------------------------------------- the model
def shapes(tiny: bool) -> tuple[LuminaConfig, SpecialTokens]:
    if tiny:
        cfg = LuminaConfig(vocab_size=8192, hidden_size=128, intermediate_size=344, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=10240)
        special = SpecialTokens(bos=0, image_start=1, image_end=2, row_end=3, separator=4,
                                image_code_start=4096, num_image_codes=4096)
    else:
        cfg = LuminaConfig()  # the released 7B shapes
        special = SpecialTokens(bos=0, image_start=8197, image_end=8196, row_end=8799, separator=8706,
                                image_code_start=155000, num_image_codes=16384)
    return cfg, special


def build_model(cfg, device, dtype):
    torch.manual_seed(0)
    model = LuminaMGPT(cfg, device=device, dtype=dtype)  # default init, on the device directly: seconds
    with torch.no_grad():
        # peaked logits (std ~10) so greedy choices are not near-ties that rounding could flip
        model.lm_head.weight.mul_(20)
    return model.eval().requires_grad_(False)


def make_plan(special, size: int) -> PromptPlan:
    head = [special.image_start, special.separator + 1, special.separator + 1]  # grid ids: only their count matters
    cond = [special.bos] + list(range(100, 100 + PROMPT_TOKENS - 5)) + [special.separator] + head
    return PromptPlan(get_task("t2i"), ImageLayout(size, size), cond, head, "benchmark prompt")


def describe(device) -> str:
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return f"{p.name} ({p.total_memory / GIB:.0f} GiB)"
    return f"CPU ({torch.get_num_threads()} threads)"


# ----------------------------------------------------------------------------- timing
class Clock:
    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def time(self, fn, n: int, warm: int) -> float:
        """Mean milliseconds of fn() over n calls after warm calls."""
        for _ in range(warm):
            fn()
        self.sync()
        t = time.perf_counter()
        for _ in range(n):
            fn()
        self.sync()
        return (time.perf_counter() - t) * 1000 / n


def copy_bandwidth(device, clock, tiny: bool) -> float:
    """Bytes per second of a large device copy (read + write)."""
    n = (16 if tiny else 2048) * 2**20 // 2
    x = torch.empty(n, dtype=torch.bfloat16, device=device).normal_()
    y = torch.empty_like(x)
    ms = clock.time(lambda: y.copy_(x), n=10, warm=3)
    del x, y
    return 2 * n * 2 / (ms / 1000)


def plain_step_ms(session, special, opts, context: int, clock: Clock, steps: int, warm: int = 3) -> float:
    """Mean ms of the plain sampler's inner loop (one step + guidance, top-k, Gumbel draw) at KV length
    `context`: the write pointer is put back before every call, so each call sees the same length."""
    device = session.model.device
    tokens = torch.full((1, 1), special.image_code_start, dtype=torch.long, device=device)
    counter = torch.zeros(1, dtype=torch.long, device=device)
    seed_t = rng.seed_tensor([0], device)

    def one():
        session.cache.length = context - 1
        logits = session.step(tokens, special.image_rows)[:, -1]
        codes, _ = pick_codes(logits, session, opts, opts.cfg, seed_t, counter)
        tokens.copy_((codes + special.image_code_start)[:, None])
    return clock.time(one, n=steps, warm=warm)


def sjd_window_ms(run, context: int, clock: Clock, steps: int, warm: int = 3) -> float:
    """Mean ms of one SJD window (JacobiRun.iterate: forward + verification) with its state pinned at KV
    length `context`. In place: a captured verification graph holds these tensors."""
    body = context - run.base

    def one():
        run.done.fill_(body)
        run.fed.fill_(body - 1)
        run.done_host = [body]
        run.iterate()
    return clock.time(one, n=steps, warm=warm)


def integrate(contexts, values, span) -> float:
    """Mean of the piecewise-linear interpolation of values(context) over [span0, span1]."""
    lo, hi = span
    grid = torch.linspace(lo, hi, 257).tolist()
    def at(x):
        if x <= contexts[0]:
            return values[0] if len(contexts) == 1 else values[0] + (values[1] - values[0]) * (x - contexts[0]) / (contexts[1] - contexts[0])
        for (c0, v0), (c1, v1) in zip(zip(contexts, values), zip(contexts[1:], values[1:])):
            if x <= c1:
                return v0 + (v1 - v0) * (x - c0) / (c1 - c0)
        return values[-1]
    return sum(max(0.0, at(x)) for x in grid) / len(grid)
