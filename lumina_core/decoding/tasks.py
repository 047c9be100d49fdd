"""Task templates and token-sequence layouts, in one place.

Every task is one image block after the prompt:
    <racm3:break> <grid H/32> <grid W/32> (codes of a row, <row end>) x H/8 <eoss>
Dual-panel tasks use a double-height canvas; the condition (if any) is the upper half and is part
of the prompt, so the model generates only the lower half. The grid tokens are always appended by
us (upstream lets the model sample them, which breaks sizes other than 768, issue #11).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError
from ..layout import SIZE_MULTIPLE, ImageLayout, check_size, largest_square_that_fits
from .kept_rows import check_kept_rows

T2I_TEMPLATE = "Generate an image of {w}x{h} according to the following prompt:\n{prompt}"
LOWER_IS_X = ("Generate a dual-panel image of {w}x{h} where the <lower half> displays a <{x}>, while the "
              "<upper half> retains the original image for direct visual comparison:\n{prompt}")
UPPER_IS_X = ("Generate a dual-panel image of {w}x{h} where the <upper half> displays a <{x}>, while the "
              "<lower half> retains the original image for direct visual comparison:\n{prompt}")
# No editing template is published; this follows the dual-panel pattern and is UNVERIFIED.
EDIT_TEMPLATE = ("Generate a dual-panel image of {w}x{h} where the <lower half> shows the <upper half> edited "
                 "according to the following instruction:\n{prompt}")

MAPS = {"depth": "depth map", "canny": "canny edge map", "hed": "hed edge map", "pose": "pose estimation map"}
# Upstream's subject task puts a description of the reference subject inside <...>; this is its demo value.
DEFAULT_SUBJECT_DESCRIPTION = "Bubbly and effervescent with a sparkling allure."


@dataclass(frozen=True)
class TaskSpec:
    name: str
    template: str
    dual_panel: bool
    needs_condition: bool      # the upper half is given (encoded condition image)
    map_kind: str | None = None
    verified: bool = True      # False: no upstream template exists, ours is a best guess
    description: str = ""

    @property
    def output_panel(self) -> str:
        """Which part of the canvas is the task's result: 'full', 'upper' or 'lower'."""
        if not self.dual_panel:
            return "full"
        return "lower" if self.needs_condition else "upper"

    @property
    def generated_panel(self) -> str:
        """The part of the canvas the model paints, where kept rows start: 'lower' (below a given condition
        panel) or 'full' (t2i, and pair_* tasks, which paint the image and then its map)."""
        return "lower" if self.dual_panel and self.needs_condition else "full"


def _tasks() -> dict[str, TaskSpec]:
    out = {"t2i": TaskSpec("t2i", T2I_TEMPLATE, False, False, description="text to image")}
    for key, label in MAPS.items():
        out[f"pair_{key}"] = TaskSpec(f"pair_{key}", LOWER_IS_X, True, False, label,
                                      description=f"text to an image (upper half) and its {label} (lower half)")
    for key in ("depth", "canny"):
        out[f"control_{key}"] = TaskSpec(f"control_{key}", UPPER_IS_X, True, True, MAPS[key],
                                         description=f"{MAPS[key]} (upper half, given) to an image")
    for key in ("hed", "pose"):
        out[f"control_{key}"] = TaskSpec(f"control_{key}", UPPER_IS_X, True, True, MAPS[key], verified=False,
                                         description=f"{MAPS[key]} (given) to an image; not in upstream's release")
    out["subject"] = TaskSpec("subject", UPPER_IS_X, True, True, None,
                              description="subject reference (upper half, given) to a new image of it")
    for key, label in MAPS.items():
        out[f"dense_{key}"] = TaskSpec(f"dense_{key}", LOWER_IS_X, True, True, label, verified=(key in ("depth", "canny")),
                                       description=f"image (upper half, given) to its {label}")
    out["edit"] = TaskSpec("edit", EDIT_TEMPLATE, True, True, None, verified=False,
                           description="image (upper half, given) edited by an instruction; template unverified")
    return out


TASKS = _tasks()


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise InputError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}") from None


def render_prompt(task: TaskSpec, prompt: str, width: int, height: int, subject_description: str | None = None) -> str:
    x = task.map_kind
    if task.name == "subject":
        x = subject_description or DEFAULT_SUBJECT_DESCRIPTION
    return task.template.format(w=width, h=height, x=x, prompt=prompt)


