"""The demo build's loss curves as a small PNG (one panel per stage, log-scaled loss), drawn with OpenCV
from the curves build_demo keeps in training_report.json.

    python -m demo.plot_training --out docs/demo_training.png
"""
from __future__ import annotations

import argparse
import json
import math
import os

import cv2
import numpy as np

from . import DEMO_CHECKPOINT

TITLES = {"movqgan": "MoVQGAN (encoder+decoder)", "movqgan_decoder": "MoVQGAN decoder only",
          "transformer": "transformer (next-code CE)", "verifier": "verifier (contrastive)"}
PANEL_W, PANEL_H, MARGIN = 300, 170, 34


def _panel(title: str, curve: list[float], steps: int) -> np.ndarray:
    img = np.full((PANEL_H, PANEL_W, 3), 255, np.uint8)
    x0, y0, x1, y1 = MARGIN, 22, PANEL_W - 8, PANEL_H - 22
    cv2.rectangle(img, (x0, y0), (x1, y1), (180, 180, 180), 1)
    cv2.putText(img, title, (x0, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    logs = [math.log10(max(v, 1e-6)) for v in curve]
    lo, hi = min(logs), max(logs)
    hi = hi if hi > lo else lo + 1
    pts = [(int(x0 + (x1 - x0) * i / max(1, len(logs) - 1)), int(y1 - (y1 - y0) * (v - lo) / (hi - lo)))
           for i, v in enumerate(logs)]
    cv2.polylines(img, [np.array(pts, np.int32)], False, (200, 80, 20), 1, cv2.LINE_AA)
    for v, y in ((hi, y0), (lo, y1)):
        cv2.putText(img, f"{10 ** v:.3g}", (1, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.3, (60, 60, 60), 1, cv2.LINE_AA)
    cv2.putText(img, f"{steps} steps, last {curve[-1]:.3g}", (x0, PANEL_H - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                (60, 60, 60), 1, cv2.LINE_AA)
    return img


def plot(report: dict) -> np.ndarray:
    curves = report.get("loss_curves") or {}
    steps = {"movqgan": report["movqgan_config"]["steps"], "movqgan_decoder": report["movqgan_config"]["decoder_steps"],
             "transformer": report["transformer_steps_done"],
             "verifier": (report.get("verifier") or {}).get("config", {}).get("steps", 0)}
    panels = [_panel(TITLES[k], curves[k], steps[k]) for k in TITLES if curves.get(k)]
    if not panels:
        raise ValueError("the report holds no loss curves (built before build_demo kept them)")
    while len(panels) % 2:
        panels.append(np.full_like(panels[0], 255))
    rows = [np.hstack(panels[i:i + 2]) for i in range(0, len(panels), 2)]
    return np.vstack(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--report", default=os.path.join(DEMO_CHECKPOINT, "training_report.json"))
    p.add_argument("--out", default="docs/demo_training.png")
    args = p.parse_args(argv)
    with open(args.report, encoding="utf-8") as f:
        image = plot(json.load(f))
    cv2.imwrite(args.out, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    print(args.out)


if __name__ == "__main__":
    main()
