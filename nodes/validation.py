"""Input checks that run when a prompt is queued (failures come back as HTTP 400 with node_errors), and the
width/height widgets they check.

One problem, one error: ComfyUI files a failed validate_inputs under every input the method takes (a problem
with the width of a method taking five inputs was five errors, "task - image size must be..."), so each
node's validate_inputs takes only the inputs its checks read, and the executor's own checks do the rest: it
checks combo values itself on 0.33 (one error, under the input) and min/max for every input validate_inputs
does not take. ComfyUI 0.3.75 does not check V3 combos: there the nodes refuse a bad combo value when they run
(`require` in execute), with the same message. A widget fed by a link (e.g. one Int node driving the width of
the sampler and the condition encoder) reaches validate_inputs as None: its value only exists at run time,
so the checks pass it here and nodes repeat them in execute with `require`.

Float inputs: ComfyUI checks min/max only for inputs that validate_inputs does not take, and NaN passes
any comparison (`nan < 0` and `nan > 20` are both False), so a NaN cfg would run and then sit in
/history as bare NaN, which is not JSON. Every node therefore takes all its float inputs in
validate_inputs and checks them with `float_problems`, which reads the bounds from the node's schema. That is
why the Sampler's one size problem still comes back under width, height, cfg and temperature (the same
message four times, never under the other inputs): ComfyUI gives a node no way to name the input a problem is
about, and NaN can only be refused before it reaches /history there."""
from __future__ import annotations

import math

from comfy_api.latest import io

from ..lumina_core import InputError
from ..lumina_core.layout import SIZE_MULTIPLE, check_size

MAX_SIDE = 4096
DEFAULT_SIDE = 768  # the released model's native size


def size_inputs(what: str, hint: str) -> list:
    return [
        io.Int.Input(side, default=DEFAULT_SIDE, min=SIZE_MULTIPLE, max=MAX_SIDE, step=SIZE_MULTIPLE,
                     tooltip=f"{what} {side} in pixels, a multiple of {SIZE_MULTIPLE} ({hint}).")
        for side in ("width", "height")
    ]


def size_problem(width: int | None, height: int | None) -> str | None:
    """Why a size cannot be used, or None. (Sent back as a validation error before anything runs.)"""
    if width is None or height is None:  # linked: checked at run time
        return None
    if max(width, height) > MAX_SIDE:
        return f"width and height must be at most {MAX_SIDE}, got {width}x{height}"
    try:
        check_size(width, height)
    except InputError as e:
        return str(e)
    return None


def choice_problem(name: str, value, options) -> str | None:
    if value is None or value in options:  # None: linked, checked at run time
        return None
    listed = ", ".join(map(str, options)) or "nothing (see the tooltip for where files go)"
    return f"{name} {value!r} is not available; choose one of: {listed}"


def first_problem(*problems: str | None) -> bool | str:
    """validate_inputs' return value: True, or the first problem found."""
    return next((p for p in problems if p), True)


def require(*problems: str | bool | None) -> None:
    """The same checks at run time, when linked values are known: raise the first problem (also takes
    validate_inputs' own result, True or a problem)."""
    problem = first_problem(*(p for p in problems if p is not True))
    if problem is not True:
        raise InputError(problem)


def number_problem(name: str, value, low: float | None = None, high: float | None = None) -> str | None:
    """Why `value` is not a usable number for input `name` (NaN, an infinity, outside [low, high]), or None."""
    if value is None:  # linked: checked at run time
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{name} must be a number, got {value!r}"
    if math.isfinite(value) and (low is None or value >= low) and (high is None or value <= high):
        return None
    span = (f" between {low} and {high}" if low is not None and high is not None else
            f" of at least {low}" if low is not None else f" of at most {high}" if high is not None else "")
    return f"{name} must be a finite number{span}, got {value}"


def float_inputs(node: type[io.ComfyNode]) -> dict[str, tuple[float | None, float | None]]:
    """The node's float inputs and their (min, max), from its schema."""
    return {i.id: (i.min, i.max) for i in node.define_schema().inputs if isinstance(i, io.Float.Input)}


def float_problems(node: type[io.ComfyNode], **values) -> list[str | None]:
    """number_problem for each float input given by name, with the bounds the node's schema declares."""
    bounds = float_inputs(node)
    return [number_problem(name, value, *bounds[name]) for name, value in values.items()]
