"""Best-of-N with early pruning on the demo model: shapes-eval accuracy and forwards per image, side by side with
one sample, best-of-4 and best-of-8.

    python -m bench.pruning --n 100 --threads 1
    python -m bench.pruning --n 100 --threads 1 --methods plain best_of_8 prune_8to2_after2 --scorer clip
    python -m bench.pruning --memory      # the KV cache each phase holds, 7B config at 768x768

Methods: `plain` (one sample), `best_of_<N>` (N candidates finished, the best kept), `prune_<N>to<K>_after<R>`
(N candidates painted to row R of 8, the K best by their partial score finished, the best of those kept; with
`_sjd`, finished by SJD at the device's default shape). Every
method draws its candidates from the same seeds (candidate c of image seed s is seed 16 s + c), so the rows
are paired: pruned best-of-8 picks among exactly best-of-8's candidates, plain is candidate 0.
Forwards per image: the forward passes every candidate took (a batched forward counts once per candidate in
it), summed, per output image; the prefill is not counted. Scorer: the model's likelihood (free), or with
--scorer clip the demo's CLIP verifier (partial images: the finished rows decoded, the rest grey).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from lumina_core import SJDecoder, best_of_n, generate  # noqa: E402
from lumina_core.decoding.generate import GenerationResult  # noqa: E402
from lumina_core.decoding.sampler import DecodeStats  # noqa: E402
from lumina_core.decoding.scorers import CLIPScorer, LikelihoodScorer  # noqa: E402

STRIDE = 16  # candidates per image seed: candidate c of seed s is 16 s + c
DEFAULT_METHODS = ("plain", "best_of_4", "best_of_8", "prune_4to2_after2", "prune_8to2_after2", "prune_8to2_after4",
                   "prune_8to1_after2", "prune_16to2_after2")


class Counter:
    """Output images and candidate forwards of one method."""

    def __init__(self):
        self.images = 0
        self.forwards = 0

    @property
    def per_image(self) -> float:
        return self.forwards / max(1, self.images)


def method_fn(name: str, counter: Counter, scorer, movqgan):
    """A shapes_eval method for `name`, counting into `counter`."""
    if name == "plain":
        def plain(model, prompt, *, task, width, height, seeds, sampling, condition_codes=None):
            res = generate(model, prompt, width, height, task=task, seeds=[STRIDE * s for s in seeds],
                           sampling=sampling, condition_codes=condition_codes)
            counter.images += len(seeds)
            counter.forwards += res.stats.forwards * len(seeds)  # one batched forward per code, every image in it
            return res
        return plain
    m = re.fullmatch(r"best_of_(\d+)|prune_(\d+)to(\d+)_after(\d+)(_sjd)?", name)
    if m is None:
        raise SystemExit(f"unknown method {name!r}: plain, best_of_<N>, prune_<N>to<K>_after<R>[_sjd]")
    n = int(m.group(1) or m.group(2))
    prune = dict(prune_after_rows=int(m.group(4)), keep=int(m.group(3))) if m.group(2) else {}
    if m.group(5):  # the survivors finished by SJD (the device's default shape)
        prune["decoder"] = SJDecoder()
    if n > STRIDE:
        raise SystemExit(f"at most {STRIDE} candidates")

    def best(model, prompt, *, task, width, height, seeds, sampling, condition_codes=None):
        picked = []
        for s in seeds:
            out = best_of_n(model, prompt, width, height, n=n, seed=STRIDE * s, chunk_size=n, task=task,
                            sampling=sampling, condition_codes=condition_codes, scorer=scorer,
                            image_tokenizer=movqgan, **prune)
            picked.append(out.best_codes)
            counter.images += 1
            if prune:
                counter.forwards += sum(out.image_forwards)
            else:  # one chunk of n: each batched forward carries every candidate
                counter.forwards += sum(st.forwards for st in out.stats) * n
        return GenerationResult(codes=torch.cat(picked), layout=out.layout, task=out.task, seeds=list(seeds),
                                prompt=prompt, stats=DecodeStats())
    return best


def print_memory(prompt_tokens: int = 48) -> None:
    """KV cache each phase holds for the 7B config at 768x768 with guidance (bf16), all candidates of a phase at
    once: best-of-N against pruning after r of 96 rows."""
    from lumina_core import KVCache, LuminaConfig
    from lumina_core.layout import ImageLayout
    cfg, lay = LuminaConfig(), ImageLayout(768, 768)

    def gib(images: int, tokens: int) -> float:
        slots = -(-(prompt_tokens + tokens) // 64) * 64
        return KVCache.estimate_bytes(cfg, 2 * images, slots, torch.bfloat16) / 2 ** 30

    full = lay.generated_tokens
    print(f"KV cache, 7B config, 768x768 with guidance, bf16, a {prompt_tokens}-token prompt; every candidate of a "
          "phase at once (chunks hold less)")
    print("| method | first phase GiB | survivors compacted GiB | second phase GiB | peak GiB |")
    print("|---|---:|---:|---:|---:|")
    for n in (4, 8, 16):
        print(f"| best-of-{n} | {gib(n, full):.1f} | | | {gib(n, full):.1f} |")
    for n, keep, r in ((8, 2, 12), (8, 2, 24), (16, 2, 12), (16, 2, 24)):
        first, store, second = gib(n, r * (lay.w_lat + 1)), gib(keep, r * (lay.w_lat + 1)), gib(keep, full)
        peak = max(first + store, store + second)
        print(f"| best-of-{n} pruned to {keep} after {r} of 96 rows | {first:.1f} | {store:.1f} | {second:.1f} | "
              f"{peak:.1f} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--memory", action="store_true", help="only print the KV cache each phase holds (7B, 768x768)")
    p.add_argument("--n", type=int, default=100, help="shapes-eval images per category")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    p.add_argument("--scorer", choices=("likelihood", "clip"), default="likelihood")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    if a.memory:
        return print_memory()
    torch.set_num_threads(a.threads)
    from bench import shapes_eval
    from demo import DEMO_ROOT, DEMO_VERIFIER, load_demo
    model, movqgan, defaults = load_demo()
    scorer = CLIPScorer(os.path.join(DEMO_ROOT, DEMO_VERIFIER), device="cpu") if a.scorer == "clip" \
        else LikelihoodScorer()
    cases = shapes_eval.build_cases(a.n)
    rows = []
    for name in a.methods:
        counter = Counter()
        label = f"{name} ({a.scorer})" if name != "plain" else name
        shapes_eval.register_method(label, method_fn(name, counter, scorer, movqgan))
        setting = shapes_eval.Setting(label, float(defaults["cfg"]), float(defaults["temperature"]),
                                      int(defaults["top_k"]))
        t0 = time.perf_counter()
        scores = shapes_eval.evaluate(model, movqgan, cases, setting, batch=16)
        rows.append((setting, scores, counter))
        print(f"done {label}: overall {scores.get('overall', float('nan')):.3f}, held-out {scores['held_out']:.3f}, "
              f"{counter.per_image:.1f} forwards / image, {time.perf_counter() - t0:.0f} s", flush=True)
    print()
    print(shapes_eval.markdown_table([(s, r) for s, r, _ in rows]))
    print()
    reference = next((c.per_image for s, _, c in rows if s.method.startswith("best_of_8")), None)
    print("| method | overall | held-out all-right | edge F1 | forwards / image | vs best-of-8 |")
    print("|---|---:|---:|---:|---:|---:|")
    for s, r, c in rows:
        share = f"{100 * c.per_image / reference:.0f}%" if reference else ""
        print(f"| {s.method} | {100 * r['overall']:.1f}% | {100 * r['held_out']:.1f}% | {r['edge']:.2f} | "
              f"{c.per_image:.1f} | {share} |")


if __name__ == "__main__":
    main()
