"""The plain autoregressive sampler: one batched forward per image token, CFG inside the batch.

Batch rows: conditional streams of the B images first, then their unconditional streams (when
cfg != 1). Each image's randomness comes from its own seed and the token's index in the canvas
(see rng.py), so an image is the same alone or inside a batch.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from . import rng
from ..errors import GenerationCancelled
from ..memory.kv_cache import KVCache
from .logits import GuidanceSchedule, SamplingOptions, draw, guide, truncate
from .tasks import PromptPlan

ProgressFn = Callable[[int, int, torch.Tensor], None]   # (rows done, total rows, codes so far [B, rows, w])
CancelFn = Callable[[], bool]                            # True -> stop


@dataclass
class DecodeStats:
    forwards: int = 0            # batched forward passes after the prefill
    image_tokens: int = 0        # image codes produced per image
    prefill_tokens: int = 0
    seconds: float = 0.0
    logprob: torch.Tensor | None = None  # [B] sum over codes of log p_guided(code): the likelihood score
    extra: dict = field(default_factory=dict)

    @property
    def tokens_per_forward(self) -> float:
        return self.image_tokens / max(1, self.forwards)


class Session:
    """A static KV cache holding the prompt of every stream, plus the write pointer."""

    def __init__(self, model, plan: PromptPlan, n_images: int, use_cfg: bool, slack: int = 0,
                 prefill_chunk: int = 1024, forward=None):
        self.model, self.plan, self.n_images, self.use_cfg = model, plan, n_images, use_cfg
        # the cached-step function: model.forward_step, or a fast runner's (fast.py) with the same signature
        self.forward = forward or model.forward_step
        self.rows = n_images * (2 if use_cfg else 1)
        prompt_len = len(plan.cond_ids)
        # a multiple of 64 slots: attending over the whole cache (last graph bucket) keeps bf16 GEMM rows aligned
        slots = -(-(prompt_len + plan.layout.generated_tokens + slack) // 64) * 64
        self.cache = KVCache.for_model(model, self.rows, slots)
        self.prefill_chunk = prefill_chunk
        self.stats = DecodeStats(prefill_tokens=prompt_len)

    def prefill(self, code_rows: tuple[int, int]) -> torch.Tensor:
        """Run the prompts; return image-code logits for the first generated position, [rows, n_codes].

        The prompt is identical for every image, so it runs once for a (cond, uncond) pair, written
        straight into rows 0 and B of the cache (a strided view, no extra memory), then copied to the
        other images' rows.
        """
        plan, dev, B = self.plan, self.model.device, self.n_images
        L = len(plan.cond_ids)
        streams = [plan.cond_ids] + ([plan.uncond_ids] if self.use_cfg else [])
        ids = torch.zeros(len(streams), L, dtype=torch.long, device=dev)
        starts = torch.tensor([L - len(s) for s in streams], dtype=torch.long, device=dev)
        for i, s in enumerate(streams):
            ids[i, L - len(s):] = torch.tensor(s, dtype=torch.long, device=dev)
        self.cache.starts = starts.repeat_interleave(B)  # rows: cond x B, then uncond x B
        pair = self.cache.row_view(step=B)
        logits = None
        for a in range(0, L, self.prefill_chunk):
            b = min(L, a + self.prefill_chunk)
            logits = self.model.forward_step(ids[:, a:b], pair, pair.slots(b - a), kv_len=b, rows=code_rows,
                                             last_only=True)
            pair.length = b
        for group in range(len(streams)):
            first = group * B
            for t in self.cache.tensors():
                t[first + 1:first + B, :, :L] = t[first:first + 1, :, :L]
        self.cache.length = L
        return logits[:, -1].repeat_interleave(B, dim=0)

    def step(self, tokens: torch.Tensor, code_rows: tuple[int, int], last_only: bool = True) -> torch.Tensor:
        """Feed `tokens` [n_images, T] (the same tokens go to an image's cond and uncond streams)."""
        if self.use_cfg:
            tokens = torch.cat([tokens, tokens], dim=0)
        T = tokens.shape[1]
        slots = self.cache.slots(T)
        out = self.forward(tokens, self.cache, slots, kv_len=self.cache.length + T, rows=code_rows,
                           last_only=last_only)
        self.cache.length += T
        self.stats.forwards += 1
        return out

    def split(self, logits: torch.Tensor):
        """[rows, ...] -> (cond, uncond or None)."""
        if not self.use_cfg:
            return logits, None
        return logits[: self.n_images], logits[self.n_images:]


def code_counter(layout, row: int, col: int) -> int:
    """Index of a code in the canvas: the RNG counter of that token."""
    return row * layout.w_lat + col


def guidance_schedule(opts: SamplingOptions, layout) -> GuidanceSchedule:
    return GuidanceSchedule(opts, layout.height // 32, layout.width // 32, layout.h_lat * (layout.w_lat + 1))


def code_logprob(guided: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """log p(code) under the guided, untruncated distribution (the likelihood scorer's per-token term)."""
    return guided.log_softmax(-1).gather(-1, codes.unsqueeze(-1)).squeeze(-1)


def pick_codes(logits: torch.Tensor, session: Session, opts: SamplingOptions, scale, seed_t: torch.Tensor,
               counter: torch.Tensor):
    """One code per image from the last step's logits [rows, n_codes]: (codes [B], guided log-prob [B])."""
    cond, uncond = session.split(logits)
    guided = guide(cond, uncond, scale, opts.guidance_top_k)
    scores = truncate(guided, opts)
    noise = None if opts.greedy else rng.gumbel(seed_t, counter, scores.shape[-1])
    codes = draw(scores, noise)
    return codes, code_logprob(guided, codes)


def sample_plain(model, plan: PromptPlan, special, seeds: list[int], opts: SamplingOptions,
                 progress: ProgressFn | None = None, cancel: CancelFn | None = None, forward=None):
    """Generate the missing rows of `plan` for each seed. Returns (codes [B, gen_rows, w_lat], DecodeStats).

    forward: optional cached-step function (a fast.py runner); default model.forward_step.
    """
    opts = opts.validated()
    lay = plan.layout
    B, w, dev = len(seeds), lay.w_lat, model.device
    code_rows = special.image_rows
    t0 = time.perf_counter()
    session = Session(model, plan, B, opts.uses_cfg, forward=forward)
    schedule = guidance_schedule(opts, lay)
    seed_t = rng.seed_tensor(seeds, dev)
    out = torch.empty(B, lay.gen_rows, w, dtype=torch.long, device=dev)
    logprob = torch.zeros(B, dtype=torch.float32, device=dev)
    row_end = torch.full((B, 1), special.row_end, dtype=torch.long, device=dev)
    with torch.inference_mode():
        logits = session.prefill(code_rows)
        for r in range(lay.gen_rows):
            row = lay.prefix_rows + r
            for c in range(w):
                counter = torch.full((B,), code_counter(lay, row, c), dtype=torch.long, device=dev)
                codes, lp = pick_codes(logits, session, opts, schedule.at(row * (w + 1) + c), seed_t, counter)
                logprob += lp
                out[:, r, c] = codes
                if r == lay.gen_rows - 1 and c == w - 1:
                    break  # the rest (row end, end of image) is structural
                tokens = (codes + special.image_code_start).view(B, 1)
                if c == w - 1:  # the row end is known: feed it in the same forward
                    tokens = torch.cat([tokens, row_end], dim=1)
                logits = session.step(tokens, code_rows)[:, -1]
            if progress is not None:
                progress(r + 1, lay.gen_rows, out[:, : r + 1])
            if cancel is not None and cancel():
                raise GenerationCancelled(f"stopped after {r + 1} of {lay.gen_rows} rows")
    session.stats.image_tokens = lay.gen_rows * w
    session.stats.logprob = logprob
    session.stats.seconds = time.perf_counter() - t0
    return out, session.stats
