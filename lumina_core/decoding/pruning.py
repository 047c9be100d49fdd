"""Best-of-N with early pruning: every candidate is painted down to row r, the partial images are scored, and
only the `keep` best are painted to the end (then scored again). An autoregressive model paints the top first,
so a poor start can be dropped before it costs a whole image (GridAR, 2025: best-of-4 with pruning beat
best-of-8 for a quarter less compute).

Memory: the first phase's caches hold the prompt and r rows per candidate only; after each of its chunks the
survivors' cache rows are gathered into one compact cache (KVCache.gather through PlainRun.join) and the rest
is freed, so the candidates that go on use the memory the dropped ones held, in caches sized for the whole
image, as many at once as fit.

Candidates keep their seeds and are painted by the plain sampler (PlainRun) whether they stop at row r or go
on, so a kept candidate is exactly the image `generate(seed=its seed)` makes: pruning only decides which
images get finished. With SJD (`finish`), the first rows are still painted plainly, so the same candidates
are kept; each survivor is then finished by SJD from its first rows as kept rows, exactly what
`generate(prefix_codes=its first rows, keep_rows=r, seed=its seed, decoder=sjd)` makes. SJD is exact, so the
survivors' images have the same distribution either way. Survivors whose first rows differ are different
prompts, finished one after another.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import InputError
from .generate import GenerationResult, crop_codes, decode_images, prompt_rows
from .sampler import CancelFn, DecodeStats, PlainRun, ProgressFn
from .tasks import PromptPlan
from ..image.preview import PENDING_GREY

# finish(first rows [k, r, w], seeds, progress, cancel) -> GenerationResult of the whole canvas
FinishFn = Callable[[torch.Tensor, list, ProgressFn, CancelFn], GenerationResult]


@dataclass
class PrunedCandidates:
    """What survived: the kept candidates' painted rows and final scores, and every candidate's partial score."""
    codes: torch.Tensor                 # [keep, gen_rows, w] the kept candidates' painted rows, in seed order
    seeds: list[int]                    # the kept candidates' seeds
    kept: list[int]                     # their indices among the n candidates
    scores: torch.Tensor                # [keep] final scores
    partial_scores: torch.Tensor        # [n] every candidate's score after the first rows
    image_forwards: list[int]           # [n] forwards each candidate took (pruned ones stop at row r)
    images: torch.Tensor | None = None  # the kept candidates' output panels when the scorer looked at images
    stats: list[DecodeStats] = field(default_factory=list)  # one per chunk, both phases


def check_pruning(plan: PromptPlan, n: int, keep: int | None, after_rows: int) -> int:
    """The number of candidates to keep, checked (after_rows > 0)."""
    rows = plan.layout.gen_rows
    if not 0 < after_rows < rows:
        raise InputError(f"prune_after_rows must be between 1 and {rows - 1} (the image has {rows} rows to paint), "
                         f"got {after_rows}; 0 turns pruning off.")
    keep = 1 if keep is None else int(keep)
    if not 1 <= keep < n:
        raise InputError(f"keep must be at least 1 and fewer than the {n} candidates (keeping all of them prunes "
                         f"nothing), got {keep}: lower keep, raise n, or set prune_after_rows to 0.")
    return keep


def check_pruning_runs_here(on_workers: bool) -> None:
    """Pruning runs on one device (for now): say what to change otherwise."""
    if on_workers:
        raise InputError("early pruning runs on one device for now: set prune_after_rows to 0 with the "
                         "Multi-GPU Loader, or load the model with the Model Loader.")


def canvas_codes(plan: PromptPlan, special, painted: torch.Tensor) -> torch.Tensor:
    """Painted rows [B, rows, w] under the rows the prompt gives: the canvas so far [B, prefix + rows, w]."""
    if not plan.layout.prefix_rows:
        return painted.cpu()
    given = prompt_rows(plan, special).expand(painted.shape[0], -1, -1)
    return torch.cat([given, painted.cpu()], dim=1)


def partial_panels(image_tokenizer, plan: PromptPlan, canvas: torch.Tensor) -> torch.Tensor:
    """The task's output panel of partly painted canvases [B, rows so far, w] as IMAGE [B, H, W, 3]: the rows
    there decoded, the rest grey (as the live preview shows them)."""
    lay, f = plan.layout, plan.layout.factor
    panel = plan.task.output_panel
    top = lay.h_lat // 2 if panel == "lower" else 0
    height = lay.h_lat // 2 if panel in ("upper", "lower") else lay.h_lat
    have = max(0, min(height, canvas.shape[1] - top))
    out = torch.full((canvas.shape[0], height * f, lay.width, 3), PENDING_GREY)
    if have:
        out[:, : have * f] = decode_images(image_tokenizer, canvas[:, top:top + have])
    return out


def _finish_elsewhere(finish, plan, special, seeds, scorer, prompt, image_tokenizer, kept_ids, first_rows,
                      logprob, partial, forwards, stats, chunk_rest, after_rows, tell, done, cancel):
    """The second phase by `finish`: the survivors' rest painted from their first rows, `chunk_rest` at a time,
    and scored on the whole painted image (the likelihood: the first rows' sum and the rest's, as one run)."""
    lay = plan.layout
    codes, final, images = [], [], []
    for a in range(0, len(kept_ids), chunk_rest):
        members = kept_ids[a:a + chunk_rest]
        before = done[0]

        def progress(rows, total, so_far, _before=before):
            # a chunk is one step per row still to paint, also when its survivors run one prompt after another
            # (their first rows differ): generate then counts rows over all of them
            done[0] = _before + rows * (lay.gen_rows - after_rows) // total
            tell(so_far[:, plan.kept_rows:])  # generate shows every row it keeps; the caller adds the user's

        res = finish(first_rows[a:a + chunk_rest], [seeds[i] for i in members.tolist()], progress, cancel)
        done[0] = before + lay.gen_rows - after_rows
        painted = res.codes[:, lay.prefix_rows:].cpu()
        canvas = canvas_codes(plan, special, painted)
        whole = DecodeStats(image_tokens=lay.gen_rows * lay.w_lat,
                            logprob=None if res.stats.logprob is None
                            else logprob[a:a + chunk_rest] + res.stats.logprob.float().cpu())
        result = GenerationResult(codes=canvas, layout=lay, task=plan.task,
                                  seeds=[seeds[i] for i in members.tolist()], prompt=plan.text, stats=whole)
        panels = (decode_images(image_tokenizer, crop_codes(canvas, plan.task.output_panel))
                  if scorer.needs_images else None)
        final.append(scorer.score(prompt, result, panels).float().cpu())
        codes.append(painted)
        if panels is not None:
            images.append(panels)
        for i, f in zip(members.tolist(), res.stats.extra.get("image_forwards", [res.stats.forwards] * len(members))):
            forwards[i] += f
        stats.append(res.stats)
    kept = kept_ids.tolist()
    return PrunedCandidates(codes=torch.cat(codes), seeds=[seeds[i] for i in kept], kept=kept,
                            scores=torch.cat(final), partial_scores=partial, image_forwards=forwards,
                            images=torch.cat(images) if images else None, stats=stats)


def _score(scorer, prompt: str, plan: PromptPlan, special, run: PlainRun, image_tokenizer):
    """The scorer on a run's images as they stand: (scores [B] on the CPU, the panels it looked at or None)."""
    canvas = canvas_codes(plan, special, run.codes[:, : run.rows_done])
    stats = DecodeStats(image_tokens=run.rows_done * plan.layout.w_lat, logprob=run.logprob.clone())
    result = GenerationResult(codes=canvas, layout=plan.layout, task=plan.task, seeds=list(run.seeds),
                              prompt=plan.text, stats=stats)
    images = None
    if scorer.needs_images:
        if run.rows_done == plan.layout.gen_rows:
            images = decode_images(image_tokenizer, crop_codes(canvas, plan.task.output_panel))
        else:
            images = partial_panels(image_tokenizer, plan, canvas)
    return scorer.score(prompt, result, images).float().cpu(), images


