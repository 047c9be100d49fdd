"""Best-of-N: sample N candidates, score each, keep the best.

Candidate i uses seed + i; since an image depends only on its own seed (rng.py), any candidate can be
regenerated alone with `generate(..., seed=seed + i)`. Candidates run in chunks that fit in memory:
the KV cache grows with every image in a batch, so the chunk size comes from the cache size per image
and the free memory (CUDA: torch.cuda.mem_get_info; CPU: a given budget, else half the free RAM).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import torch

from . import rng
from ..errors import InputError
from .fast import FastPlain
from .generate import (crop_codes, decode_images, encode_condition, generate, plan_request, prompt_rows,
                       sampling_and_seeds, with_kept_rows)
from .kept_rows import as_images
from .pruning import canvas_codes, check_pruning, check_pruning_runs_here, prune_candidates
from .threads import decode_threads
from ..memory.host_ram import available_ram
from ..memory.kv_cache import KVCache
from .sampler import CancelFn, DecodeStats, ProgressFn
from .scorers import LikelihoodScorer
from .sjd import SJDecoder
from ..layout import ImageLayout
from .tasks import TaskSpec

# generate()'s sampling keywords, for SamplingOptions when best_of_n paints candidates itself (pruning)
LOOSE_SAMPLING = ("cfg", "top_k", "temperature", "top_p", "top_n_sigma", "cfg_mode", "guidance_top_k")
RESERVE_BYTES = 512 * 2**20   # kept free for the prefill, the MoVQGAN decode and allocator slack
WORKSPACE_COPIES = 8          # float32 [rows, T, codes] tensors alive during one step (logits, p, q, noise...)


@dataclass
class BestOfNResult:
    codes: torch.Tensor            # [n, h_lat, w_lat] every candidate's whole canvas (pruning: the kept ones')
    scores: torch.Tensor           # [n] higher is better
    seeds: list[int]               # candidate i used seeds[i] = seed + i (pruning: the kept candidates' seeds)
    best_index: int
    chunk_size: int
    layout: ImageLayout
    task: TaskSpec
    images: torch.Tensor | None = None   # decoded output panels [n, H, W, 3] when the scorer needed them
    stats: list[DecodeStats] = field(default_factory=list)   # one per chunk
    # early pruning (pruning.py): every candidate's score after the first rows (candidate i: seed + i), the
    # indices of those kept, and the forwards each candidate took
    partial_scores: torch.Tensor | None = None
    kept: list[int] | None = None
    image_forwards: list[int] | None = None

    @property
    def best_codes(self) -> torch.Tensor:
        return self.codes[self.best_index:self.best_index + 1]

    @property
    def best_seed(self) -> int:
        return self.seeds[self.best_index]

    def panel_codes(self, panel: str | None = None) -> torch.Tensor:
        return crop_codes(self.codes, panel or self.task.output_panel)


def bytes_per_image(model, max_len: int, use_cfg: bool, tokens_per_step: int) -> int:
    """Memory one more image in the batch costs: its KV rows plus per-step float32 workspace."""
    rows = 2 if use_cfg else 1
    fmt = getattr(model, "kv_cache_format", None) or "bf16"  # the int8 cache fits about twice the images
    kv = KVCache.estimate_bytes(model.config, rows, max_len, model.compute_dtype, fmt)
    n_codes = model.tokenizer.special.num_image_codes if model.tokenizer is not None else model.config.vocab_size
    return kv + WORKSPACE_COPIES * rows * tokens_per_step * n_codes * 4


def free_bytes(device: torch.device, memory_budget: int | None = None) -> int:
    if memory_budget is not None:
        return int(memory_budget)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(0.9 * (free + cached))
    return int(0.5 * available_ram())


def chunk_size_for(model, max_len: int, use_cfg: bool, tokens_per_step: int, n: int,
                   memory_budget: int | None = None) -> int:
    """How many candidates fit in one batch (at least 1, at most n)."""
    budget = free_bytes(model.device, memory_budget) - RESERVE_BYTES
    return max(1, min(n, budget // bytes_per_image(model, max_len, use_cfg, tokens_per_step)))


def best_of_n(model, prompt: str, width: int = 768, height: int = 768, *, n: int = 4, seed: int = 0,
              scorer=None, chunk_size: int | None = None, memory_budget: int | None = None,
              image_tokenizer=None, decoder=None, task: str = "t2i", condition_image=None,
              condition_codes=None, prefix_codes=None, keep_rows: int | None = None, prune_after_rows: int = 0,
              keep: int | None = None, progress: ProgressFn | None = None, cancel: CancelFn | None = None,
              generate_fn=None, chunk_size_fn=None, **generate_kwargs) -> BestOfNResult:
    """Generate n candidates (seeds seed..seed+n-1), score them with `scorer` (default: the model's own
    likelihood) and return all of them with their scores and the best index.

    chunk_size: candidates per batch; None picks the largest that fits `memory_budget` bytes (default:
    the free GPU memory, or half the free RAM on CPU). Other keywords go to `generate` (cfg, top_k, ...).
    image_tokenizer: the MoVQGAN; needed for condition images and for scorers that look at images.
    prefix_codes / keep_rows: every candidate keeps these rows (one image's; see `generate`).
    prune_after_rows r > 0: early pruning (pruning.py): every candidate is painted to row r, scored there, and
    only the `keep` best (default 1) are finished and scored again; the result holds those (their seeds, in
    seed order), with every candidate's partial score. With an SJD decoder the first rows are painted plainly
    (the same survivors) and SJD finishes each survivor from its first rows (generate with kept rows).
    generate_fn / chunk_size_fn: how candidates are generated (default `generate` on `model`) and how many fit at
    once (default `chunk_size_for(model, max_len, use_cfg, window, n)`): a tensor-parallel worker group passes
    its own, so scoring and selection are the same code everywhere.
    """
    if n < 1:
        raise InputError(f"best-of-N needs n >= 1 candidates, got {n}")
    scorer = scorer or LikelihoodScorer()
    if scorer.needs_images and image_tokenizer is None:
        raise InputError(f"the {scorer.name} scorer looks at images: pass image_tokenizer (the MoVQGAN)")
    if condition_image is not None:  # encode once, not once per chunk
        if condition_codes is not None:
            raise InputError("pass either condition_image or condition_codes, not both")
        condition_codes = encode_condition(image_tokenizer, condition_image, width, height // 2)
    if prefix_codes is not None and as_images(prefix_codes).shape[0] != 1:
        raise InputError(f"best-of-N paints every candidate from the same kept rows, but rows of "
                         f"{as_images(prefix_codes).shape[0]} images were given: pick one image to start from.")
    plan = plan_request(model, prompt, width, height, task, tokenizer=generate_kwargs.get("tokenizer"),
                        condition_codes=condition_codes, image_tokenizer=image_tokenizer,
                        subject_description=generate_kwargs.get("subject_description"), prefix_codes=prefix_codes,
                        keep_rows=keep_rows)
    opts_cfg = generate_kwargs["sampling"].cfg if generate_kwargs.get("sampling") else generate_kwargs.get("cfg", 4.0)
    window = getattr(decoder, "tokens_per_forward", 2)  # SJD: its window or draft tree ("auto": the most it picks)
    if chunk_size is not None and chunk_size < 1:
        raise InputError(f"chunk_size must be >= 1, got {chunk_size}")
    fit = chunk_size_fn or partial(chunk_size_for, model, memory_budget=memory_budget)
    seeds = rng.seed_sequence(seed, n)
    if prune_after_rows:
        keep = check_pruning(plan, n, keep, prune_after_rows)
        check_pruning_runs_here(on_workers=generate_fn is not None)
        if decoder is not None and not isinstance(decoder, (FastPlain, SJDecoder)):
            raise InputError("early pruning paints with plain decoding or SJDecoder: pass one of those as the "
                             "decoder, or set prune_after_rows to 0.")
        finish = None
        if isinstance(decoder, SJDecoder):  # SJD finishes the survivors

            def finish(first_rows, chunk_seeds, chunk_progress, chunk_cancel):
                rows = first_rows
                if plan.kept_rows:  # the user's kept rows stay on top
                    special = (generate_kwargs.get("tokenizer") or model.tokenizer).special
                    given = prompt_rows(plan, special)[plan.layout.prefix_rows - plan.kept_rows:].cpu()
                    rows = torch.cat([given.expand(first_rows.shape[0], -1, -1), first_rows], 1)
                return generate(model, prompt, width, height, task=task, seeds=chunk_seeds, decoder=decoder,
                                condition_codes=condition_codes, prefix_codes=rows, keep_rows=rows.shape[1],
                                image_tokenizer=image_tokenizer, progress=chunk_progress, cancel=chunk_cancel,
                                **generate_kwargs)
        return _pruned(model, plan, prompt, seeds, scorer, keep, prune_after_rows, chunk_size, fit,
                       opts_cfg != 1.0, image_tokenizer, decoder, finish, progress, cancel, generate_kwargs)
    if chunk_size is None:
        chunk_size = fit(plan.total_tokens + window, opts_cfg != 1.0, window, n)
    run = generate_fn or partial(generate, model)
    chunks = [seeds[a:a + chunk_size] for a in range(0, n, chunk_size)]
    codes, scores, images, stats = [], [], [], []
    for index, chunk in enumerate(chunks):
        def chunk_progress(rows, total, so_far, _offset=index):
            if progress is not None:
                progress(_offset * total + rows, len(chunks) * total, so_far)
        res = run(prompt, width, height, task=task, seeds=chunk, decoder=decoder, condition_codes=condition_codes,
                  prefix_codes=prefix_codes, keep_rows=keep_rows, image_tokenizer=image_tokenizer,
                  progress=chunk_progress, cancel=cancel, **generate_kwargs)
        panels = decode_images(image_tokenizer, res.panel_codes()) if scorer.needs_images else None
        scores.append(scorer.score(prompt, res, panels).float().cpu())
        codes.append(res.codes)
        stats.append(res.stats)
        if panels is not None:
            images.append(panels)
    all_scores = torch.cat(scores)
    return BestOfNResult(codes=torch.cat(codes), scores=all_scores, seeds=seeds,
                         best_index=int(all_scores.argmax()), chunk_size=chunk_size, layout=plan.layout,
                         task=plan.task, images=torch.cat(images) if images else None, stats=stats)


def pruned_chunk_sizes(fit, partial_len: int, full_len: int, n: int, keep: int, use_cfg: bool) -> tuple[int, int]:
    """Candidates at once in each phase of pruning, counting what stays alive beside each chunk: while a first-
    phase chunk is joined to the best so far, the old and the new pool of `keep` partial caches; in the second
    phase, the `keep` partial caches the chunks are taken from (counted as whole images of their length)."""
    pool = 2 * keep
    first = max(1, min(n, fit(partial_len, use_cfg, 2, n + pool) - pool))
    held = -(-keep * partial_len // full_len)
    rest = max(1, min(keep, fit(full_len, use_cfg, 2, keep + held) - held))
    return first, rest


def _pruned(model, plan, prompt, seeds, scorer, keep, after_rows, chunk_size, chunk_size_fn, use_cfg,
            image_tokenizer, decoder, finish, progress, cancel, generate_kwargs) -> BestOfNResult:
    """best_of_n with early pruning: the candidates' first rows in caches that hold only those rows, the survivors
    in caches for the whole image (each phase as many at once as fit). With `finish` (SJD) the survivors are
    painted from their first rows as kept rows, in caches of their own."""
    special = (generate_kwargs.get("tokenizer") or model.tokenizer).special
    opts, _ = sampling_and_seeds(generate_kwargs.get("sampling"), seeds, 0, len(seeds),
                                 **{k: v for k, v in generate_kwargs.items() if k in LOOSE_SAMPLING})
    lay, n = plan.layout, len(seeds)
    if chunk_size is None:
        first, rest = pruned_chunk_sizes(chunk_size_fn, len(plan.cond_ids) + after_rows * (lay.w_lat + 1) + 2,
                                         plan.total_tokens + 2, n, keep, use_cfg)
        if finish is not None:  # the partial caches are gone by then; SJD's windows need their room
            window = decoder.tokens_per_forward
            rest = max(1, min(keep, chunk_size_fn(plan.total_tokens + window, use_cfg, window, keep)))
    else:
        first, rest = min(n, chunk_size), min(keep, chunk_size)
    with decode_threads(model, first * (2 if use_cfg else 1)):
        out = prune_candidates(model, plan, special, seeds, opts, scorer=scorer, keep=keep, after_rows=after_rows,
                               prompt=prompt, chunk_first=first, chunk_rest=rest, image_tokenizer=image_tokenizer,
                               forward=decoder.runner if isinstance(decoder, FastPlain)
                               else getattr(decoder, "forward", None),
                               finish=finish, progress=with_kept_rows(progress, plan, special), cancel=cancel)
    codes = canvas_codes(plan, special, out.codes)
    return BestOfNResult(codes=codes, scores=out.scores, seeds=out.seeds, best_index=int(out.scores.argmax()),
                         chunk_size=first, layout=lay, task=plan.task, images=out.images, stats=out.stats,
                         partial_scores=out.partial_scores, kept=out.kept, image_forwards=out.image_forwards)
