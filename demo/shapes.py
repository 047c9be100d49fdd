"""Procedural captioned shape images with ground truth: the demo model's whole world.

A scene is 1-3 flat shapes (circle, square, triangle, diamond) in named colours on a plain
background, rendered at 4x and area-downsampled so edges are anti-aliased. Every scene carries its
ground truth (each shape's kind, colour, size, centre and region) and a caption from a small grammar.
A caption may leave attributes out; `Scene.spec` records only what the caption claims, which is
what the judge checks a generated image against.

Held-out split: HELD_OUT lists (colour, shape, region) triples that training never shows in any
image, so prompts built from them test composition the model never saw.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import cv2
import numpy as np

IMAGE_SIZE = 64
SUPERSAMPLE = 4

# Chosen to stay apart after lossy reconstruction (nearest-colour judging).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 225, 40),
    "green": (40, 170, 70),
    "blue": (40, 80, 225),
    "purple": (145, 60, 190),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}
COLOUR_NAMES = tuple(COLOURS)
SHAPES = ("circle", "square", "triangle", "diamond")
REGIONS = ("left", "right", "top", "bottom", "centre")
REGION_PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top",
                  "bottom": "at the bottom", "centre": "in the centre"}
SIZES = {"small": 9.0, "large": 13.0}          # shape "radius" in px at 64x64 (about 2 and 3 latent cells)
ROW_OF_THREE_RADIUS = 8.0                      # three in a row must fit 64 px
RELATIONS = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
COUNT_WORDS = {2: "two", 3: "three"}

# Region centres (x, y) at 64x64; single shapes are jittered around them.
REGION_CENTRES = {"left": (18, 32), "right": (46, 32), "top": (32, 18), "bottom": (32, 46), "centre": (32, 32)}


def _held_out_triples(fraction: float = 0.1, seed: int = 1234) -> tuple[tuple[str, str, str], ...]:
    """A fixed ~10% of (colour, shape, region) triples, spread so every colour, shape and region stays
    common in training (no two held-out triples share a colour and shape)."""
    rng = np.random.default_rng(seed)
    triples = list(itertools.product(COLOUR_NAMES, SHAPES, REGIONS))
    want = round(fraction * len(triples))
    chosen, used_pairs = [], set()
    for i in rng.permutation(len(triples)):
        c, s, r = triples[i]
        if (c, s) in used_pairs:
            continue
        chosen.append((c, s, r))
        used_pairs.add((c, s))
        if len(chosen) == want:
            break
    return tuple(sorted(chosen))


HELD_OUT: tuple[tuple[str, str, str], ...] = _held_out_triples()
HELD_OUT_SET = frozenset(HELD_OUT)


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    size: str
    cx: float
    cy: float
    radius: float
    region: str

    @property
    def triple(self) -> tuple[str, str, str]:
        return (self.colour, self.kind, self.region)


@dataclass(frozen=True)
class ObjectSpec:
    """What a caption says about one object; None = not mentioned."""
    kind: str | None
    colour: str | None = None
    region: str | None = None
    size: str | None = None


@dataclass(frozen=True)
class Spec:
    """Everything a caption claims: exact object count, per-object attributes, an optional relation
    (objects[0] <relation> objects[1]) and an optional background colour."""
    objects: tuple[ObjectSpec, ...]
    relation: str | None = None
    background: str | None = None


@dataclass
class Scene:
    background: str
    shapes: list[Shape]
    caption: str
    spec: Spec
    kind: str                      # grammar rule: single, pair, relation, count

    def render(self) -> np.ndarray:
        return render(self.background, self.shapes)

    def edges(self) -> np.ndarray:
        return canny_edges(self.render())


# ----------------------------------------------------------------------------- rendering
def shape_polygon(kind: str, cx: float, cy: float, r: float) -> np.ndarray | None:
    """Vertices (x, y) of a polygonal shape; None for a circle."""
    if kind == "square":
        h = 0.85 * r
        return np.array([(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)])
    if kind == "diamond":
        return np.array([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)])
    if kind == "triangle":  # equilateral, pointing up, centred on its bounding box
        half_h = 0.75 * r * 1.15
        half_w = half_h * 2 / np.sqrt(3)
        return np.array([(cx, cy - half_h), (cx + half_w, cy + half_h), (cx - half_w, cy + half_h)])
    if kind == "circle":
        return None
    raise ValueError(f"unknown shape {kind!r}")


def render(background: str, shapes: list[Shape], size: int = IMAGE_SIZE) -> np.ndarray:
    """uint8 RGB [size, size, 3], drawn at SUPERSAMPLE x and area-averaged (anti-aliased edges)."""
    s = SUPERSAMPLE * size / IMAGE_SIZE
    big = np.empty((size * SUPERSAMPLE, size * SUPERSAMPLE, 3), np.uint8)
    big[:] = COLOURS[background]
    for sh in shapes:
        colour = tuple(int(v) for v in COLOURS[sh.colour])
        poly = shape_polygon(sh.kind, sh.cx * s, sh.cy * s, sh.radius * s)
        if poly is None:
            cv2.circle(big, (int(round(sh.cx * s)), int(round(sh.cy * s))), int(round(sh.radius * s)), colour, -1)
        else:
            cv2.fillPoly(big, [np.round(poly).astype(np.int32)], colour)
    return cv2.resize(big, (size, size), interpolation=cv2.INTER_AREA)


def canny_edges(image: np.ndarray) -> np.ndarray:
    """The edge-map panel: Canny edges of an RGB image, white on black, RGB uint8."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    e = cv2.Canny(gray, 50, 120)
    return np.repeat(e[..., None], 3, axis=2)


