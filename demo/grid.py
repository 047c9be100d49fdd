"""A picture of the demo model at work: a row per prompt (its caption, then images from fixed seeds with
the demo's default sampling), and a control_canny row (given edge map, then generated images).

    python -m demo.grid --out docs/demo_grid.png
"""
from __future__ import annotations

import argparse

import cv2
import numpy as np
import torch

from lumina_core import decode_images, generate

from . import load_demo
from .shapes import SceneSampler, held_out_prompts
from .train_movqgan import to_signed

PROMPTS = [
    "a red circle on the left on a blue background",
    "a large yellow square in the centre on a purple background",
    "a green triangle to the left of an orange circle",
    "a white diamond above a black square on a red background",
    "three blue circles on a yellow background",
    "two purple triangles",
    "a red square and a green diamond on a white background",
]
SEEDS = (0, 1, 2, 3)
SCALE = 2
LABEL_WIDTH = 360


def _label(text: str, height: int) -> np.ndarray:
    panel = np.full((height, LABEL_WIDTH, 3), 255, np.uint8)
    words, lines, line = text.split(), [], ""
    for w in words:  # wrap at about 30 characters
        if len(line) + len(w) > 30:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    lines.append(line)
    for i, ln in enumerate(lines):
        cv2.putText(panel, ln, (8, 24 + 22 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    return panel


def _big(img: np.ndarray) -> np.ndarray:
    return cv2.resize(img, None, fx=SCALE, fy=SCALE, interpolation=cv2.INTER_NEAREST)


def _row(label: str, images) -> np.ndarray:
    tiles = [_big(i) for i in images]
    gap = np.full((tiles[0].shape[0], 6, 3), 255, np.uint8)
    parts = [_label(label, tiles[0].shape[0])]
    for t in tiles:
        parts += [t, gap]
    return np.concatenate(parts, axis=1)


def _to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    return list((images.clamp(0, 1) * 255).round().byte().numpy())


def render_grid(model, movqgan, defaults: dict, prompts=PROMPTS, seeds=SEEDS) -> np.ndarray:
    sampling = dict(cfg=defaults["cfg"], top_k=defaults["top_k"], temperature=defaults["temperature"])
    size = (defaults["width"], defaults["height"])
    held_text, _ = held_out_prompts()[0]
    rows = []
    for text in list(prompts) + [held_text]:
        res = generate(model, text, *size, seeds=list(seeds), **sampling)
        label = text + (" (held-out combination)" if text == held_text else "")
        rows.append(_row(label, _to_uint8(decode_images(movqgan, res.codes))))
    scene = SceneSampler(np.random.default_rng(5), exclude_held_out=False).pair(p_drop=0.0)
    cond = movqgan.encode(to_signed(scene.edges()[None]))
    res = generate(model, scene.caption, size[0], 2 * size[1], task="control_canny", seeds=list(seeds[:-1]),
                   condition_codes=cond, **sampling)
    outs = _to_uint8(decode_images(movqgan, res.panel_codes()))
    rows.append(_row(f"control_canny: {scene.caption} (left: the given edge map)", [scene.edges()] + outs))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 6), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    return np.concatenate(rows, axis=0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/demo_grid.png")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    model, movqgan, defaults = load_demo()
    grid = render_grid(model, movqgan, defaults)
    cv2.imwrite(args.out, cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    print(f"wrote {args.out} ({grid.shape[1]}x{grid.shape[0]})")


if __name__ == "__main__":
    main()
