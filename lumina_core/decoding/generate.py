"""The documented generation entry point: prompt (+ optional condition image) -> code grids -> pixels."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from . import rng
from ..errors import GenerationCancelled, InputError
from ..image.prep import prepare_condition, signed_to_unit_bhwc
from .logits import SamplingOptions
from .sampler import CancelFn, DecodeStats, ProgressFn, sample_plain
from ..layout import ImageLayout
from .tasks import PromptPlan, TaskSpec, build_prompt, get_task
from .threads import decode_threads
from ..model.tokenizer import check_text


@dataclass
class GenerationResult:
    codes: torch.Tensor            # [B, h_lat, w_lat] the whole canvas (given condition rows included)
    layout: ImageLayout
    task: TaskSpec
    seeds: list[int]
    prompt: str                    # the rendered prompt text
    stats: DecodeStats = field(default_factory=DecodeStats)

    def panel_codes(self, panel: str | None = None) -> torch.Tensor:
        """Codes of 'full', 'upper', 'lower' or (default) the task's output panel."""
        return crop_codes(self.codes, panel or self.task.output_panel)


def crop_codes(codes: torch.Tensor, panel: str) -> torch.Tensor:
    h = codes.shape[-2]
    if panel == "full":
        return codes
    if panel == "upper":
        return codes[..., : h // 2, :]
    if panel == "lower":
        return codes[..., h // 2:, :]
    raise InputError(f"panel must be 'full', 'upper' or 'lower', got {panel!r}")


def canvas_size(task: str | TaskSpec, width: int, height: int) -> tuple[int, int]:
    """Canvas size for an output panel of width x height (dual-panel tasks stack two panels)."""
    spec = get_task(task) if isinstance(task, str) else task
    return (width, height * 2) if spec.dual_panel else (width, height)


def encode_condition(image_tokenizer, image, width: int, height: int) -> torch.Tensor:
    """A condition image (PIL or [H,W,C]/[1,H,W,C] 0..1 tensor) -> codes [1, height/f, width/f]."""
    if image_tokenizer is None:
        raise InputError("a condition image needs the MoVQGAN image tokenizer to encode it")
    pixels = prepare_condition(image, width, height)
    return image_tokenizer.encode(pixels)


def plan_request(model, prompt: str, width: int, height: int, task="t2i", *, tokenizer=None,
                 condition_codes=None, condition_image=None, image_tokenizer=None,
                 subject_description: str | None = None) -> PromptPlan:
    tok = tokenizer or getattr(model, "tokenizer", None)
    if tok is None:
        raise InputError("no text tokenizer: load the checkpoint folder with its tokenizer.json, or pass tokenizer=")
    spec = get_task(task) if isinstance(task, str) else task
    check_text(prompt)  # here, so the position is the user's own (the template wraps the prompt in more text)
    if subject_description is not None:
        check_text(subject_description, "the subject description")
    if condition_image is not None:
        if condition_codes is not None:
            raise InputError("pass either condition_image or condition_codes, not both")
        condition_codes = encode_condition(image_tokenizer, condition_image, width, height // 2)
    if condition_codes is not None and image_tokenizer is not None \
            and tok.special.num_image_codes != image_tokenizer.num_codes:
        raise InputError(f"the image tokenizer has {image_tokenizer.num_codes} codes but the model expects "
                         f"{tok.special.num_image_codes}; use the MoVQGAN that belongs to this checkpoint.")
    return build_prompt(tok, spec, prompt, width, height, condition_codes=condition_codes,
                        max_positions=model.config.max_position_embeddings,
                        subject_description=subject_description)


def sampling_and_seeds(sampling: SamplingOptions | None, seeds, seed: int, batch_size: int,
                       **loose) -> tuple[SamplingOptions, list[int]]:
    """The checked sampling options (`sampling`, else built from the loose keywords) and each image's seed
    (`seeds`, else seed, seed+1, ... for batch_size images)."""
    opts = (sampling or SamplingOptions(**loose)).validated()
    if seeds is None:
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        seeds = rng.seed_sequence(seed, batch_size)
    return opts, seeds


def generate(model, prompt: str, width: int = 768, height: int = 768, *, task: str = "t2i",
             seed: int = 0, batch_size: int = 1, seeds: list[int] | None = None,
             cfg: float = 4.0, top_k: int = 4096, temperature: float = 1.0, top_p: float = 1.0,
             top_n_sigma: float = 0.0, cfg_mode: str = "plain", guidance_top_k: int = 0,
             sampling: SamplingOptions | None = None, condition_image=None, condition_codes=None, image_tokenizer=None, tokenizer=None,
             subject_description: str | None = None, decoder=None,
             progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> GenerationResult:
    """Generate image codes.

    width/height: the image block (for dual-panel tasks the whole canvas; see `canvas_size`).
    seed/batch_size: image i uses seed + i (or pass `seeds`). `sampling` overrides the loose options.
    decoder: None for plain decoding, or a decoding strategy object with a `.sample(...)` method
    (e.g. `SJDecoder`), called with the same arguments as `sample_plain`.
    """
    opts, seeds = sampling_and_seeds(sampling, seeds, seed, batch_size, cfg=cfg, top_k=top_k,
                                     temperature=temperature, top_p=top_p, top_n_sigma=top_n_sigma,
                                     cfg_mode=cfg_mode, guidance_top_k=guidance_top_k)
    plan = plan_request(model, prompt, width, height, task, tokenizer=tokenizer, condition_codes=condition_codes,
                        condition_image=condition_image, image_tokenizer=image_tokenizer,
                        subject_description=subject_description)
    special = (tokenizer or model.tokenizer).special
    tokens_per_forward = len(seeds) * (2 if opts.uses_cfg else 1) * getattr(decoder, "window", 1)
    with decode_threads(model, tokens_per_forward):
        if decoder is None:
            gen, stats = sample_plain(model, plan, special, seeds, opts, progress, cancel)
        else:
            gen, stats = decoder.sample(model, plan, special, seeds, opts, progress, cancel)
    codes = gen
    if plan.layout.prefix_rows:
        prefix = torch.tensor(plan.cond_ids[len(plan.cond_ids) - plan.layout.prefix_rows * (plan.layout.w_lat + 1):],
                              dtype=torch.long, device=gen.device).view(plan.layout.prefix_rows, -1)[:, :-1]
        prefix = (prefix - special.image_code_start).expand(len(seeds), -1, -1)
        codes = torch.cat([prefix, gen], dim=1)
    return GenerationResult(codes=codes.cpu(), layout=plan.layout, task=plan.task, seeds=list(seeds),
                            prompt=plan.text, stats=stats)


def decode_images(image_tokenizer, codes: torch.Tensor, batch: int = 4,
                  progress: Callable[[int, int], None] | None = None, cancel: CancelFn | None = None,
                  panels: int = 1) -> torch.Tensor:
    """codes [B, h, w] -> IMAGE [B, H, W, 3] float32 in 0..1 (decoded in chunks of `batch`).
    progress(images done, total) after each chunk; cancel() is asked before each (True -> GenerationCancelled).

    panels=2: a dual-panel canvas, decoded as its two panels (upper, lower), one after the other, then
    stacked. The MoVQGAN decoder's group norms and attention see the whole code grid at once, so in one
    pass the two unrelated panels share their statistics: a plain given panel (the white-on-black edge
    map, a white background) takes on the other panel's colours. Each panel alone decodes as the image
    it is, as when it was encoded."""
    if codes.shape[-2] % panels:
        raise InputError(f"{codes.shape[-2]} code rows do not split into {panels} panels")
    outs = []
    with torch.inference_mode():
        for i in range(0, codes.shape[0], batch):
            if cancel is not None and cancel():
                raise GenerationCancelled(f"decoding stopped after {i} of {codes.shape[0]} images")
            parts = codes[i:i + batch].chunk(panels, dim=-2)
            outs.append(torch.cat([signed_to_unit_bhwc(image_tokenizer.decode(p)).cpu() for p in parts], dim=1))
            if progress is not None:
                progress(min(i + batch, codes.shape[0]), codes.shape[0])
    return torch.cat(outs, 0)
