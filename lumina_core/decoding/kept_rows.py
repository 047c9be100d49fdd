"""Kept rows: the top of an image given in the prompt, so the model paints only what lies below it.

An image is painted row by row, each row conditioned on every row above it. Giving the first k code rows in
the prompt (prefilled like a condition panel) and sampling from row k on re-rolls the rest of a picture while
its top stays exactly as it was; a canvas taller than the rows given extends the picture downward. The rows are
the top of the part of the canvas a task paints: the image for t2i, the lower panel for tasks whose upper panel
is a given condition, the whole canvas (image, then map) for pair_* tasks.

This module checks kept rows against a canvas (in the units a user typed: rows of `factor` px) and groups the
images of a batch by the rows they keep.
"""
from __future__ import annotations

import torch

from ..errors import InputError


def _part_name(spec) -> str:
    if not spec.dual_panel:
        return "image"
    return "lower panel" if spec.needs_condition else "canvas (image and map)"


def as_images(prefix_codes) -> torch.Tensor:
    """Kept-row codes as [images, rows, w] (a single [rows, w] grid is one image)."""
    codes = torch.as_tensor(prefix_codes)
    if codes.ndim == 2:
        codes = codes[None]
    if codes.ndim != 3 or min(codes.shape) < 1:
        raise InputError(f"the rows to keep must be code grids [rows, w] or [images, rows, w], got shape "
                         f"{tuple(codes.shape)}")
    if codes.dtype.is_floating_point or codes.dtype == torch.bool:
        raise InputError(f"the rows to keep must be integer image codes, got {codes.dtype}")
    return codes


def check_kept_rows(prefix_codes, keep_rows: int | None, spec, *, w_lat: int, free_rows: int, factor: int,
                    num_codes: int) -> torch.Tensor:
    """The first `keep_rows` rows (None: all) of one image's codes, checked against a canvas `w_lat` codes wide
    whose painted part has `free_rows` rows. Returns the kept codes [k, w_lat] (int64, CPU)."""
    codes = as_images(prefix_codes)
    if codes.shape[0] != 1:
        raise InputError(f"one prompt keeps the rows of one image, got {codes.shape[0]}")
    codes = codes[0].detach().long().cpu()
    rows, w = codes.shape
    part = _part_name(spec)
    if int(codes.min()) < 0 or int(codes.max()) >= num_codes:  # first: the root of any other mismatch
        bad = int(codes.max()) if int(codes.max()) >= num_codes else int(codes.min())
        raise InputError(f"the rows to keep hold code {bad}, but this model's image tokenizer has {num_codes} codes "
                         f"(0..{num_codes - 1}): they were encoded with another image tokenizer. Encode the picture "
                         "with the MoVQGAN that belongs to this checkpoint.")
    if w != w_lat:
        raise InputError(f"the rows to keep are {w} codes ({w * factor} px) wide but the {part} is {w_lat} codes "
                         f"({w_lat * factor} px) wide: set the width to {w * factor}, or encode the picture at "
                         f"{w_lat * factor} px wide.")
    k = rows if keep_rows is None else int(keep_rows)
    if k < 1:
        raise InputError(f"keep_rows must be at least 1 (rows of {factor} px from the top), got {k}; leave it "
                         "unset (0 on the Sampler) to keep every row given.")
    if k > rows:
        raise InputError(f"keep_rows is {k} but only {rows} rows ({rows * factor} px) are given: keep at most "
                         f"{rows}.")
    if k >= free_rows:
        raise InputError(f"keeping {k} rows ({k * factor} px) leaves nothing to paint: the {part} has {free_rows} "
                         f"rows ({free_rows * factor} px). Keep fewer than {free_rows} rows to re-roll the rest, "
                         f"or make the {part} taller to extend the picture downward.")
    return codes[:k]


def group_by_prefix(prefix_codes, n_images: int, keep_rows: int | None = None) -> list[tuple[torch.Tensor, list[int]]]:
    """[(one image's codes [rows, w], the images of the batch that keep them)], in order of first use. One grid
    serves every image; otherwise there is one per image (grids whose kept top `keep_rows` rows are the same
    share a group, so they share a prefill; None keeps every row)."""
    codes = as_images(prefix_codes)
    if codes.shape[0] == 1:
        return [(codes[0], list(range(n_images)))]
    if codes.shape[0] != n_images:
        raise InputError(f"the rows to keep come from {codes.shape[0]} images but the batch has {n_images}: start "
                         f"every image from one picture, or set the batch size to {codes.shape[0]} (one per picture).")
    groups: list[tuple[torch.Tensor, list[int]]] = []
    for i in range(n_images):
        for grid, members in groups:
            if torch.equal(grid[:keep_rows], codes[i][:keep_rows]):
                members.append(i)
                break
        else:
            groups.append((codes[i], [i]))
    return groups
