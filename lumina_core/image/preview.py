"""Previews of a partly generated code grid, for progress displays.

Two kinds: the real thing (the image tokenizer decodes the rows done so far) and a cheap one that
needs no image tokenizer (each code drawn as a flat colour taken from the transformer's own
embedding of that code, projected to RGB). Rows not generated yet are grey.
"""
from __future__ import annotations

import time

import torch
from PIL import Image

from .prep import signed_to_unit_bhwc, unit_bhwc_to_pil

PENDING_GREY = 0.5


def _on_canvas(rows_image: torch.Tensor, total_height: int) -> Image.Image:
    """[H_done, W, 3] 0..1 -> PIL of the full height, pending rows grey."""
    canvas = torch.full((total_height, rows_image.shape[1], 3), PENDING_GREY)
    canvas[: rows_image.shape[0]] = rows_image[:total_height]
    return unit_bhwc_to_pil(canvas[None])[0]


@torch.no_grad()
def decoded_preview(image_tokenizer, codes: torch.Tensor, total_rows: int, panel_rows: int | None = None) -> Image.Image:
    """codes [rows_done, w] of one image -> its decoded rows on a full-size canvas. panel_rows: rows per panel
    of a dual-panel canvas, decoded panel by panel as the Decode node does (generate.decode_images says why)."""
    step = panel_rows or codes.shape[0]
    pixels = torch.cat([signed_to_unit_bhwc(image_tokenizer.decode(codes[i:i + step][None]))[0].cpu()
                        for i in range(0, codes.shape[0], step)], dim=0)
    return _on_canvas(pixels, total_rows * image_tokenizer.downsample_factor)


@torch.no_grad()
def embedding_palette(model) -> torch.Tensor:
    """One RGB colour per image code [n_codes, 3] in 0..1: the first three principal components of
    the transformer's embeddings of the codes. Similar codes get similar colours; computed once."""
    start, end = model.tokenizer.special.image_rows
    emb = model.model.embed_tokens.weight[start:end].float()
    emb = emb - emb.mean(0)
    _, _, v = torch.pca_lowrank(emb, q=min(3, emb.shape[1]), center=False, niter=2)
    rgb = emb @ v
    rgb = (rgb - rgb.amin(0)) / (rgb.amax(0) - rgb.amin(0)).clamp(min=1e-6)
    if rgb.shape[1] < 3:
        rgb = rgb.repeat(1, 3)[:, :3]
    return rgb.cpu()


def palette_preview(palette: torch.Tensor, codes: torch.Tensor, total_rows: int, cell: int = 8) -> Image.Image:
    """codes [rows_done, w] -> flat-colour cells of `cell` px on a full-size canvas."""
    colours = palette[codes.cpu().long()]                                      # [r, w, 3]
    pixels = colours.repeat_interleave(cell, 0).repeat_interleave(cell, 1)
    return _on_canvas(pixels, total_rows * cell)


class PreviewSchedule:
    """Which rows get a preview: the first, the last, and every `every` rows in between (default: about
    eight per image), never two within `min_seconds`."""

    def __init__(self, total_rows: int, every: int | None = None, min_seconds: float = 1.0, clock=time.monotonic):
        self.total = total_rows
        self.every = every or max(1, -(-total_rows // 8))
        self.min_seconds = min_seconds
        self.clock = clock
        self.last = None

    def due(self, rows_done: int) -> bool:
        first_or_last = self.last is None or rows_done == self.total
        if not first_or_last and (rows_done % self.every or self.clock() - self.last < self.min_seconds):
            return False
        self.last = self.clock()
        return True
