"""A picture of what only an autoregressive model can do, on the demo model: re-roll below a row, extend a picture
downward, and variations of a picture that was not generated (a drawn scene, encoded). A red bar left of each
tile marks the rows kept; the script checks and prints that every kept row's codes equal the source's and that
the painted rows differ between seeds.

    python -m demo.reroll_picture --out docs/reroll.png
"""
from __future__ import annotations

import argparse

import cv2
import numpy as np
import torch

from lumina_core import decode_images, generate

from . import load_demo
from .grid import _big, _label
from .shapes import SceneSampler
from .train_movqgan import to_signed

REROLL = ("a yellow triangle above a green circle on a white background", 4)   # prompt, rows kept of 8
EXTEND = ("a red circle above a blue square", 8)
PHOTO_PROMPT = "a green diamond above a yellow circle on a blue background"
SEEDS = (1, 2, 3, 4)
BAR = 4  # px of the kept-rows marker, after scaling


def _tile(image: np.ndarray, kept_rows: int) -> np.ndarray:
    """A scaled tile with a bar on its left: red beside the kept rows, light grey beside the painted ones."""
    big = _big(image)
    bar = np.full((big.shape[0], BAR, 3), 220, np.uint8)
    bar[: kept_rows * 8 * big.shape[0] // image.shape[0]] = (220, 30, 30)
    return np.concatenate([bar, big], axis=1)


def _row(label: str, tiles: list[np.ndarray]) -> np.ndarray:
    height = max(t.shape[0] for t in tiles)
    parts = [_label(label, height)]
    for t in tiles:
        parts += [np.pad(t, ((0, height - t.shape[0]), (0, 0), (0, 0)), constant_values=255),
                  np.full((height, 8, 3), 255, np.uint8)]
    return np.concatenate(parts, axis=1)


def _to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    return list((images.clamp(0, 1) * 255).round().byte().numpy())


def _check(source: torch.Tensor, out: torch.Tensor, kept: int, what: str) -> None:
    """Kept rows equal the source's codes exactly; the painted rows differ between seeds."""
    assert torch.equal(out[:, :kept], source[:, :kept].expand(out.shape[0], -1, -1)), what
    bottoms = {tuple(c[kept:].flatten().tolist()) for c in out}
    print(f"{what}: kept rows 0-{kept - 1} identical in all {out.shape[0]} images; "
          f"{len(bottoms)} different sets of painted rows")


def render(model, movqgan, defaults: dict) -> np.ndarray:
    sampling = dict(cfg=defaults["cfg"], top_k=defaults["top_k"], temperature=defaults["temperature"])
    rows = []
    prompt, keep = REROLL
    source = generate(model, prompt, 64, 64, seed=0, **sampling).codes
    out = generate(model, prompt, 64, 64, seeds=list(SEEDS), prefix_codes=source, keep_rows=keep, **sampling).codes
    _check(source, out, keep, "re-roll")
    images = _to_uint8(decode_images(movqgan, torch.cat([source, out])))
    rows.append(_row(f"re-roll below row {keep} of 8: {prompt} (left: the source, seed 0; then seeds 1-4)",
                     [_tile(images[0], 8)] + [_tile(i, keep) for i in images[1:]]))
    prompt, keep = EXTEND
    source = generate(model, prompt, 64, 64, seed=0, **sampling).codes
    out = generate(model, prompt, 64, 128, seeds=list(SEEDS), prefix_codes=source, **sampling).codes
    _check(source, out, keep, "extend downward")
    images = _to_uint8(decode_images(movqgan, source)) + _to_uint8(decode_images(movqgan, out))
    rows.append(_row(f"extend downward, 64x64 to 64x128: {prompt}",
                     [_tile(images[0], 8)] + [_tile(i, keep) for i in images[1:]]))
    scene = SceneSampler(np.random.default_rng(11), exclude_held_out=False).any()
    photo = movqgan.encode(to_signed(scene.render()[None]))
    keep = 3
    out = generate(model, PHOTO_PROMPT, 64, 64, seeds=list(SEEDS), prefix_codes=photo, keep_rows=keep,
                   **sampling).codes
    _check(photo, out, keep, "variations of a picture")
    images = _to_uint8(decode_images(movqgan, out))
    rows.append(_row(f"variations of a drawn picture (left), its top {keep} rows kept: {PHOTO_PROMPT}",
                     [_tile(scene.render(), 8)] + [_tile(i, keep) for i in images]))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 10), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    return np.concatenate(rows, axis=0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/reroll.png")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model, movqgan, defaults = load_demo()
    picture = render(model, movqgan, defaults)
    cv2.imwrite(args.out, cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    print(f"wrote {args.out} ({picture.shape[1]}x{picture.shape[0]})")


if __name__ == "__main__":
    main()
