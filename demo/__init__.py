"""The shapes demo: a small Lumina-mGPT 2.0 (same classes and file formats as the 7.9B release)
trained on procedural shape images, so the pack can be tried, tested and benchmarked without the
16 GB checkpoint or a GPU.

    demo.shapes       scene generator, captions, ground truth, held-out split
    demo.judge        OpenCV judge of generated images against what a caption claims
    demo.build_demo   one command that trains everything and writes demo_model/
"""
from __future__ import annotations

import json
import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_ROOT = os.path.join(REPO_ROOT, "demo_model")
DEMO_MODEL_NAME = "lumina-mgpt2-shapes-demo"
DEMO_CHECKPOINT = os.path.join(DEMO_ROOT, DEMO_MODEL_NAME)
DEMO_MOVQGAN = os.path.join(DEMO_ROOT, "movqgan_shapes_demo.safetensors")
DEMO_VERIFIER = "shapes-verifier-clip"   # CLIP folder next to the checkpoint (best-of-N scorer)
GENERATION_CONFIG = "generation_config.json"


def demo_available(root: str = DEMO_ROOT) -> bool:
    return (os.path.isfile(os.path.join(root, DEMO_MODEL_NAME, "config.json"))
            and os.path.isfile(os.path.join(root, os.path.basename(DEMO_MOVQGAN))))


def generation_defaults(checkpoint: str = DEMO_CHECKPOINT) -> dict:
    """The demo's recommended sampling settings (cfg, top_k, temperature, size) from generation_config.json."""
    with open(os.path.join(checkpoint, GENERATION_CONFIG), "r", encoding="utf-8") as f:
        return json.load(f)


def load_demo(checkpoint: str = DEMO_CHECKPOINT, movqgan: str = DEMO_MOVQGAN, device="cpu"):
    """(transformer, MoVQGAN, sampling defaults), loaded through the public engine API in float32."""
    import torch

    from lumina_core import LuminaMGPT, MoVQGAN

    model = LuminaMGPT.from_pretrained(checkpoint, dtype=torch.float32, device=device)
    return model, MoVQGAN.from_file(movqgan, device=device), generation_defaults(checkpoint)
