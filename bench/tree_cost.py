"""What one SJD forward costs as it feeds more tokens: step time against tokens per forward at the real width.

    python bench/tree_cost.py                   # CPU: width 4096, MLP 11,008, 32 heads, 2 layers, bf16
    python bench/tree_cost.py --device cuda     # the same on a GPU (32 layers there: the real step)

The model has random weights, the 16,384 image-code head rows (plus 1,024 others instead of the 171k
vocabulary, which a step never reads), guidance (2 streams) and a KV length of --context. Each row times
forward_step with the window SJD feeds: a chain of 16 tokens (upstream's window) or the draft trees that
window="auto" chooses from (lumina_core/decoding/window_rule.py TREES), in alternating rounds so a busy
machine slows every row alike. "cost per code" divides the step time by the image codes per forward that
the demo model reaches with that shape (--codes-per-forward, from BENCHMARKS.md's SJD table), relative to
plain decoding (1 token, 1 code): below 1 the shape pays off on this device.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from lumina_core.decoding.jacobi_tree import draft_tree  # noqa: E402
from lumina_core.decoding.window_rule import TREES  # noqa: E402
from lumina_core.memory.kv_cache import KVCache  # noqa: E402
from lumina_core.model.config import LuminaConfig  # noqa: E402
from lumina_core.model.transformer import LuminaMGPT  # noqa: E402

CODES = (155000, 155000 + 16384)


def build(layers: int, device, dtype) -> LuminaMGPT:
    cfg = LuminaConfig(vocab_size=17408, num_hidden_layers=layers)
    torch.manual_seed(0)
    return LuminaMGPT(cfg, device=device, dtype=dtype).eval().requires_grad_(False)


def shapes():
    """(label, tokens per forward, tree or None): plain, upstream's chain, the auto shapes."""
    out = [("plain (1 token)", 1, None)]
    for tokens, kw in TREES:
        if kw.get("candidates", 1) > 1:
            tree = draft_tree(kw["window"], (kw["candidates"],) * kw.get("levels", 1), kw.get("branch", 0))
            label = f"tree {kw['window']} + {kw['candidates']} candidates x {kw.get('branch', 0)}"
        else:
            tree, label = None, f"chain {kw['window']}"
        out.append((label, tokens, tree))
    return out


def step_ms(model, tokens: int, tree, context: int, steps: int) -> list[float]:
    dev = model.device
    cache = KVCache.for_model(model, 2, context + 256)
    ids = torch.randint(0, 1024, (2, tokens), device=dev)
    slots = (context + torch.arange(tokens, device=dev))[None].expand(2, -1)
    dtree = tree.on(dev) if tree is not None else None
    out = []
    with torch.inference_mode():
        for i in range(steps + 1):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            model.forward_step(ids, cache, slots, kv_len=context + tokens, rows=(1024, 17408), tree=dtree)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if i:  # the first call warms up
                out.append((time.perf_counter() - t) * 1000)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--layers", type=int, default=None, help="default: 2 on the CPU, 32 on a GPU")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--codes-per-forward", type=float, nargs="+", default=[1.0, 2.99, 3.65, 3.91, 3.96],
                    help="image codes per forward of each shape on the demo (plain first), for the cost column")
    a = ap.parse_args(argv)
    dev = torch.device(a.device)
    layers = a.layers or (32 if dev.type == "cuda" else 2)
    model = build(layers, dev, torch.bfloat16)
    rows = shapes()
    times = {label: [] for label, _, _ in rows}
    for _ in range(a.rounds):
        for label, tokens, tree in rows:
            times[label] += step_ms(model, tokens, tree, a.context, a.steps)
    print(f"\nOne decode step with guidance at width 4096 ({layers} layers, bf16, KV length {a.context}) on "
          f"{dev.type}{' (' + torch.cuda.get_device_name(dev) + ')' if dev.type == 'cuda' else ''}: median of "
          f"{a.rounds} x {a.steps}")
    print("| window | tokens / forward | ms / step | vs 1 token | codes / forward (demo) | cost per code vs plain |")
    print("|---|--:|--:|--:|--:|--:|")
    base = statistics.median(times[rows[0][0]])
    for (label, tokens, _), cpf in zip(rows, a.codes_per_forward):
        ms = statistics.median(times[label])
        print(f"| {label} | {tokens} | {ms:.1f} | {ms / base:.2f} | {cpf:.2f} | {ms / base / cpf:.2f} |")


if __name__ == "__main__":
    main()