def _panel_text(spec: TaskSpec, width: int, height: int) -> str:
    """A size as the user typed it: the panel for dual-panel tasks."""
    return f"{width}x{height // 2} panel ({width}x{height} canvas)" if spec.dual_panel else f"{width}x{height} image"


def check_grid(tokenizer, spec: TaskSpec, width: int, height: int) -> None:
    """The grid tokens name the canvas size in 32-px units; a checkpoint has them only up to some size."""
    top = tokenizer.max_grid_units()
    if max(width, height) // SIZE_MULTIPLE <= top:
        return
    if top == 0:
        raise InputError("this checkpoint's tokenizer has no grid tokens (<reserved08801>, ...), so it cannot "
                         "express any image size; use the tokenizer.json shipped with the checkpoint.")
    side = top * SIZE_MULTIPLE
    if spec.dual_panel:
        most = f"panels of up to {side} px wide and {top // 2 * SIZE_MULTIPLE} px high (the canvas is two panels tall)"
    else:
        most = f"images of up to {side}x{side} px"
    raise InputError(f"a {_panel_text(spec, width, height)} is larger than this checkpoint can express: its grid "
                     f"tokens go up to {top} x {SIZE_MULTIPLE} px, so it makes {most}. Use a smaller width and "
                     "height.")


