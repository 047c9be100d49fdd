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
    prompts: int = 1             # prompts run one after another (images that keep different rows), forwards summed

    @property
    def tokens_per_forward(self) -> float:
        """Codes one image gets per forward (each prompt's forwards paint its images' codes)."""
        return self.image_tokens * self.prompts / max(1, self.forwards)


def cache_slots(plan: PromptPlan, capacity: int) -> int:
    """KV slots for the prompt and `capacity` tokens after it, in 64s: attending over the whole cache (the
    last graph bucket) keeps bf16 GEMM rows aligned."""
    return -(-(len(plan.cond_ids) + capacity) // 64) * 64


class Session:
    """A static KV cache holding the prompt of every stream, plus the write pointer.

    capacity: tokens the cache holds after the prompt (default: the whole image, plus `slack`); cache: an
    already filled cache to go on with (its rows: the images' conditional streams, then their unconditional
    ones), instead of a new one."""

    def __init__(self, model, plan: PromptPlan, n_images: int, use_cfg: bool, slack: int = 0,
                 prefill_chunk: int = 1024, forward=None, capacity: int | None = None, cache: KVCache | None = None):
        self.model, self.plan, self.n_images, self.use_cfg = model, plan, n_images, use_cfg
        # the cached-step function: model.forward_step, or a fast runner's (fast.py) with the same signature
        self.forward = forward or model.forward_step
        self.rows = n_images * (2 if use_cfg else 1)
        prompt_len = len(plan.cond_ids)
        if capacity is None:
            capacity = plan.layout.generated_tokens + slack
        self.cache = cache if cache is not None else KVCache.for_model(model, self.rows, cache_slots(plan, capacity))
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
    run = PlainRun(model, plan, special, seeds, opts, forward=forward)
    run.start()
    run.advance(plan.layout.gen_rows, progress, cancel)
    return run.codes, run.finish()


class PlainRun:
    """Plain sampling, one batched forward per code, that can stop after any row, drop images and go on.

    `sample_plain` runs it to the end in one go. Best-of-N's early pruning (pruning.py) runs every candidate to
    a row, keeps the best (`join` gathers their cache rows into a cache that holds only them) and goes on with
    those: the same arithmetic per image as running it to the end, so a candidate is still its seed's image.

    State after `rows_done` generated rows, per image: its codes so far, its summed guided log-probability, its
    forwards, and the logits of its next code (the last row's row end was fed with the row's last code).
    capacity: tokens the cache holds after the prompt (default: the whole image).
    """

    def __init__(self, model, plan: PromptPlan, special, seeds: list[int], opts: SamplingOptions, forward=None,
                 capacity: int | None = None, session: Session | None = None):
        self.model, self.plan, self.special, self.opts = model, plan, special, opts.validated()
        self.seeds = list(seeds)
        lay, dev = plan.layout, model.device
        B = len(self.seeds)
        self.session = session or Session(model, plan, B, self.opts.uses_cfg, forward=forward, capacity=capacity)
        self.schedule = guidance_schedule(self.opts, lay)
        self.seed_t = rng.seed_tensor(self.seeds, dev)
        self.codes = torch.empty(B, lay.gen_rows, lay.w_lat, dtype=torch.long, device=dev)
        self.logprob = torch.zeros(B, dtype=torch.float32, device=dev)
        self.image_forwards = torch.zeros(B, dtype=torch.long)
        self.rows_done = 0
        self.logits = None
        self.seconds = 0.0

    @property
    def n_images(self) -> int:
        return len(self.seeds)

    def start(self) -> None:
        """Prefill the prompt; the logits of the first code."""
        t0 = time.perf_counter()
        with torch.inference_mode():
            self.logits = self.session.prefill(self.special.image_rows)
        self.seconds += time.perf_counter() - t0

    def advance(self, rows: int, progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> None:
        """Sample until `rows` generated rows are done. progress(rows done, generated rows, codes so far)
        after each row; cancel() between rows."""
        lay, sp, session = self.plan.layout, self.special, self.session
        B, w, dev = self.n_images, lay.w_lat, self.model.device
        code_rows = sp.image_rows
        row_end = torch.full((B, 1), sp.row_end, dtype=torch.long, device=dev)
        t0 = time.perf_counter()
        with torch.inference_mode():
            for r in range(self.rows_done, rows):
                row = lay.prefix_rows + r
                for c in range(w):
                    counter = torch.full((B,), code_counter(lay, row, c), dtype=torch.long, device=dev)
                    codes, lp = pick_codes(self.logits, session, self.opts, self.schedule.at(row * (w + 1) + c),
                                           self.seed_t, counter)
                    self.logprob += lp
                    self.codes[:, r, c] = codes
                    if r == lay.gen_rows - 1 and c == w - 1:
                        break  # the rest (row end, end of image) is structural
                    tokens = (codes + sp.image_code_start).view(B, 1)
                    if c == w - 1:  # the row end is known: feed it in the same forward
                        tokens = torch.cat([tokens, row_end], dim=1)
                    self.logits = session.step(tokens, code_rows)[:, -1]
                    self.image_forwards += 1
                self.rows_done = r + 1
                if progress is not None:
                    progress(r + 1, lay.gen_rows, self.codes[:, : r + 1])
                if cancel is not None and cancel():
                    raise GenerationCancelled(f"stopped after {r + 1} of {lay.gen_rows} rows")
        self.seconds += time.perf_counter() - t0

    def finish(self) -> DecodeStats:
        """The statistics of the images as they stand (all rows done: the codes are the images)."""
        stats = self.session.stats
        stats.image_tokens = self.rows_done * self.plan.layout.w_lat
        stats.logprob = self.logprob
        stats.seconds = self.seconds
        return stats

    @classmethod
    def join(cls, parts: list[tuple["PlainRun", torch.Tensor]], capacity: int | None = None) -> "PlainRun":
        """One run of the given images of other runs (parts: (run, image indices)), in that order, with a
        cache of their rows only, sized for `capacity` tokens after the prompt (default: the whole image).
        Every part must be at the same row. What each image computes next is what it would have computed in
        its own run."""
        first = parts[0][0]
        if any(run.rows_done != first.rows_done for run, _ in parts):
            raise ValueError("runs to join must stand at the same row")
        parts = [(run, torch.as_tensor(index, dtype=torch.long)) for run, index in parts]
        plan, use_cfg = first.plan, first.session.use_cfg
        streams = [(run.session.cache, index) for run, index in parts]
        if use_cfg:  # conditional streams of every image first, then the unconditional ones
            streams += [(run.session.cache, index + run.n_images) for run, index in parts]
        if capacity is None:
            capacity = plan.layout.generated_tokens
        with torch.inference_mode():
            return cls._joined(parts, first, streams, capacity)

    @classmethod
    def _joined(cls, parts, first, streams, capacity) -> "PlainRun":
        plan, use_cfg = first.plan, first.session.use_cfg
        cache = KVCache.gather(streams, cache_slots(plan, capacity))
        seeds = [run.seeds[i] for run, index in parts for i in index.tolist()]
        session = Session(first.model, plan, len(seeds), use_cfg, forward=first.session.forward, cache=cache)
        joined = cls(first.model, plan, first.special, seeds, first.opts, session=session)
        dev = first.model.device
        joined.codes = torch.cat([run.codes[index.to(dev)] for run, index in parts])
        joined.logprob = torch.cat([run.logprob[index.to(dev)] for run, index in parts])
        joined.image_forwards = torch.cat([run.image_forwards[index] for run, index in parts])
        logits = [run.session.split(run.logits) for run, _ in parts]
        joined.logits = torch.cat([c[index.to(dev)] for (c, _), (_, index) in zip(logits, parts)]
                                  + ([u[index.to(dev)] for (_, u), (_, index) in zip(logits, parts)] if use_cfg else []))
        joined.rows_done = first.rows_done
        return joined