def _best(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Positions of the `keep` highest scores, ties to the earlier candidate, returned in candidate order."""
    order = torch.argsort(scores, descending=True, stable=True)
    return order[:keep].sort().values


def prune_candidates(model, plan: PromptPlan, special, seeds: list[int], opts, *, scorer, keep: int,
                     after_rows: int, prompt: str, chunk_first: int, chunk_rest: int, image_tokenizer=None,
                     forward=None, finish: FinishFn | None = None, progress: ProgressFn | None = None,
                     cancel: CancelFn | None = None) -> PrunedCandidates:
    """Paint every seed's image to row `after_rows` (`chunk_first` at a time), keep the `keep` best by
    `scorer`, paint those to the end (`chunk_rest` at a time) and score them again.
    finish: None goes on with the plain sampler in the survivors' caches; else finish(first rows [k, r, w],
    their seeds, progress, cancel) paints the rest (SJD: generation from kept rows, see FinishFn).
    progress(steps done, steps, codes so far): a step is one row of one chunk, over both phases."""
    lay = plan.layout
    n, partial_tokens = len(seeds), after_rows * (lay.w_lat + 1)
    first_chunks = [list(range(a, min(n, a + chunk_first))) for a in range(0, n, chunk_first)]
    rest_chunks = math.ceil(keep / chunk_rest)
    steps = len(first_chunks) * after_rows + rest_chunks * (lay.gen_rows - after_rows)
    done = [0]

    def reporter(rows_before: int):
        def report(rows, total, so_far):
            if progress is not None:
                progress(done[0] + rows - rows_before, steps, so_far)
        return report

    partial = torch.empty(n)
    forwards = [0] * n
    stats: list[DecodeStats] = []
    pool = None  # (run, candidate ids) of the best so far, compacted into a cache of their rows only
    for members in first_chunks:
        run = PlainRun(model, plan, special, [seeds[i] for i in members], opts, forward=forward,
                       capacity=partial_tokens)
        run.start()
        run.advance(after_rows, reporter(0), cancel)
        done[0] += after_rows
        scores, _ = _score(scorer, prompt, plan, special, run, image_tokenizer)
        partial[members] = scores
        for i, f in zip(members, run.image_forwards.tolist()):
            forwards[i] = f
        stats.append(run.finish())
        parts = [(run, torch.tensor(members))]
        if pool is not None:  # the best of the earlier chunks come first: their candidates are the lower ones
            parts.insert(0, pool)
        ids = torch.cat([candidates for _, candidates in parts])
        chosen = _best(partial[ids], keep)  # positions in ids, in candidate order
        picked, offset = [], 0
        for src, candidates in parts:
            mine = chosen[(chosen >= offset) & (chosen < offset + len(candidates))] - offset
            if len(mine):
                picked.append((src, mine))
            offset += len(candidates)
        pool = (PlainRun.join(picked, capacity=partial_tokens), ids[chosen])
        del run, parts, picked  # the dropped candidates' cache rows are freed here
    survivors, kept_ids = pool
    if finish is not None:
        first_rows, logprob = survivors.codes[:, :after_rows].cpu(), survivors.logprob.cpu()
        del survivors, pool  # the rest is painted from the kept rows, in caches of its own
        return _finish_elsewhere(finish, plan, special, seeds, scorer, prompt, image_tokenizer, kept_ids,
                                 first_rows, logprob, partial, forwards, stats, chunk_rest, after_rows,
                                 lambda so_far: progress(done[0], steps, so_far) if progress else None, done,
                                 cancel)
    # go on with the survivors, `chunk_rest` at a time, each chunk in a cache sized for the whole image
    codes, final, images = [], [], []
    for a in range(0, len(kept_ids), chunk_rest):
        run = PlainRun.join([(survivors, torch.arange(a, min(len(kept_ids), a + chunk_rest)))])
        if a + chunk_rest >= len(kept_ids):
            del survivors, pool  # every survivor now sits in the run's own cache
        run.advance(lay.gen_rows, reporter(after_rows), cancel)
        done[0] += lay.gen_rows - after_rows
        scores, panels = _score(scorer, prompt, plan, special, run, image_tokenizer)
        final.append(scores)
        codes.append(run.codes.cpu())
        if panels is not None:
            images.append(panels)
        for i, f in zip(kept_ids[a:a + chunk_rest].tolist(), run.image_forwards.tolist()):
            forwards[i] = f
        stats.append(run.finish())
        del run
    kept = kept_ids.tolist()
    return PrunedCandidates(codes=torch.cat(codes), seeds=[seeds[i] for i in kept], kept=kept,
                            scores=torch.cat(final), partial_scores=partial, image_forwards=forwards,
                            images=torch.cat(images) if images else None, stats=stats)
