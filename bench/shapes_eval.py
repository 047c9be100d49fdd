"""GenEval-style quality benchmark on the shapes demo model, judged by OpenCV (demo/judge.py) against
what each prompt claims, never by a model.

Categories (GenEval's, on shapes): single object ("a circle"), two objects ("a circle and a square"),
counting ("three squares"), colours ("a red circle"), position ("a circle to the left of a square"),
colour attribution ("a red circle and a blue square"); overall = their mean. Plus: held-out
prompts (colour/shape/region triples never seen in training, all attributes and the background
right) and, for control_canny, edge F1 between the condition edge map and the generated image.

Every prompt set and seed is fixed, so a row is reproducible. Rows = sampling settings:

    python -m bench.shapes_eval --n 200 --cfg 1 1.5 2 3 4 --temperature 0.7 1.0

Sampling methods are pluggable: register_method("sjd", fn) adds a method usable as --method sjd,
where fn(model, prompt, *, task, width, height, seeds, sampling, condition_codes) returns a
lumina_core GenerationResult (e.g. generate(..., decoder=SJDecoder()) or a best-of-N wrapper).
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from demo import DEMO_CHECKPOINT, DEMO_MOVQGAN, load_demo
from demo.judge import edge_f1, judge
from demo.shapes import (COLOUR_NAMES, COUNT_WORDS, RELATIONS, SHAPES, ObjectSpec, SceneSampler, Spec,
                         held_out_prompts, training_scenes, with_article)
from demo.train_movqgan import reconstruction_stats, to_signed
from lumina_core import SamplingOptions, decode_images, generate

GENEVAL = ("single", "two", "counting", "colours", "position", "colour_attr")
CATEGORIES = GENEVAL + ("held_out", "edge")
SIZE = 64

MethodFn = Callable[..., object]
METHODS: dict[str, MethodFn] = {}


def register_method(name: str, fn: MethodFn) -> None:
    METHODS[name] = fn


def plain(model, prompt, *, task, width, height, seeds, sampling, condition_codes=None):
    return generate(model, prompt, width, height, task=task, seeds=seeds, sampling=sampling,
                    condition_codes=condition_codes)


register_method("plain", plain)


# ----------------------------------------------------------------------------- prompt sets
@dataclass(frozen=True)
class Case:
    """One prompt, judged on several seeds."""
    category: str
    caption: str
    spec: Spec | None
    seeds: tuple[int, ...]
    condition: np.ndarray | None = field(default=None, compare=False)  # edge map for 'edge' cases


def _category_prompts(category: str) -> list[tuple[str, Spec]]:
    """Every prompt of a GenEval category, in a fixed order."""
    pairs = [(a, b) for a, b in itertools.permutations(SHAPES, 2)]
    if category == "single":
        return [(with_article(s), Spec((ObjectSpec(s),))) for s in SHAPES]
    if category == "two":
        return [(f"{with_article(a)} and {with_article(b)}", Spec((ObjectSpec(a), ObjectSpec(b)))) for a, b in pairs]
    if category == "counting":
        return [(f"{COUNT_WORDS[n]} {s}s", Spec((ObjectSpec(s),) * n)) for n in COUNT_WORDS for s in SHAPES]
    if category == "colours":
        return [(with_article(f"{c} {s}"), Spec((ObjectSpec(s, c),))) for c in COLOUR_NAMES for s in SHAPES]
    if category == "position":
        return [(f"{with_article(a)} {phrase} {with_article(b)}", Spec((ObjectSpec(a), ObjectSpec(b)), rel))
                for rel, phrase in RELATIONS.items() for a, b in pairs]
    if category == "colour_attr":
        return [(f"{with_article(f'{c1} {a}')} and {with_article(f'{c2} {b}')}",
                 Spec((ObjectSpec(a, c1), ObjectSpec(b, c2))))
                for a, b in pairs for c1, c2 in itertools.permutations(COLOUR_NAMES, 2)]
    if category == "held_out":
        return held_out_prompts()
    raise ValueError(category)


def build_cases(n: int = 200, prompts_per_category: int = 10, seed: int = 0,
                categories=CATEGORIES) -> list[Case]:
    """About n images per category: up to `prompts_per_category` prompts (all of them for held_out),
    each on ceil(n / prompts) fixed seeds."""
    cases = []
    for ci, category in enumerate(CATEGORIES):
        if category not in categories:
            continue
        rng = np.random.default_rng([seed, ci])  # per category: a category's prompts do not depend on the others
        if category == "edge":
            sampler = SceneSampler(np.random.default_rng([seed, 99]), exclude_held_out=False)
            scenes = [sampler.any() for _ in range(prompts_per_category)]
            per = math.ceil(n / len(scenes))
            cases += [Case("edge", s.caption, None, tuple(10_000 * ci + 100 * i + j for j in range(per)), s.edges())
                       for i, s in enumerate(scenes)]
            continue
        prompts = _category_prompts(category)
        if category != "held_out" and len(prompts) > prompts_per_category:
            prompts = [prompts[i] for i in sorted(rng.choice(len(prompts), prompts_per_category, replace=False))]
        per = math.ceil(n / len(prompts))
        cases += [Case(category, text, spec, tuple(10_000 * ci + 100 * i + j for j in range(per)))
                  for i, (text, spec) in enumerate(prompts)]
    return cases


# ----------------------------------------------------------------------------- running
@dataclass(frozen=True)
class Setting:
    method: str = "plain"
    cfg: float = 2.0
    temperature: float = 1.0
    top_k: int = 0
    guidance_top_k: int = 0

    def sampling(self) -> SamplingOptions:
        return SamplingOptions(cfg=self.cfg, temperature=self.temperature, top_k=self.top_k,
                               guidance_top_k=self.guidance_top_k)

    def label(self) -> str:
        extra = f" gtk={self.guidance_top_k}" if self.guidance_top_k else ""
        return f"{self.method} cfg={self.cfg:g} T={self.temperature:g} top_k={self.top_k or 'off'}{extra}"


def _chunks(seq, size):
    for i in range(0, len(seq), size):
        yield seq[i:i + size]


def to_uint8(images: torch.Tensor) -> np.ndarray:
    return (images.clamp(0, 1) * 255).round().byte().numpy()


def run_case(model, movqgan, case: Case, setting: Setting, batch: int):
    """Generated images (uint8 [N, 64, 64, 3]) of one case, the forwards used and the generate calls."""
    fn = METHODS[setting.method]
    out, forwards, calls = [], 0, 0
    cond = None
    if case.condition is not None:
        cond = movqgan.encode(to_signed(case.condition[None]))
    for seeds in _chunks(list(case.seeds), batch):
        if cond is None:
            res = fn(model, case.caption, task="t2i", width=SIZE, height=SIZE, seeds=seeds,
                     sampling=setting.sampling())
        else:
            res = fn(model, case.caption, task="control_canny", width=SIZE, height=2 * SIZE, seeds=seeds,
                     sampling=setting.sampling(), condition_codes=cond)
        out.append(to_uint8(decode_images(movqgan, res.panel_codes())))
        forwards += res.stats.forwards
        calls += 1
    return np.concatenate(out), forwards, calls


def evaluate(model, movqgan, cases: list[Case], setting: Setting, batch: int = 64) -> dict:
    """Scores of one setting: per category the share of images with every claim right (edge: mean F1)."""
    hits: dict[str, list[float]] = {}
    attrs = {k: [] for k in ("count", "shape", "colour", "region", "background")}
    by_shape: dict[str, list[float]] = {}
    images_total, forwards_total, calls, t0 = 0, 0, 0, time.perf_counter()
    for case in cases:
        images, forwards, n_calls = run_case(model, movqgan, case, setting, batch)
        images_total += len(images)
        forwards_total += forwards
        calls += n_calls
        for img in images:
            if case.category == "edge":
                hits.setdefault("edge", []).append(edge_f1(case.condition, img))
                continue
            v = judge(img, case.spec)
            hits.setdefault(case.category, []).append(float(v.all_ok))
            if case.category == "held_out":
                by_shape.setdefault(case.spec.objects[0].kind, []).append(float(v.all_ok))
                for key, ok in zip(attrs, (v.count_ok, v.shapes_ok, v.colours_ok, v.regions_ok, v.background_ok)):
                    attrs[key].append(float(ok))
    scores = {k: float(np.mean(v)) for k, v in hits.items()}
    scores["counts"] = {k: len(v) for k, v in hits.items()}
    if all(c in scores for c in GENEVAL):
        scores["overall"] = float(np.mean([scores[c] for c in GENEVAL]))
    if attrs["count"]:
        scores["held_out_attrs"] = {k: float(np.mean(v)) for k, v in attrs.items()}
        scores["held_out_by_shape"] = {k: float(np.mean(by_shape[k])) for k in SHAPES if k in by_shape}
    seconds = time.perf_counter() - t0
    scores["seconds_per_image"] = seconds / max(1, images_total)
    scores["forwards_per_call"] = forwards_total / max(1, calls)
    return scores


def tokenizer_check(movqgan, n: int = 256, seed: int = 999) -> dict:
    """The MoVQGAN alone, on fresh generator images: PSNR and codebook use (train_movqgan's measure),
    and the judge and edge F1 on round trips, which bound what any transformer can reach through it."""
    stats = reconstruction_stats(movqgan, n, seed)
    scenes = training_scenes(seed, n)
    images = np.stack([s.render() for s in scenes])
    codes = torch.cat([movqgan.encode(to_signed(images[i:i + 64])) for i in range(0, n, 64)])
    decoded = to_uint8(decode_images(movqgan, codes))
    verdicts = [judge(d, s.spec).all_ok for d, s in zip(decoded, scenes)]
    stats["judge_round_trip"] = float(np.mean(verdicts))
    # single-shape scenes by shape: "right / of" (a shape the tokenizer cannot draw caps every model)
    stats["round_trip_by_shape"] = {
        k: f"{sum(ok for ok, s in zip(verdicts, scenes) if s.kind == 'single' and s.shapes[0].kind == k)}/"
           f"{sum(1 for s in scenes if s.kind == 'single' and s.shapes[0].kind == k)}" for k in SHAPES}
    stats["edge_f1_round_trip"] = float(np.mean([edge_f1(s.edges(), d) for d, s in zip(decoded, scenes)]))
    return stats


# ----------------------------------------------------------------------------- tables
COLUMNS = [("single", "single"), ("two", "two obj"), ("counting", "counting"), ("colours", "colours"),
           ("position", "position"), ("colour_attr", "colour attr"), ("overall", "**overall**"),
           ("held_out", "held-out all-right"), ("edge", "edge F1"), ("seconds_per_image", "s/img")]


def markdown_table(rows: list[tuple[Setting, dict]]) -> str:
    cols = [(k, title) for k, title in COLUMNS if any(k in r for _, r in rows)]
    lines = ["| setting | " + " | ".join(t for _, t in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for setting, r in rows:
        cells = []
        for k, _ in cols:
            v = r.get(k)
            cells.append("" if v is None else f"{v:.3f}" if k == "seconds_per_image" else
                         f"{v:.2f}" if k == "edge" else f"{100 * v:.1f}%")
        lines.append(f"| {setting.label()} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def held_out_table(rows: list[tuple[Setting, dict]]) -> str:
    """Per-attribute shares on the held-out prompts. The judge matches objects only when the count is right,
    so every attribute column counts an image as right only if its count is right too."""
    rows = [(s, r) for s, r in rows if "held_out_attrs" in r]
    if not rows:
        return ""
    keys = list(rows[0][1]["held_out_attrs"])
    shapes = [k for k in SHAPES if k in rows[0][1].get("held_out_by_shape", {})]
    lines = ["| setting (held-out prompts) | " + " | ".join(f"{k} right" for k in keys) + " | all right | "
             + " | ".join(f"all right: {k}s" for k in shapes) + " |",
             "|---|" + "---:|" * (len(keys) + 1 + len(shapes))]
    for s, r in rows:
        a, b = r["held_out_attrs"], r.get("held_out_by_shape", {})
        lines.append(f"| {s.label()} | " + " | ".join(f"{100 * a[k]:.1f}%" for k in keys)
                     + f" | {100 * r['held_out']:.1f}% | " + " | ".join(f"{100 * b[k]:.1f}%" for k in shapes) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description="GenEval-style shapes benchmark for the demo model")
    p.add_argument("--checkpoint", default=DEMO_CHECKPOINT)
    p.add_argument("--movqgan", default=DEMO_MOVQGAN)
    p.add_argument("--n", type=int, default=200, help="images per category and setting")
    p.add_argument("--prompts", type=int, default=10, help="prompts per category (seeds = n / prompts)")
    p.add_argument("--categories", nargs="+", default=list(CATEGORIES), choices=CATEGORIES)
    p.add_argument("--method", nargs="+", default=["plain"], help=f"sampling methods: {sorted(METHODS)}")
    p.add_argument("--cfg", nargs="+", type=float, default=[1.0, 1.5, 2.0, 3.0, 4.0])
    p.add_argument("--temperature", nargs="+", type=float, default=[1.0])
    p.add_argument("--top-k", nargs="+", type=int, default=[0])
    p.add_argument("--guidance-top-k", nargs="+", type=int, default=[0])
    p.add_argument("--batch", type=int, default=64, help="images per generate() call")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="also write every score here")
    p.add_argument("--tokenizer-check", action="store_true",
                   help="also measure the MoVQGAN alone: PSNR, codes used, judge and edge F1 on round trips")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    unknown = [m for m in args.method if m not in METHODS]
    if unknown:
        p.error(f"unknown method(s) {unknown}; registered: {sorted(METHODS)}")
    model, movqgan, _ = load_demo(args.checkpoint, args.movqgan, device=args.device)
    if args.tokenizer_check:
        print("MoVQGAN round trip:", json.dumps(tokenizer_check(movqgan)), flush=True)
    cases = build_cases(args.n, args.prompts, categories=args.categories)
    rows = []
    for method, temp, top_k, gtk, cfg in itertools.product(args.method, args.temperature, args.top_k,
                                                            args.guidance_top_k, args.cfg):
        setting = Setting(method, cfg, temp, top_k, gtk)
        rows.append((setting, evaluate(model, movqgan, cases, setting, args.batch)))
        print(f"done: {setting.label()} {json.dumps({k: v for k, v in rows[-1][1].items() if not isinstance(v, dict)})}",
              flush=True)
    print()
    print(markdown_table(rows))
    print()
    print(held_out_table(rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump([{"setting": s.__dict__, "scores": r} for s, r in rows], f, indent=1)


if __name__ == "__main__":
    main()
