"""The token geometry of an image block, shared by every room: how many code rows and columns an image of a
given size has, how many tokens its block takes (row ends, grid tokens, start and end), and which sizes the
grid tokens can express (multiples of 32 px).

    <racm3:break> <grid H/32> <grid W/32> (codes of a row, <row end>) x H/8 <eoss>
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import InputError

SIZE_MULTIPLE = 32  # grid tokens count 32-px units


@dataclass(frozen=True)
class ImageLayout:
    """Geometry of one image block (the whole canvas for dual-panel tasks)."""
    width: int
    height: int
    factor: int = 8
    prefix_rows: int = 0  # latent rows given in the prompt (the condition half)

    @property
    def w_lat(self) -> int:
        return self.width // self.factor

    @property
    def h_lat(self) -> int:
        return self.height // self.factor

    @property
    def gen_rows(self) -> int:
        return self.h_lat - self.prefix_rows

    @property
    def block_tokens(self) -> int:
        """Tokens of the whole block: start, 2 grid tokens, rows with row ends, end."""
        return self.h_lat * (self.w_lat + 1) + 4

    @property
    def generated_tokens(self) -> int:
        """Tokens produced after the prompt (generated rows with row ends, plus the end token)."""
        return self.gen_rows * (self.w_lat + 1) + 1


def check_size(width: int, height: int, what: str = "image") -> None:
    bad = [f"{n}={v}" for n, v in (("width", width), ("height", height)) if v <= 0 or v % SIZE_MULTIPLE]
    if bad:
        def near(v):
            if v <= 0:
                return str(SIZE_MULTIPLE)
            lo = max(SIZE_MULTIPLE, v - v % SIZE_MULTIPLE)
            return f"{lo} or {lo + SIZE_MULTIPLE}" if v % SIZE_MULTIPLE else str(v)
        raise InputError(f"{what} size must be a positive multiple of {SIZE_MULTIPLE} px, got {', '.join(bad)}; "
                         f"try width {near(width)} and height {near(height)}.")


def largest_square_that_fits(budget_tokens: int, factor: int = 8, panels: int = 1) -> int | None:
    """The largest square (panel side, a multiple of 32) whose image block takes at most `budget_tokens`
    (`panels` stacked panels), or None if not even 32x32 does."""
    side = None
    while True:
        nxt = (side or 0) + SIZE_MULTIPLE
        if ImageLayout(nxt, nxt * panels, factor).block_tokens > budget_tokens:
            return side
        side = nxt
