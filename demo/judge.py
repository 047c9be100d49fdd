"""OpenCV judge: find the shapes in an RGB image and check them against what a caption claims.

Never uses a model. Background = the dominant border colour; every other pixel takes its nearest
named colour; each colour's mask is opened (which removes anti-aliasing fringes, whose blended
colours would otherwise look like extra objects) and split into connected components. A component's
outline is its sub-pixel coverage of that colour over the background; its shape comes from how it
fills its axis-aligned and 45-degree bounding boxes and how its area splits top/bottom (see
`classify`); its region, size and the relations come from the bounding box and area.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import cv2
import numpy as np

from .shapes import COLOURS, SHAPES, SIZES, Spec, canny_edges, region_of, shape_polygon

PALETTE_NAMES = tuple(COLOURS)
PALETTE = np.array([COLOURS[n] for n in PALETTE_NAMES], dtype=np.float32)
MIN_AREA = 20           # px at 64x64; the smallest generated shape covers about 100
RELATION_MARGIN = 4.0   # px: "left of" needs the centres this far apart


@dataclass(frozen=True)
class Found:
    kind: str          # circle, square, triangle, diamond or 'unknown'
    colour: str
    cx: float
    cy: float
    area: int

    @property
    def region(self) -> str:
        return region_of(self.cx, self.cy)


@dataclass(frozen=True)
class Verdict:
    found: tuple[Found, ...]
    background: str
    count_ok: bool
    shapes_ok: bool
    colours_ok: bool
    regions_ok: bool
    sizes_ok: bool
    relation_ok: bool
    background_ok: bool

    @property
    def all_ok(self) -> bool:
        return (self.count_ok and self.shapes_ok and self.colours_ok and self.regions_ok and self.sizes_ok
                and self.relation_ok and self.background_ok)


def _to_uint8(image) -> np.ndarray:
    """Accepts uint8 HxWx3 or float 0..1 HxWx3 (numpy or torch)."""
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    a = np.asarray(image)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0, 1) * 255).round().astype(np.uint8)
    return a[..., :3]


def nearest_colour(rgb) -> str:
    d = ((PALETTE - np.asarray(rgb, np.float32)[None]) ** 2).sum(1)
    return PALETTE_NAMES[int(d.argmin())]


def colour_labels(img: np.ndarray) -> np.ndarray:
    """Index of the nearest palette colour for every pixel [H, W]."""
    flat = img.reshape(-1, 3).astype(np.float32)
    d = (flat ** 2).sum(1, keepdims=True) + (PALETTE ** 2).sum(1)[None] - 2 * flat @ PALETTE.T
    return d.argmin(1).reshape(img.shape[:2])


def classify(cover: np.ndarray) -> str:
    """Shape of one component given its coverage map (0..1, zero outside the component).

    Triangles (pointing up) put about a quarter of their area in the top half, the others half.
    Then squares fill their axis-aligned bounding box and half of the 45-degree one, diamonds the
    reverse, circles about 0.79 of both: the difference of the two fills separates them and is
    insensitive to the rasterisation of small shapes, which inflates both fills alike. The map is
    upsampled 4x first so outlines are measured to a quarter pixel.
    """
    up = cv2.resize(cover.astype(np.float32), None, fx=4, fy=4, interpolation=cv2.INTER_LINEAR)
    mask = (up > 0.5).astype(np.uint8)
    if not mask.any():
        return "unknown"
    ys, xs = np.nonzero(mask)
    area = float(len(xs))
    w, h = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    hull_area = cv2.contourArea(cv2.convexHull(max(contours, key=cv2.contourArea)))
    # every shape we draw is about as wide as tall (a triangle 1.15:1): ovals, bars and merged blobs are not
    if not 0.8 <= w / h <= 1.3 or area / max(hull_area, 1.0) < 0.8:
        return "unknown"
    mid = (ys.min() + ys.max() + 1) / 2.0
    top_share = (ys < mid).sum() / area
    if top_share < 0.39:
        return "triangle"
    if top_share > 0.61:  # pointing down: not a shape of the vocabulary
        return "unknown"
    u, v = xs + ys, xs - ys
    fill_axis = area / float(w * h)
    fill_diag = area / ((u.max() - u.min() + 2) * (v.max() - v.min() + 2) / 2.0)
    score = fill_axis - fill_diag
    if score > 0.2:
        return "square"
    if score < -0.2:
        return "diamond"
    # a disc fills pi/4 = 0.785 of its box; lumpy blobs and polygons that fall between the classes do not
    return "circle" if 0.72 <= fill_axis <= 0.86 else "unknown"


def coverage(img: np.ndarray, colour: str, background: str) -> np.ndarray:
    """How much of each pixel a shape of `colour` covers on `background` (0..1): the pixel's
    projection onto the line between the two colours. Anti-aliased edges get fractional values."""
    c, b = np.array(COLOURS[colour], np.float32), np.array(COLOURS[background], np.float32)
    d = c - b
    return np.clip(((img.astype(np.float32) - b) @ d) / float(d @ d), 0, 1)


def find_shapes(image) -> tuple[list[Found], str]:
    """Detected shapes and the background colour name of one RGB image.

    Components are found on opened nearest-colour masks (robust to fringes); each one's outline is
    then taken from its coverage map (> 0.5) near the component, which keeps corners that opening
    rounds off.
    """
    img = _to_uint8(image)
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    background = nearest_colour(np.median(border, axis=0))
    labels = colour_labels(img)
    kernel = np.ones((3, 3), np.uint8)
    found = []
    for ci, name in enumerate(PALETTE_NAMES):
        if name == background:
            continue
        mask = cv2.morphologyEx((labels == ci).astype(np.uint8), cv2.MORPH_OPEN, kernel)
        n, comp, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4)
        if n == 1:
            continue
        cover = coverage(img, name, background)
        for j in range(1, n):
            if stats[j, cv2.CC_STAT_AREA] < MIN_AREA:
                continue
            near = cv2.dilate((comp == j).astype(np.uint8), kernel, iterations=2) > 0
            local = np.where(near, cover, 0.0)
            ys, xs = np.nonzero(local > 0.5)
            if len(xs) == 0:
                continue
            cx, cy = (xs.min() + xs.max() + 1) / 2.0, (ys.min() + ys.max() + 1) / 2.0
            found.append(Found(classify(local), name, float(cx), float(cy), int(len(xs))))
    return found, background


def _relation_holds(a: Found, b: Found, relation: str) -> bool:
    m = RELATION_MARGIN
    return {"left of": a.cx < b.cx - m, "right of": a.cx > b.cx + m,
            "above": a.cy < b.cy - m, "below": a.cy > b.cy + m}[relation]


def _unit_area(kind: str) -> float:
    """Area of a shape of radius 1 (how area scales with radius for that kind)."""
    poly = shape_polygon(kind, 0.0, 0.0, 1.0)
    return float(np.pi) if poly is None else float(cv2.contourArea(poly.astype(np.float32)))


SIZE_SPLIT = (SIZES["small"] + SIZES["large"]) / 2  # radius between the two named sizes


def _size_of(f: Found) -> str:
    if f.kind not in SHAPES:
        return "unknown"
    return "small" if np.sqrt(f.area / _unit_area(f.kind)) < SIZE_SPLIT else "large"


def judge(image, spec: Spec) -> Verdict:
    """Check one image against a caption's claims. Objects are matched to the caption's objects by
    the assignment that satisfies the most attributes."""
    found, background = find_shapes(image)
    want = spec.objects
    count_ok = len(found) == len(want)
    best = None
    if count_ok:
        for perm in itertools.permutations(found):
            checks = (
                all(o.kind is None or f.kind == o.kind for f, o in zip(perm, want)),
                all(o.colour is None or f.colour == o.colour for f, o in zip(perm, want)),
                all(o.region is None or f.region == o.region for f, o in zip(perm, want)),
                all(o.size is None or _size_of(f) == o.size for f, o in zip(perm, want)),
                spec.relation is None or _relation_holds(perm[0], perm[1], spec.relation),
            )
            if best is None or sum(checks) > sum(best):
                best = checks
    shapes_ok, colours_ok, regions_ok, sizes_ok, relation_ok = best or (False,) * 5
    return Verdict(tuple(found), background, count_ok, shapes_ok, colours_ok, regions_ok, sizes_ok, relation_ok,
                   spec.background is None or background == spec.background)


def edge_f1(condition_edges, generated_image, tolerance: int = 2) -> float:
    """F1 between a condition edge map and the Canny edges of a generated image, an edge pixel counting
    as matched when the other map has one within `tolerance` px (BSDS-style boundary matching)."""
    cond = _to_uint8(condition_edges).max(-1) > 127
    gen = canny_edges(_to_uint8(generated_image)).max(-1) > 127
    if not cond.any() and not gen.any():
        return 1.0
    if not cond.any() or not gen.any():
        return 0.0
    k = np.ones((2 * tolerance + 1, 2 * tolerance + 1), np.uint8)
    near_cond = cv2.dilate(cond.astype(np.uint8), k) > 0
    near_gen = cv2.dilate(gen.astype(np.uint8), k) > 0
    precision = (gen & near_cond).sum() / gen.sum()
    recall = (cond & near_gen).sum() / cond.sum()
    return 0.0 if precision + recall == 0 else float(2 * precision * recall / (precision + recall))
