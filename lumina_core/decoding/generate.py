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
from .kept_rows import group_by_prefix
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


def encode_image(image_tokenizer, image, width: int, height: int) -> torch.Tensor:
    """Any picture (PIL, or a [H,W,C]/[1,H,W,C] 0..1 tensor), scaled to cover width x height and cropped at the
    centre -> codes [1, height/f, width/f]: rows to keep with generate(prefix_codes=...)."""
    if image_tokenizer is None:
        raise InputError("a picture needs the MoVQGAN image tokenizer to encode it")
    return encode_condition(image_tokenizer, image, width, height)


def plan_request(model, prompt: str, width: int, height: int, task="t2i", *, tokenizer=None,
                 condition_codes=None, condition_image=None, image_tokenizer=None,
                 subject_description: str | None = None, prefix_codes=None, keep_rows: int | None = None) -> PromptPlan:
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
                        subject_description=subject_description, prefix_codes=prefix_codes, keep_rows=keep_rows)


def plan_each_prefix(model, prompt: str, width: int, height: int, task="t2i", *, prefix_codes=None,
                     keep_rows: int | None = None, n_images: int = 1, **plan_kw) -> list[tuple[PromptPlan, list[int]]]:
    """The prompt plan of every distinct set of kept rows in a batch of `n_images` ([(plan, its images)]; one
    plan for all without kept rows): every one checked before anything runs."""
    if prefix_codes is None:
        return [(plan_request(model, prompt, width, height, task, keep_rows=keep_rows, **plan_kw),
                 list(range(n_images)))]
    return [(plan_request(model, prompt, width, height, task, prefix_codes=rows, keep_rows=keep_rows, **plan_kw),
             members) for rows, members in group_by_prefix(prefix_codes, n_images, keep_rows)]


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
             subject_description: str | None = None, prefix_codes=None, keep_rows: int | None = None, decoder=None,
             progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> GenerationResult:
    """Generate image codes.

    width/height: the image block (for dual-panel tasks the whole canvas; see `canvas_size`).
    seed/batch_size: image i uses seed + i (or pass `seeds`). `sampling` overrides the loose options.
    prefix_codes [rows, w] or [1 or B, rows, w]: the top of the part the task paints (the image; the lower panel
    below a condition), of which the first `keep_rows` rows (None: all) are kept exactly, given in the prompt,
    and the rest painted (kept_rows.py); a canvas taller than the rows given extends them downward. Images
    that keep different rows run one prompt after another.
    decoder: None for plain decoding, or a decoding strategy object with a `.sample(...)` method
    (e.g. `SJDecoder`), called with the same arguments as `sample_plain`.
    progress(rows done, rows to paint, codes so far [B, kept + rows done, w]).
    """
    opts, seeds = sampling_and_seeds(sampling, seeds, seed, batch_size, cfg=cfg, top_k=top_k,
                                     temperature=temperature, top_p=top_p, top_n_sigma=top_n_sigma,
                                     cfg_mode=cfg_mode, guidance_top_k=guidance_top_k)
    if condition_image is not None:  # encoded once for every prompt below
        if condition_codes is not None:
            raise InputError("pass either condition_image or condition_codes, not both")
        condition_codes = encode_condition(image_tokenizer, condition_image, width, height // 2)
    plans = plan_each_prefix(model, prompt, width, height, task, tokenizer=tokenizer, condition_codes=condition_codes,
                             image_tokenizer=image_tokenizer, subject_description=subject_description,
                             prefix_codes=prefix_codes, keep_rows=keep_rows, n_images=len(seeds))
    special = (tokenizer or model.tokenizer).special
    results = []
    for index, (plan, members) in enumerate(plans):
        def group_progress(rows, total, so_far, _offset=index):
            if progress is not None:
                progress(_offset * total + rows, len(plans) * total, so_far)
        results.append(_generate_plan(model, plan, special, [seeds[i] for i in members], opts, decoder,
                                      group_progress if len(plans) > 1 else progress, cancel))
    if len(results) == 1:
        return results[0]
    return _in_image_order(results, [members for _, members in plans], seeds)


def _generate_plan(model, plan: PromptPlan, special, seeds: list[int], opts: SamplingOptions, decoder, progress,
                   cancel) -> GenerationResult:
    """One prompt's images: the rows it gives (condition, kept rows) and the rows sampled below them."""
    lay = plan.layout
    given = prompt_rows(plan, special) if lay.prefix_rows else None
    progress = with_kept_rows(progress, plan, special)
    tokens_per_forward = len(seeds) * (2 if opts.uses_cfg else 1) * getattr(decoder, "tokens_per_forward", 1)
    with decode_threads(model, tokens_per_forward):
        if decoder is None:
            gen, stats = sample_plain(model, plan, special, seeds, opts, progress, cancel)
        else:
            gen, stats = decoder.sample(model, plan, special, seeds, opts, progress, cancel)
    codes = gen
    if given is not None:
        codes = torch.cat([given.to(gen.device).expand(len(seeds), -1, -1), gen], dim=1)
    return GenerationResult(codes=codes.cpu(), layout=lay, task=plan.task, seeds=list(seeds), prompt=plan.text,
                            stats=stats)


def prompt_rows(plan: PromptPlan, special) -> torch.Tensor:
    """The canvas rows the prompt gives (a condition panel, kept rows) as codes [prefix_rows, w]."""
    lay = plan.layout
    ids = torch.tensor(plan.cond_ids[len(plan.cond_ids) - lay.prefix_rows * (lay.w_lat + 1):], dtype=torch.long)
    return ids.view(lay.prefix_rows, lay.w_lat + 1)[:, :-1] - special.image_code_start


def with_kept_rows(progress: ProgressFn | None, plan: PromptPlan, special) -> ProgressFn | None:
    """`progress` as the samplers call it (codes of the rows painted so far), handing on the kept rows above
    them too: what a preview shows is the picture so far."""
    if progress is None or not plan.kept_rows:
        return progress
    kept = prompt_rows(plan, special)[plan.layout.prefix_rows - plan.kept_rows:]

    def report(rows, total, so_far):
        progress(rows, total, torch.cat([kept.to(so_far.device).expand(so_far.shape[0], -1, -1), so_far], dim=1))
    return report


def _in_image_order(results: list[GenerationResult], members: list[list[int]], seeds: list[int]) -> GenerationResult:
    """Several prompts' results as one batch, image i where it was asked for."""
    order = torch.tensor([i for group in members for i in group]).argsort()
    stats = [r.stats for r in results]
    extra = {k: v for s in stats for k, v in s.extra.items() if k not in ("image_forwards", "codes_per_forward_hist")}
    hists = [s.extra["codes_per_forward_hist"] for s in stats if "codes_per_forward_hist" in s.extra]
    if hists:  # forwards that kept 0, 1, 2, ... codes, over every prompt
        extra["codes_per_forward_hist"] = [sum(h[i] for h in hists if i < len(h))
                                           for i in range(max(map(len, hists)))]
    per_image = [s.extra.get("image_forwards") for s in stats]
    if all(p is not None for p in per_image):  # SJD's forwards per image, in image order too
        flat = [f for p in per_image for f in p]
        extra["image_forwards"] = [flat[i] for i in order.tolist()]
    logprob = None
    if all(s.logprob is not None for s in stats):
        logprob = torch.cat([s.logprob.cpu() for s in stats])[order]
    merged = DecodeStats(forwards=sum(s.forwards for s in stats), image_tokens=stats[0].image_tokens,
                         prefill_tokens=sum(s.prefill_tokens for s in stats), seconds=sum(s.seconds for s in stats),
                         logprob=logprob, extra=extra, prompts=sum(s.prompts for s in stats))
    first = results[0]
    return GenerationResult(codes=torch.cat([r.codes for r in results])[order], layout=first.layout, task=first.task,
                            seeds=list(seeds), prompt=first.prompt, stats=merged)


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