def _context_error(tokenizer, spec: TaskSpec, prompt: str, width: int, height: int, max_positions: int,
                   factor: int, subject_description: str | None, plan: "PromptPlan") -> InputError:
    """What to change when prompt + image exceed the model's positions, in the units the user typed."""
    def prompt_tokens(w: int, h: int, text: str = prompt) -> int:  # BOS, rendered template + prompt, separator
        return len(tokenizer.encode(render_prompt(spec, text, w, h, subject_description))) + 2

    panels = 2 if spec.dual_panel else 1
    image = plan.layout.block_tokens
    excess = plan.total_tokens - max_positions
    template = prompt_tokens(width, height, "")
    own = len(plan.cond_ids) - len(plan.uncond_ids) - template  # the user's prompt, about (pieces may merge)
    longest = own - excess                                      # the longest own prompt that fits at this size
    need = (f"the {_panel_text(spec, width, height)} takes {image} tokens, the task's template {template} and the "
            f"prompt about {own}: {plan.total_tokens} positions, {excess} more than the model's {max_positions}")
    # smaller squares, largest first, each with the prompt as it would be rendered at that size
    side = None
    top = min(tokenizer.max_grid_units() // panels,
              (largest_square_that_fits(max_positions, factor, panels) or 0) // SIZE_MULTIPLE)
    for units in range(top, 0, -1):
        s = units * SIZE_MULTIPLE
        if ImageLayout(s, s * panels, factor).block_tokens + prompt_tokens(s, s * panels) <= max_positions:
            side = s
            break
    square = f"{side}x{side}" + (" per panel" if spec.dual_panel else "")
    if longest > 0 and side is not None:
        return InputError(f"the prompt is too long for this size: {need}. Shorten the prompt by {excess} tokens (at most "
                          f"about {longest} fit at this size) or use a smaller size (up to about {square} fits "
                          "with this prompt).")
    if longest > 0:
        return InputError(f"the prompt is too long: {need}. Shorten it by at least {excess} tokens: at most about "
                          f"{longest} tokens fit at this size, and no smaller size fits this prompt.")
    if side is not None:
        return InputError(f"the size is too large for the model: {need}. Use a smaller size (up to about {square} "
                          "fits with this prompt).")
    return InputError(f"the size is too large for the model and the prompt too long for any size: {need}. Use a "
                      "smaller size and a shorter prompt.")


@dataclass
class PromptPlan:
    """Everything a sampler needs: the two token streams and the geometry."""
    task: TaskSpec
    layout: ImageLayout
    cond_ids: list[int]     # BOS, prompt, separator, image start, grid tokens, condition rows, kept rows
    uncond_ids: list[int]   # image start, grid tokens, condition rows, kept rows (text dropped, images kept)
    text: str
    kept_rows: int = 0      # rows of the painted part given in the prompt (kept_rows.py); in layout.prefix_rows

    @property
    def total_tokens(self) -> int:
        return len(self.cond_ids) + self.layout.generated_tokens


def image_rows_to_ids(codes: torch.Tensor, special) -> list[int]:
    """codes [h, w] -> token ids with a row end after each row."""
    if codes.ndim != 2:
        raise InputError(f"condition codes must be [h, w], got {tuple(codes.shape)}")
    ids = codes.detach().long().cpu() + special.image_code_start  # codes may come from a GPU MoVQGAN
    rows = torch.cat([ids, torch.full((ids.shape[0], 1), special.row_end, dtype=torch.long)], dim=1)
    return rows.flatten().tolist()


def build_prompt(tokenizer, task: str | TaskSpec, prompt: str, width: int, height: int, *,
                 condition_codes: torch.Tensor | None = None, max_positions: int | None = None,
                 factor: int = 8, subject_description: str | None = None, prefix_codes: torch.Tensor | None = None,
                 keep_rows: int | None = None) -> PromptPlan:
    """Token streams for one request. For dual-panel tasks `width`/`height` are the canvas size
    (the condition / each panel is width x height/2). prefix_codes [rows, w] (or [1, rows, w]): the top of the
    part the task paints, of which the first `keep_rows` (None: all) go into the prompt (kept_rows.py)."""
    spec = get_task(task) if isinstance(task, str) else task
    check_size(width, height, "canvas" if spec.dual_panel else "image")
    if spec.dual_panel and (height // 2) % SIZE_MULTIPLE:
        raise InputError(f"dual-panel canvas height {height} must be a multiple of {2 * SIZE_MULTIPLE} so each "
                         f"panel is a multiple of {SIZE_MULTIPLE}; try {height - height % 64 or 64} or "
                         f"{height - height % 64 + 64}.")
    check_grid(tokenizer, spec, width, height)
    sp = tokenizer.special
    layout = ImageLayout(width, height, factor)
    head = [sp.image_start, tokenizer.grid_token(height // SIZE_MULTIPLE), tokenizer.grid_token(width // SIZE_MULTIPLE)]
    prefix: list[int] = []
    if spec.needs_condition:
        if condition_codes is None:
            raise InputError(f"task {spec.name!r} needs a condition image (encode it with the image tokenizer first).")
        cc = condition_codes
        if cc.ndim == 3:
            if cc.shape[0] != 1:
                raise InputError("pass one condition image per request (codes [1, h, w] or [h, w]).")
            cc = cc[0]
        want = (height // 2 // factor, width // factor)
        if tuple(cc.shape) != want:
            raise InputError(f"condition codes are {tuple(cc.shape)} (h, w) but a {width}x{height} canvas needs "
                             f"the upper panel as {want}: encode the condition at {width}x{height // 2} px.")
        if int(cc.min()) < 0 or int(cc.max()) >= sp.num_image_codes:
            raise InputError(f"condition codes must lie in [0, {sp.num_image_codes}); got a code of {int(cc.max())}. "
                             "Was it encoded with this model's image tokenizer?")
        prefix = image_rows_to_ids(cc, sp)
        layout = ImageLayout(width, height, factor, prefix_rows=want[0])
    elif condition_codes is not None:
        raise InputError(f"task {spec.name!r} generates from text only; remove the condition image or pick a "
                         "task that uses one (control_*, subject, dense_*, edit).")
    kept = 0
    if prefix_codes is not None:
        rows = check_kept_rows(prefix_codes, keep_rows, spec, w_lat=layout.w_lat, free_rows=layout.gen_rows,
                               factor=factor, num_codes=sp.num_image_codes)
        kept = rows.shape[0]
        prefix = prefix + image_rows_to_ids(rows, sp)
        layout = ImageLayout(width, height, factor, prefix_rows=layout.prefix_rows + kept)
    elif keep_rows is not None:
        raise InputError("keep_rows needs the rows to keep (prefix_codes)")
    text = render_prompt(spec, prompt, width, height, subject_description)
    cond = [sp.bos] + tokenizer.encode(text) + [sp.separator] + head + prefix
    plan = PromptPlan(spec, layout, cond, head + prefix, text, kept)
    if max_positions is not None and plan.total_tokens > max_positions:
        raise _context_error(tokenizer, spec, prompt, width, height, max_positions, factor, subject_description, plan)
    return plan
