"""Best-of-N: sample N candidates, score each, keep the best.

Candidate i uses seed + i; since an image depends only on its own seed (rng.py), any candidate can be
regenerated alone with `generate(..., seed=seed + i)`. Candidates run in chunks that fit in memory:
the KV cache grows with every image in a batch, so the chunk size comes from the cache size per image
and the free memory (CUDA: torch.cuda.mem_get_info; CPU: a given budget, else half the free RAM).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import partial

import torch

from . import rng
from ..errors import InputError
from .generate import crop_codes, decode_images, encode_condition, generate, plan_request
from ..memory.kv_cache import KVCache
from .sampler import CancelFn, DecodeStats, ProgressFn
from .scorers import LikelihoodScorer
from ..layout import ImageLayout
from .tasks import TaskSpec

RESERVE_BYTES = 512 * 2**20   # kept free for the prefill, the MoVQGAN decode and allocator slack
WORKSPACE_COPIES = 8          # float32 [rows, T, codes] tensors alive during one step (logits, p, q, noise...)


@dataclass
class BestOfNResult:
    codes: torch.Tensor            # [n, h_lat, w_lat] every candidate's whole canvas
    scores: torch.Tensor           # [n] higher is better
    seeds: list[int]               # candidate i used seeds[i] = seed + i
    best_index: int
    chunk_size: int
    layout: ImageLayout
    task: TaskSpec
    images: torch.Tensor | None = None   # decoded output panels [n, H, W, 3] when the scorer needed them
    stats: list[DecodeStats] = field(default_factory=list)   # one per chunk

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


def available_ram() -> int:
    """Free system memory in bytes (psutil where installed, as with ComfyUI; sysconf on Linux; else 4 GiB)."""
    try:
        import psutil
        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # Windows has no sysconf, macOS lacks SC_AVPHYS_PAGES
        return 4 * 2 ** 30


def chunk_size_for(model, max_len: int, use_cfg: bool, tokens_per_step: int, n: int,
                   memory_budget: int | None = None) -> int:
    """How many candidates fit in one batch (at least 1, at most n)."""
    budget = free_bytes(model.device, memory_budget) - RESERVE_BYTES
    return max(1, min(n, budget // bytes_per_image(model, max_len, use_cfg, tokens_per_step)))


def best_of_n(model, prompt: str, width: int = 768, height: int = 768, *, n: int = 4, seed: int = 0,
              scorer=None, chunk_size: int | None = None, memory_budget: int | None = None,
              image_tokenizer=None, decoder=None, task: str = "t2i", condition_image=None,
              condition_codes=None, progress: ProgressFn | None = None, cancel: CancelFn | None = None,
              generate_fn=None, chunk_size_fn=None, **generate_kwargs) -> BestOfNResult:
    """Generate n candidates (seeds seed..seed+n-1), score them with `scorer` (default: the model's own
    likelihood) and return all of them with their scores and the best index.

    chunk_size: candidates per batch; None picks the largest that fits `memory_budget` bytes (default:
    the free GPU memory, or half the free RAM on CPU). Other keywords go to `generate` (cfg, top_k, ...).
    image_tokenizer: the MoVQGAN; needed for condition images and for scorers that look at images.
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
    plan = plan_request(model, prompt, width, height, task, tokenizer=generate_kwargs.get("tokenizer"),
                        condition_codes=condition_codes, image_tokenizer=image_tokenizer,
                        subject_description=generate_kwargs.get("subject_description"))
    opts_cfg = generate_kwargs["sampling"].cfg if generate_kwargs.get("sampling") else generate_kwargs.get("cfg", 4.0)
    window = getattr(decoder, "window", 2)
    if chunk_size is None:
        fit = chunk_size_fn or partial(chunk_size_for, model, memory_budget=memory_budget)
        chunk_size = fit(plan.total_tokens + window, opts_cfg != 1.0, window, n)
    elif chunk_size < 1:
        raise InputError(f"chunk_size must be >= 1, got {chunk_size}")
    seeds = rng.seed_sequence(seed, n)
    run = generate_fn or partial(generate, model)
    chunks = [seeds[a:a + chunk_size] for a in range(0, n, chunk_size)]
    codes, scores, images, stats = [], [], [], []
    for index, chunk in enumerate(chunks):
        def chunk_progress(rows, total, so_far, _offset=index):
            if progress is not None:
                progress(_offset * total + rows, len(chunks) * total, so_far)
        res = run(prompt, width, height, task=task, seeds=chunk, decoder=decoder, condition_codes=condition_codes,
                  image_tokenizer=image_tokenizer, progress=chunk_progress, cancel=cancel, **generate_kwargs)
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
