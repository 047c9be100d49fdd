"""Condition-image preparation (as upstream) and conversions between PIL, [-1,1] and [B,H,W,3] tensors."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def whiten_transparency(img: Image.Image) -> Image.Image:
    """RGB as is; anything with transparency is composited on white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit / float maps (depth): PIL would clip at 255
        img = Image.fromarray(_to_8bit(np.asarray(img, dtype=np.float32), img.mode))
    rgba = img.convert("RGBA")
    alpha = np.asarray(rgba)[..., 3]
    if (alpha < 255).any():
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return rgba.convert("RGB")


def _to_8bit(a: np.ndarray, mode: str) -> np.ndarray:
    """A single-channel map to 0..255 in proportion: 16-bit modes by 65535, 0..1 floats by 1, 32-bit
    integers holding 8- or 16-bit values by 255 or 65535; anything else stretched from min to max."""
    lo, hi = float(a.min()), float(a.max())
    if mode.startswith("I;16"):
        scale = 255.0 / 65535.0
    elif mode == "F" and lo >= 0 and hi <= 1:
        scale = 255.0
    elif mode == "I" and lo >= 0 and hi <= 255:
        scale = 1.0
    elif mode == "I" and lo >= 0 and hi <= 65535:
        scale = 255.0 / 65535.0
    else:
        return np.clip((a - lo) * (255.0 / max(hi - lo, 1e-12)), 0, 255).round().astype(np.uint8)
    return np.clip(a * scale, 0, 255).round().astype(np.uint8)


def resize_center_crop(img: Image.Image, width: int, height: int) -> Image.Image:
    """Shrink by halving (box filter) while far larger, resize bicubically to cover, crop the centre."""
    while img.width >= 2 * width and img.height >= 2 * height:
        img = img.resize((img.width // 2, img.height // 2), Image.BOX)
    scale = max(width / img.width, height / img.height)
    new_w, new_h = max(width, round(img.width * scale)), max(height, round(img.height * scale))
    img = img.resize((new_w, new_h), Image.BICUBIC)
    left, top = (new_w - width) // 2, (new_h - height) // 2
    return img.crop((left, top, left + width, top + height))


def pil_to_signed(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> float32 [1, 3, H, W] in [-1, 1]."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr * 2 - 1).permute(2, 0, 1).unsqueeze(0).contiguous()


def signed_to_unit_bhwc(x: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in about [-1, 1] -> float32 [B, H, W, 3] in [0, 1], quantised like a saved PNG would be."""
    u8 = ((x.float() + 1) * 127.5).round().clamp(0, 255)
    return (u8 / 255.0).permute(0, 2, 3, 1).contiguous()


def unit_bhwc_to_pil(image: torch.Tensor) -> list[Image.Image]:
    """[B, H, W, 3] float 0..1 -> list of PIL RGB."""
    arr = (image.detach().float().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(a[..., :3]) for a in arr]


def prepare_condition(image, width: int, height: int) -> torch.Tensor:
    """A condition image (PIL, or one [H, W, C] / [1, H, W, C] 0..1 tensor) -> [1, 3, height, width] in [-1, 1]."""
    if isinstance(image, torch.Tensor):
        if image.ndim == 4:
            image = image[0]
        arr = (image.detach().float().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
        if arr.shape[-1] == 1:
            arr = np.repeat(arr, 3, -1)
        image = Image.fromarray(arr, "RGBA" if arr.shape[-1] == 4 else "RGB")
    img = whiten_transparency(image)
    if img.size != (width, height):
        img = resize_center_crop(img, width, height)
    return pil_to_signed(img)
