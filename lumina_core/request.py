"""One generation request, from what a user asked for to code grids: checked and planned before anything is
loaded (`prepare_request`), then run on a model or on a tensor-parallel worker group (`run_request`).

This is the Sampler node's whole logic; the node maps its widgets to a `Request` and adds only what belongs
to ComfyUI (loading onto the GPU, the progress bar, Cancel). Scripts use it the same way.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import torch

from .decoding.best_of_n import best_of_n
from .errors import InputError
from .decoding.fast import FastPlain, StepRunner
from .decoding.generate import canvas_size, generate, plan_each_prefix
from .decoding.kept_rows import as_images
from .decoding.pruning import check_pruning, check_pruning_runs_here
from .decoding.sampler import DecodeStats
from .decoding.sjd import SJDecoder
from .layout import ImageLayout
from .decoding.tasks import PromptPlan, TaskSpec, get_task
from .parallel.workers import TPWorkers
from .decoding.trained_tasks import task_warning


@dataclass(frozen=True)
class Request:
    """What to generate. `width` x `height` is the output panel (dual-panel tasks paint a canvas twice as tall).
    sjd: SJDecoder keywords (window, init, mode) or None for plain decoding; best_of_n: {n, scorer, chunk_size,
    and optionally prune_after_rows, keep} or None; sampling: more SamplingOptions keywords (top_p, top_n_sigma,
    guidance_top_k, cfg_mode). prefix_codes [1 or batch, rows, w] / keep_rows: the top rows to keep of the part
    the task paints (generate() says how); subject_description: the subject task's description of its reference
    (None: upstream's sentence)."""
    prompt: str
    task: str = "t2i"
    width: int = 768
    height: int = 768
    seed: int = 0
    cfg: float = 4.0
    top_k: int = 4096
    temperature: float = 1.0
    batch_size: int = 1
    condition_codes: torch.Tensor | None = None
    sjd: dict | None = None
    best_of_n: dict | None = None
    sampling: dict = field(default_factory=dict)
    prefix_codes: torch.Tensor | None = None
    keep_rows: int | None = None
    subject_description: str | None = None


@dataclass
class PreparedRequest:
    """A request the model can take, with its prompt plan and what generating it will hold in memory."""
    request: Request
    spec: TaskSpec
    canvas: tuple[int, int]
    plan: PromptPlan     # the first image's (images that keep other rows have their own, checked as well)
    warning: str | None  # the task is not one the checkpoint was trained for

    @property
    def window(self) -> int:
        """Tokens each forward feeds after the prompt (SJD's window or draft tree, at most what "auto" may pick;
        1 for plain decoding): what the KV cache holds past the image, and what memory plans count."""
        return SJDecoder(**self.request.sjd).tokens_per_forward if self.request.sjd is not None else 1

    @property
    def images_at_once(self) -> int:
        """Images decoded together: the batch, or best-of-N's fixed chunk (chunk 0 sizes itself to the memory
        left after loading, so its first chunk is no bigger than the batch of one)."""
        bon = self.request.best_of_n
        return bon["chunk_size"] if bon is not None and bon["chunk_size"] else self.request.batch_size

    @property
    def guided(self) -> bool:
        return self.request.cfg != 1.0

    @property
    def streams(self) -> int:
        """KV-cache rows: a conditional and, with guidance, an unconditional stream per image."""
        return self.images_at_once * (2 if self.guided else 1)

    @property
    def cache_tokens(self) -> int:
        """Positions each stream's cache holds (the prompt, the image and one SJD window past its end)."""
        return self.plan.total_tokens + self.window

    def decoder(self, step=None):
        """The decoder for this request: SJD (through the cached-step function `step`, default the model's
        own), the bucketed fast loop when `step` is a StepRunner, else None (the plain loop)."""
        if self.request.sjd is not None:
            return SJDecoder(**self.request.sjd, forward=step)
        return FastPlain(step) if isinstance(step, StepRunner) else None


@dataclass
class Outcome:
    """Code grids [images, canvas rows, canvas columns] with what made them."""
    codes: torch.Tensor
    layout: ImageLayout
    task: str
    seeds: tuple[int, ...]
    stats: DecodeStats
    scores: torch.Tensor | None = None  # best-of-N: one per candidate, in seed order
    tokens_per_forward: float | None = None  # only with SJD: plain decoding makes one code per forward


def check_image_tokenizer(model, image_tokenizer) -> None:
    """The MoVQGAN given for previews, conditions or the CLIP scorer must be the checkpoint's: its codebook has
    as many codes as the model makes (another one fails on the first code past its end, or decodes garbage)."""
    if image_tokenizer is None:
        return
    want = model.tokenizer.special.num_image_codes
    if image_tokenizer.num_codes != want:
        raise InputError(f"the image tokenizer has {image_tokenizer.num_codes} codes but this model makes {want}: "
                         "connect the MoVQGAN that belongs to the checkpoint (the sampler uses it for previews and "
                         "the CLIP scorer), or disconnect it.")


def check_request(request: Request, spec: TaskSpec, image_tokenizer=None) -> None:
    if spec.needs_condition and request.condition_codes is None:
        raise InputError(f"task {spec.name!r} starts from an image: connect a Lumina-mGPT 2.0 Condition Encoder "
                         "to the sampler's 'condition' input.")
    if not spec.needs_condition and request.condition_codes is not None:
        raise InputError(f"task {spec.name!r} generates from text only: disconnect 'condition', or pick a task "
                         "that uses one (control_*, subject, dense_*, edit).")
    bon = request.best_of_n
    if bon is None:
        return
    if request.batch_size != 1:
        raise InputError("with best-of-N connected the candidates are the batch: set batch_size to 1 and the "
                         "number of candidates (n) on the Best-of-N Settings node.")
    if bon["scorer"].needs_images and image_tokenizer is None:
        raise InputError(f"the {bon['scorer'].name} scorer looks at the images: connect the image tokenizer "
                         "to the sampler's image_tokenizer input.")


def prepare_request(model, request: Request, image_tokenizer=None) -> PreparedRequest:
    """Check `request` against the task and `model` (a LuminaMGPT or a worker group: anything with a tokenizer
    and a config) and plan its prompt. A prompt or size the model cannot take fails here, before loading."""
    spec = get_task(request.task)
    check_request(request, spec, image_tokenizer)
    check_image_tokenizer(model, image_tokenizer)
    canvas = canvas_size(spec, request.width, request.height)
    images = request.best_of_n["n"] if request.best_of_n is not None else request.batch_size
    if request.best_of_n is not None and request.prefix_codes is not None and as_images(request.prefix_codes).shape[0] != 1:
        raise InputError(f"best-of-N paints every candidate from the same rows, but start_from holds "
                         f"{as_images(request.prefix_codes).shape[0]} images: start from one image.")
    plans = plan_each_prefix(model, request.prompt, *canvas, spec, condition_codes=request.condition_codes,
                             subject_description=request.subject_description, prefix_codes=request.prefix_codes,
                             keep_rows=request.keep_rows, n_images=1 if request.best_of_n is not None else images)
    plan = plans[0][0]
    bon = request.best_of_n
    if bon is not None and bon.get("prune_after_rows"):
        check_pruning(plan, bon["n"], bon.get("keep"), bon["prune_after_rows"])
        check_pruning_runs_here(on_workers=isinstance(model, TPWorkers))
    return PreparedRequest(request, spec, canvas, plan, task_warning(model, spec.name))


def merged_stats(chunk_stats: list[DecodeStats]) -> DecodeStats:
    """One DecodeStats for best-of-N's chunks (forwards and per-image tokens add up)."""
    return DecodeStats(forwards=sum(s.forwards for s in chunk_stats),
                       image_tokens=sum(s.image_tokens for s in chunk_stats),
                       prefill_tokens=chunk_stats[0].prefill_tokens, seconds=sum(s.seconds for s in chunk_stats))


def run_request(prepared: PreparedRequest, model, *, decoder=None, image_tokenizer=None, progress=None,
                cancel=None, speed=None) -> Outcome:
    """Generate `prepared` on `model`: a loaded LuminaMGPT, or a tensor-parallel worker group (parallel/workers.py; it
    takes the Speed Settings `speed` itself). progress(rows_done, total_rows, codes) after every row; cancel()
    between rows."""
    r = prepared.request
    workers = model if isinstance(model, TPWorkers) else None
    common = dict(task=prepared.spec.name, cfg=r.cfg, top_k=r.top_k, temperature=r.temperature,
                  condition_codes=r.condition_codes, prefix_codes=r.prefix_codes, keep_rows=r.keep_rows,
                  subject_description=r.subject_description, decoder=decoder, progress=progress, cancel=cancel,
                  **r.sampling)
    canvas_w, canvas_h = prepared.canvas
    if r.best_of_n is None:
        run = partial(workers.generate, speed=speed) if workers is not None else partial(generate, model)
        result = run(r.prompt, canvas_w, canvas_h, seed=r.seed, batch_size=r.batch_size, **common)
        stats, scores = result.stats, None
    else:
        run = partial(workers.best_of_n, speed=speed) if workers is not None else partial(best_of_n, model)
        pruning = {k: r.best_of_n[k] for k in ("prune_after_rows", "keep") if r.best_of_n.get(k)}
        result = run(r.prompt, canvas_w, canvas_h, n=r.best_of_n["n"], seed=r.seed, scorer=r.best_of_n["scorer"],
                     chunk_size=r.best_of_n["chunk_size"], image_tokenizer=image_tokenizer, **pruning, **common)
        stats, scores = merged_stats(result.stats), result.scores
    return Outcome(codes=result.codes, layout=result.layout, task=result.task, seeds=tuple(result.seeds),
                   stats=stats, scores=scores, tokens_per_forward=stats.tokens_per_forward if r.sjd else None)
