"""Where checkpoints live: transformer folders and MoVQGAN files under a host's model folders, plus the
bundled demo.

A name shown to the user maps back to a path only through these listings, so a name can never reach
outside the listed folders (no '..', no absolute paths).
"""
from __future__ import annotations

import os

from ..errors import CheckpointError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO_DIR = os.path.join(REPO_ROOT, "demo_model")
DEMO_PREFIX = "demo: "
DEMO_TRANSFORMER = "lumina-mgpt2-shapes-demo"
DEMO_IMAGE_TOKENIZER = "movqgan_shapes_demo.safetensors"
DEMO_VERIFIER = "shapes-verifier-clip"          # the demo's CLIP folder for best-of-N

IMAGE_TOKENIZER_SUFFIXES = (".ckpt", ".safetensors")
# The released layout (Alpha-VLLM/Lumina-mGPT-2.0), for error messages and the README.
RELEASED_TRANSFORMER_FOLDER = "Lumina-mGPT-2.0"
RELEASED_TRANSFORMER_FILES = (
    "config.json", "generation_config.json", "model.safetensors.index.json",
    *(f"model-{i:05d}-of-00004.safetensors" for i in range(1, 5)),
    "tokenizer.json", "tokenizer_config.json",
)
RELEASED_IMAGE_TOKENIZER = "movqgan_270M.ckpt"


def is_checkpoint_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json")) and (
        os.path.isfile(os.path.join(path, "model.safetensors.index.json"))
        or os.path.isfile(os.path.join(path, "model.safetensors")))


def _entries(base: str) -> list[str]:
    try:
        return sorted(os.listdir(base))
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []


def _listing(bases: list[str], accept, demo_name: str) -> dict[str, str]:
    """Display name -> path for every entry directly inside `bases` that `accept(path)` takes (first base
    wins on a name clash), then the bundled demo's `demo_name` if it is there."""
    found: dict[str, str] = {}
    for base in bases:
        for name in _entries(base):
            path = os.path.join(base, name)
            if name not in found and accept(path):
                found[name] = path
    demo = os.path.join(DEMO_DIR, demo_name)
    if accept(demo):
        found[DEMO_PREFIX + demo_name] = demo
    return found


def list_transformers(bases: list[str]) -> dict[str, str]:
    """Checkpoint folders directly inside `bases`, then the bundled demo."""
    return _listing(bases, is_checkpoint_folder, DEMO_TRANSFORMER)


def _is_image_tokenizer_file(path: str) -> bool:
    return path.endswith(IMAGE_TOKENIZER_SUFFIXES) and os.path.isfile(path)


def list_image_tokenizers(bases: list[str]) -> dict[str, str]:
    """.ckpt/.safetensors files directly inside `bases`, then the demo's. Files inside checkpoint folders
    (the transformer's shards) are not listed."""
    return _listing(bases, _is_image_tokenizer_file, DEMO_IMAGE_TOKENIZER)


def is_clip_folder(path: str) -> bool:
    """A transformers CLIPModel folder: config.json whose model_type is 'clip'."""
    import json
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            return json.load(f).get("model_type") == "clip"
    except (OSError, ValueError, AttributeError):
        return False  # not a model folder we can read; listings just leave it out


def list_clip_folders(bases: list[str]) -> dict[str, str]:
    """CLIP folders directly inside `bases` (models/clip_vision/), then the demo's verifier."""
    return _listing(bases, is_clip_folder, DEMO_VERIFIER)


def resolve(name: str, listing: dict[str, str], kind: str, bases: list[str]) -> str:
    """The path behind a listed name, or an error that says where files belong."""
    if name in listing:
        return listing[name]
    if os.sep in name or "/" in name or name.startswith(".."):
        raise CheckpointError(f"{kind} name {name!r} is a path; pick a name from the list (files must sit "
                              f"directly inside one of: {', '.join(bases)}).")
    where = "\n  ".join(bases) or "(no model folder registered)"
    have = ", ".join(listing) or "none"
    raise CheckpointError(f"{kind} {name!r} not found. Put it in one of these folders:\n  {where}\n"
                          f"and refresh the page. Available now: {have}.\n{released_layout()}")


def released_layout() -> str:
    """Where the official files go, relative to a model folder."""
    files = ", ".join(RELEASED_TRANSFORMER_FILES)
    return (f"Official layout: {RELEASED_TRANSFORMER_FOLDER}/ holding {files}; and {RELEASED_IMAGE_TOKENIZER} "
            "next to that folder.")