# ----------------------------------------------------------------------------- scene sampling
def with_article(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def region_of(cx: float, cy: float) -> str:
    """The named region of a point: centre within 8 px of the middle, else the dominant direction."""
    dx, dy = cx - IMAGE_SIZE / 2, cy - IMAGE_SIZE / 2
    if max(abs(dx), abs(dy)) < IMAGE_SIZE / 8:
        return "centre"
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "top" if dy < 0 else "bottom"


class SceneSampler:
    """Draws scenes from a numpy Generator. `exclude_held_out=True` for training data."""

    def __init__(self, rng: np.random.Generator, exclude_held_out: bool = True):
        self.rng = rng
        self.exclude = exclude_held_out

    # --- building blocks
    def pick(self, options):
        return options[int(self.rng.integers(len(options)))]

    def _size(self, small_only: bool = False) -> str:
        return "small" if small_only else self.pick(tuple(SIZES))

    def _radius(self, size: str) -> float:
        return SIZES[size] + float(self.rng.uniform(-0.75, 0.75))

    def _background(self, shape_colours) -> str:
        return self.pick([c for c in COLOUR_NAMES if c not in set(shape_colours)])

    def _allowed(self, shapes) -> bool:
        return not (self.exclude and any(s.triple in HELD_OUT_SET for s in shapes))

    def _shape(self, kind, colour, size, cx, cy, radius: float | None = None) -> Shape:
        return Shape(kind, colour, size, cx, cy, radius or self._radius(size), region_of(cx, cy))

    def _jitter(self, v: float, amount: float) -> float:
        return v + float(self.rng.uniform(-amount, amount))

    # --- layouts
    def single_layout(self, kind, colour, region, size) -> list[Shape]:
        x, y = REGION_CENTRES[region]
        return [self._shape(kind, colour, size, self._jitter(x, 2), self._jitter(y, 2))]

    def line_layout(self, objects, axis: str) -> list[Shape]:
        """2 (any size) or 3 (small) shapes evenly spaced along 'x' (left to right) or 'y' (top to bottom)."""
        n = len(objects)
        stops = (16, 48) if n == 2 else (11, 32, 53)
        across = self._jitter(32, 3)
        out = []
        for (kind, colour), along in zip(objects, stops):
            a = self._jitter(along, 1.5 if n == 2 else 1)
            cx, cy = (a, across) if axis == "x" else (across, a)
            if n == 2:
                out.append(self._shape(kind, colour, self._size(), cx, cy))
            else:
                r = ROW_OF_THREE_RADIUS + float(self.rng.uniform(-0.5, 0.5))
                out.append(self._shape(kind, colour, "small", cx, cy, radius=r))
        return out

    # --- grammar
    def _colour_word(self, colour: str, p_drop: float) -> str:
        return "" if self.rng.random() < p_drop else colour + " "


    def _bg_phrase(self, bg: str, p_drop: float) -> tuple[str, str | None]:
        if self.rng.random() < p_drop:
            return "", None
        return f" on {with_article(bg)} background", bg

    def single(self, kind=None, colour=None, region=None, size=None, p_drop: float = 0.2) -> Scene:
        for _ in range(1000):
            k, c = kind or self.pick(SHAPES), colour or self.pick(COLOUR_NAMES)
            r, sz = region or self.pick(REGIONS), size or self._size()
            shapes = self.single_layout(k, c, r, sz)
            if self._allowed(shapes):
                break
        else:
            raise ValueError(f"no allowed single scene for {kind, colour, region}")
        bg = self._background([c])
        say_size = self.rng.random() >= 0.5
        say_colour = self.rng.random() >= p_drop
        say_region = self.rng.random() >= p_drop
        bg_text, bg_spec = self._bg_phrase(bg, p_drop)
        words = ([sz] if say_size else []) + ([c] if say_colour else []) + [k]
        text = with_article(" ".join(words)) + (" " + REGION_PHRASES[r] if say_region else "") + bg_text
        spec = Spec((ObjectSpec(k, c if say_colour else None, r if say_region else None,
                                sz if say_size else None),), background=bg_spec)
        return Scene(bg, shapes, text, spec, "single")

    def pair(self, p_drop: float = 0.2, relation: str | None = None) -> Scene:
        """Two different objects, either '<A> <relation> <B>' or '<A> and <B>'."""
        for _ in range(1000):
            (k1, c1), (k2, c2) = [(self.pick(SHAPES), self.pick(COLOUR_NAMES)) for _ in range(2)]
            if (k1, c1) == (k2, c2):
                continue
            rel = relation or (self.pick(tuple(RELATIONS)) if self.rng.random() < 0.6 else None)
            first_is_a = True
            if rel is None:
                axis = self.pick(("x", "y"))
                first_is_a = self.rng.random() < 0.5
            else:
                axis = "x" if rel in ("left of", "right of") else "y"
                first_is_a = rel in ("left of", "above")
            order = [(k1, c1), (k2, c2)] if first_is_a else [(k2, c2), (k1, c1)]
            shapes = self.line_layout(order, axis)
            if self._allowed(shapes):
                break
        else:
            raise ValueError("no allowed pair scene")
        bg = self._background([c1, c2])
        w1, w2 = self._colour_word(c1, p_drop), self._colour_word(c2, p_drop)
        bg_text, bg_spec = self._bg_phrase(bg, p_drop)
        joiner = RELATIONS[rel] if rel else "and"
        text = f"{with_article(w1 + k1)} {joiner} {with_article(w2 + k2)}{bg_text}"
        objs = (ObjectSpec(k1, c1 if w1 else None), ObjectSpec(k2, c2 if w2 else None))
        return Scene(bg, shapes, text, Spec(objs, rel, bg_spec), "relation" if rel else "pair")

    def count(self, n: int | None = None, p_drop: float = 0.2) -> Scene:
        n = n or self.pick((2, 3))
        for _ in range(1000):
            k, c = self.pick(SHAPES), self.pick(COLOUR_NAMES)
            shapes = self.line_layout([(k, c)] * n, self.pick(("x", "y")))
            if self._allowed(shapes):
                break
        else:
            raise ValueError("no allowed count scene")
        bg = self._background([c])
        w = self._colour_word(c, p_drop)
        bg_text, bg_spec = self._bg_phrase(bg, p_drop)
        text = f"{COUNT_WORDS[n]} {w}{k}s{bg_text}"
        return Scene(bg, shapes, text, Spec((ObjectSpec(k, c if w else None),) * n, None, bg_spec), "count")

    def any(self) -> Scene:
        """The training mix: single shapes most, then relations/pairs, then counts."""
        u = self.rng.random()
        if u < 0.5:
            return self.single()
        if u < 0.8:
            return self.pair()
        return self.count()


def step_rng(seed: int, step: int) -> np.random.Generator:
    """An independent, reproducible data stream for every (seed, training step)."""
    return np.random.default_rng([seed, step])


def training_scenes(seed: int, n: int) -> list[Scene]:
    rng = np.random.default_rng(seed)
    sampler = SceneSampler(rng, exclude_held_out=True)
    return [sampler.any() for _ in range(n)]


def held_out_prompts(backgrounds_per_triple: int = 2, seed: int = 7) -> list[tuple[str, Spec]]:
    """Fully specified single-shape prompts ('a red circle on the left on a blue background') whose
    (colour, shape, region) triple is held out of training, each on a few backgrounds."""
    rng = np.random.default_rng(seed)
    out = []
    for colour, kind, region in HELD_OUT:
        options = [c for c in COLOUR_NAMES if c != colour]
        for bg in rng.choice(options, size=backgrounds_per_triple, replace=False):
            text = f"{with_article(colour + ' ' + kind)} {REGION_PHRASES[region]} on {with_article(str(bg))} background"
            out.append((text, Spec((ObjectSpec(kind, colour, region),), background=str(bg))))
    return out
