"""Forward passes per image: plain decoding vs speculative Jacobi decoding, same model, same prompts.

    python -m bench.forward_passes                       # demo model if built, else a tiny random model
    python -m bench.forward_passes --shapes-eval --n 20  # + shapes-eval accuracy: plain, SJD, best-of-4/8
    python -m bench.forward_passes --shapes-eval --n 200 --methods plain sjd16   # more images, fewer methods
    python -m bench.forward_passes --sjd-ablation --seeds 8    # SJD variants, two regimes, with histograms

Forwards are batched forward passes after the prefill (SJD: this image's windows). Image tokens per
forward counts image codes only (row ends are free). Greedy and sampled (the demo's recommended
settings, or cfg 2 / temperature 1 / no top-k). On random weights the model's next token hardly
depends on context, so acceptance there says little: use the demo model for real numbers.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from lumina_core import SamplingOptions, best_of_n, generate  # noqa: E402
from lumina_core.decoding.generate import GenerationResult  # noqa: E402
from lumina_core.decoding.sampler import DecodeStats  # noqa: E402
from lumina_core.decoding.scorers import CLIPScorer  # noqa: E402
from lumina_core.decoding.sjd import SJDecoder  # noqa: E402

PROMPTS = ["a red circle", "two blue squares", "a green triangle to the left of a yellow circle",
           "a purple diamond and an orange square", "three circles"]


def load_model(size: int):
    """The shapes demo model when it is built, else a tiny random checkpoint (clearly labelled)."""
    try:
        from demo import demo_available, generation_defaults, load_demo
        if demo_available():
            model, movqgan, defaults = load_demo()
            return model, movqgan, defaults, "shapes demo model"
    except ImportError:
        pass
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
    from builders import tiny_checkpoint
    from lumina_core import LuminaMGPT
    folder, _ = tiny_checkpoint(os.path.join(tempfile.mkdtemp(), "tiny"), num_codes=256)
    return LuminaMGPT.from_pretrained(folder, dtype=torch.float32), None, {}, "tiny RANDOM model (demo not built)"


def sampling_settings(defaults: dict) -> dict[str, SamplingOptions]:
    cfg = float(defaults.get("cfg", 2.0))
    sampled = SamplingOptions(cfg=cfg, top_k=int(defaults.get("top_k", 0)),
                              temperature=float(defaults.get("temperature", 1.0)))
    return {"greedy": sampled.with_(top_k=1), "sampled": sampled}


def forwards_table(model, defaults: dict, size: int, seeds: list[int], window: int) -> list[dict]:
    rows = []
    for mode, opts in sampling_settings(defaults).items():
        for name, decoder in [("plain", None),
                              (f"SJD L={window} random init, independent re-drafts",
                               SJDecoder(window=window, coupled=False)),
                              (f"SJD L={window} random init", SJDecoder(window=window)),
                              (f"SJD L={window} spatial init", SJDecoder(window=window, init="spatial"))]:
            per_image, codes, t = [], 0, time.perf_counter()
            for prompt in PROMPTS:
                res = generate(model, prompt, size, size, seeds=seeds, sampling=opts, decoder=decoder)
                codes = res.stats.image_tokens
                per_image += res.stats.extra.get("image_forwards", [res.stats.forwards] * len(seeds))
            mean = statistics.mean(per_image)
            rows.append(dict(mode=mode, decoder=name, forwards=mean, codes=codes, per_forward=codes / mean,
                             seconds=(time.perf_counter() - t) / (len(PROMPTS) * len(seeds))))
    return rows


def print_forwards(rows, label, size, seeds):
    print(f"\nForward passes per image, {label}, {size}x{size} ({rows[0]['codes']} codes), "
          f"{len(PROMPTS)} prompts x {len(seeds)} seeds")
    print("| sampling | decoder | forwards / image | vs plain | image tokens / forward | s / image (CPU) |")
    print("|---|---|---|---|---|---|")
    plain = {r["mode"]: r["forwards"] for r in rows if r["decoder"] == "plain"}
    for r in rows:
        print(f"| {r['mode']} | {r['decoder']} | {r['forwards']:.1f} | {r['forwards'] / plain[r['mode']]:.2f} | "
              f"{r['per_forward']:.2f} | {r['seconds']:.3f} |")


# ----------------------------------------------------------------------------- SJD ablation
ABLATION = [  # (label, SJDecoder keywords): each row adds one thing to the row above it
    ("SJD, window 16 (upstream's)", dict(window=16)),
    ("+ window 32", dict(window=32)),
    ("+ 4 candidates for the next position, 4-draft side chains", dict(window=32, candidates=4, branch=4)),
    ("+ 8-draft side chains", dict(window=32, candidates=4, branch=8)),
    ("+ 8 candidates", dict(window=32, candidates=8, branch=8)),
    ("instead: two branching levels (4 x 4, 4-draft chains)", dict(window=32, candidates=4, levels=2, branch=4)),
    ("LOSSY: relaxed acceptance (groups of 8) on the 4 x 8 tree", dict(window=32, candidates=4, branch=8, relaxed=8)),
]
REGIMES = {"demo defaults": None, "flat (cfg 3, T 1, top-k 0)": SamplingOptions(cfg=3.0, top_k=0, temperature=1.0)}


def sjd_ablation(model, defaults: dict, size: int, seeds: list[int]) -> list[dict]:
    """Forwards per image and the histogram of codes gained per forward, for each ABLATION row and regime."""
    regimes = {name: opts or sampling_settings(defaults)["sampled"] for name, opts in REGIMES.items()}
    rows = []
    for label, kw in ABLATION:
        decoder = SJDecoder(**kw)
        row = dict(label=label, tokens=decoder.tokens_per_forward)
        for regime, opts in regimes.items():
            forwards, hist = [], []
            for prompt in PROMPTS:
                res = generate(model, prompt, size, size, seeds=seeds, sampling=opts, decoder=decoder)
                forwards += res.stats.extra["image_forwards"]
                h = res.stats.extra["codes_per_forward_hist"]
                hist = [a + b for a, b in zip(hist + [0] * (len(h) - len(hist)), h + [0] * (len(hist) - len(h)))]
            codes = res.stats.image_tokens
            row[regime] = dict(per_forward=codes * len(forwards) / sum(forwards), forwards=statistics.mean(forwards),
                               hist=hist)
        rows.append(row)
        print(f"done {label}", flush=True)
    return rows


def print_ablation(rows, label, size, seeds):
    print(f"\nSJD variants, {label}, {size}x{size}, {len(PROMPTS)} prompts x {len(seeds)} seeds: image codes per "
          "forward (forwards per image), both regimes side by side")
    names = list(REGIMES)
    print(f"| variant | tokens / forward | {names[0]} | share of the gain | {names[1]} | share of the gain |")
    print("|---|--:|--:|--:|--:|--:|")
    steps = [r for r in rows if r["label"].startswith(("SJD", "+"))]  # the cumulative rows; others are alternatives
    base = {n: steps[0][n]["per_forward"] for n in names}
    total = {n: steps[-1][n]["per_forward"] - base[n] for n in names}
    prev = dict(base)
    for r in rows:
        cells = []
        for n in names:
            gain = r[n]["per_forward"] - prev[n]
            share = f"{gain / total[n]:+.0%}" if r in steps[1:] and total[n] else ""
            cells += [f"{r[n]['per_forward']:.2f} ({r[n]['forwards']:.1f})", share]
            if r in steps:
                prev[n] = r[n]["per_forward"]
        print(f"| {r['label']} | {r['tokens']} | " + " | ".join(cells) + " |")
    print("\nForwards by codes gained (share of forwards keeping 1, 2, ... codes)")
    print("| variant | regime | " + " | ".join(str(i) for i in range(1, 11)) + " | more |")
    print("|---|---|" + "--:|" * 11)
    for r in rows:
        for n in names:
            h = r[n]["hist"]
            total_fw = sum(h)
            shares = [h[i] / total_fw if i < len(h) else 0.0 for i in range(1, 11)]
            more = sum(h[11:]) / total_fw
            print(f"| {r['label']} | {n} | " + " | ".join(f"{x:.2f}" for x in shares) + f" | {more:.2f} |")


# ----------------------------------------------------------------------------- shapes-eval rows
def register_methods(window: int, movqgan=None, verifier: str | None = None):
    """Add SJD and best-of-N (likelihood scorer; with `verifier`, a CLIP folder, also the CLIP scorer) as
    bench.shapes_eval methods."""
    from bench import shapes_eval

    def sjd(model, prompt, *, task, width, height, seeds, sampling, condition_codes=None):
        return generate(model, prompt, width, height, task=task, seeds=seeds, sampling=sampling,
                        condition_codes=condition_codes, decoder=SJDecoder(window=window))

    def best_of(n, scorer=None):
        def method(model, prompt, *, task, width, height, seeds, sampling, condition_codes=None):
            picked, forwards = [], 0
            for s in seeds:  # candidates s*n .. s*n+n-1: disjoint across requested seeds
                out = best_of_n(model, prompt, width, height, n=n, seed=s * n, chunk_size=n, task=task,
                                sampling=sampling, condition_codes=condition_codes, scorer=scorer,
                                image_tokenizer=movqgan)
                picked.append(out.best_codes)
                forwards += sum(st.forwards for st in out.stats)
            return GenerationResult(codes=torch.cat(picked), layout=out.layout, task=out.task, seeds=list(seeds),
                                    prompt=prompt, stats=DecodeStats(forwards=forwards))
        return method

    def sjd_with(**kw):
        def method(model, prompt, *, task, width, height, seeds, sampling, condition_codes=None):
            return generate(model, prompt, width, height, task=task, seeds=seeds, sampling=sampling,
                            condition_codes=condition_codes, decoder=SJDecoder(**kw))
        return method

    shapes_eval.register_method(f"sjd{window}", sjd)
    shapes_eval.register_method("sjd_tree", sjd_with(window=32, candidates=4, branch=8))  # exact
    shapes_eval.register_method("sjd_relaxed", sjd_with(window=32, candidates=4, branch=8, relaxed=8))  # LOSSY
    shapes_eval.register_method("best_of_4", best_of(4))
    shapes_eval.register_method("best_of_8", best_of(8))
    if verifier is not None:  # the demo's CLIP verifier, through the pack's CLIP scorer
        clip = CLIPScorer(verifier, device="cpu")
        shapes_eval.register_method("best_of_4_clip", best_of(4, clip))
        shapes_eval.register_method("best_of_8_clip", best_of(8, clip))
    return shapes_eval


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--shapes-eval", action="store_true", help="also shapes-eval rows (needs the demo model)")
    p.add_argument("--n", type=int, default=20, help="shapes-eval images per category")
    p.add_argument("--methods", nargs="+", default=None,
                   help="shapes-eval methods (default: plain, sjd<window>, best_of_4, best_of_8; "
                        "best_of_4_clip / best_of_8_clip score with the demo's CLIP verifier)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (more only add contention for tiny models)")
    p.add_argument("--sjd-ablation", action="store_true", help="only the SJD variants table (two regimes)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    model, movqgan, defaults, label = load_model(a.size)
    seeds = list(range(a.seeds))
    if a.sjd_ablation:
        print_ablation(sjd_ablation(model, defaults, a.size, seeds), label, a.size, seeds)
        return
    rows = forwards_table(model, defaults, a.size, seeds, a.window)
    print_forwards(rows, label, a.size, seeds)
    if a.shapes_eval:
        if movqgan is None:
            sys.exit("shapes-eval needs the demo model: build it first (python -m demo.build_demo)")
        from demo import DEMO_ROOT, DEMO_VERIFIER
        verifier = os.path.join(DEMO_ROOT, DEMO_VERIFIER)
        se = register_methods(a.window, movqgan, verifier if os.path.isdir(verifier) else None)
        opts = sampling_settings(defaults)["sampled"]
        cases = se.build_cases(a.n)
        results = []
        for method in a.methods or ("plain", f"sjd{a.window}", "best_of_4", "best_of_8"):
            if method not in se.METHODS:
                sys.exit(f"unknown method {method!r}; registered: {sorted(se.METHODS)}")
            setting = se.Setting(method, opts.cfg, opts.temperature, opts.top_k)
            results.append((setting, se.evaluate(model, movqgan, cases, setting, batch=16)))
            print(f"done {setting.label()}: overall {results[-1][1].get('overall', float('nan')):.3f}", flush=True)
        print()
        print(se.markdown_table(results))


if __name__ == "__main__":
    main()
