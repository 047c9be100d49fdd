"""Condition-map preprocessing for the controllable tasks, on IMAGE tensors [B, H, W, C] in 0..1.

Canny maps follow the convention the models were trained on: white edges on black, as RGB.
A depth or pose map the user already has is used as it is ("none").
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError

PREPROCESSORS = ("none", "canny")


def as_rgb(image: torch.Tensor) -> torch.Tensor:
    """[B, H, W, C] with C in 1, 3, 4 -> float [B, H, W, 3] (grey repeated, alpha dropped)."""
    if image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        raise InputError(f"expected an IMAGE [B, H, W, C] with 1, 3 or 4 channels, got {tuple(image.shape)}")
    if image.shape[-1] == 1:
        image = image.expand(-1, -1, -1, 3)
    return image[..., :3].float()


def _to_uint8_rgb(image: torch.Tensor) -> np.ndarray:
    return (as_rgb(image).detach().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)


def canny_edges(image: torch.Tensor, low: int = 100, high: int = 200) -> torch.Tensor:
    """Canny edge maps of every image in the batch, white on black, [B, H, W, 3] float 0..1."""
    if not 0 <= low <= high:
        raise InputError(f"canny thresholds need 0 <= low <= high, got low={low}, high={high}")
    try:  # imported here: a broken OpenCV (packs often fight over its variants) must not stop the pack loading
        import cv2
    except ImportError as e:
        raise InputError(f"canny preprocessing needs OpenCV: pip install opencv-python-headless ({e})") from e
    maps = []
    for rgb in _to_uint8_rgb(image):
        edges = cv2.Canny(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), low, high)
        maps.append(np.repeat(edges[..., None], 3, -1))
    return torch.from_numpy(np.stack(maps)).float() / 255.0


def preprocess(image: torch.Tensor, method: str, low: int = 100, high: int = 200) -> torch.Tensor:
    """Apply one of PREPROCESSORS; 'none' returns the image (as RGB) unchanged."""
    if method == "canny":
        return canny_edges(image, low, high)
    if method == "none":
        return as_rgb(image)
    raise InputError(f"unknown preprocessing {method!r}; choose one of: {', '.join(PREPROCESSORS)}")
