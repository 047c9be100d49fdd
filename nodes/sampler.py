"""The sampler node: prompt (+ condition codes) -> code grids, with progress, previews and Cancel."""
from __future__ import annotations

import logging
from functools import partial

import comfy.model_management as mm
from comfy_api.latest import io

from ..lumina_core import FastPlain, InputError, SJDecoder, StepRunner, TASKS, canvas_size, generate, get_task
from ..lumina_core import best_of_n as run_best_of_n
from ..lumina_core.generate import plan_request
from ..lumina_core.sampler import DecodeStats
from ..lumina_core.trained_tasks import task_warning
from . import memory
from .memory_plan import KV_CACHES, KV_TOOLTIP, kv_cache_format
from .progress import SamplerProgress
from .settings import sjd_decoder, step_function
from .validation import choice_problem, first_problem, float_problems, require, size_inputs, size_problem
from .types import (BestOfNType, CATEGORY, ImageTokenizerType, LuminaTokens, ModelType, SamplingType, SJDType,
                    SpeedType, TokensType)

log = logging.getLogger(__name__)

SEED_MAX = 0xFFFFFFFFFFFFFFFF


def _task_tooltip() -> str:
    lines = [f"{name}: {spec.description}" for name, spec in TASKS.items()]
    return ("What to generate. Every task but t2i paints a dual-panel canvas (two panels stacked); tasks that "
            "start from an image need 'condition'.\n" + "\n".join(lines))


def condition_codes(spec, condition: LuminaTokens | None, width: int, height: int, engine):
    """The condition's codes after checking it fits this task, size and model."""
    if condition is None:
        if spec.needs_condition:
            raise InputError(f"task {spec.name!r} starts from an image: connect a Lumina-mGPT 2.0 Condition Encoder "
                             "to the sampler's 'condition' input.")
        return None
    if not spec.needs_condition:
        raise InputError(f"task {spec.name!r} generates from text only: disconnect 'condition', or pick a task "
                         "that uses one (control_*, subject, dense_*, edit).")
    if condition.task is not None:
        raise InputError("'condition' must come from a Condition Encoder, not from a sampler.")
    if (condition.layout.width, condition.layout.height) != (width, height):
        raise InputError(f"the condition was encoded at {condition.layout.width}x{condition.layout.height} but the "
                         f"sampler makes {width}x{height} panels: set the same width and height on both nodes.")
    if condition.num_codes != engine.tokenizer.special.num_image_codes:
        raise InputError(f"the condition was encoded with a {condition.num_codes}-code image tokenizer but the "
                         f"model uses {engine.tokenizer.special.num_image_codes} codes: encode it with the "
                         "MoVQGAN that belongs to this checkpoint.")
    return condition.codes


class Sampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LuminaMGPT2Sampler",
            display_name="Lumina-mGPT 2.0 Sampler",
            category=CATEGORY,
            description="Generates images token by token (one row of codes at a time) with classifier-free "
                        "guidance. The output is codes: decode them with Lumina-mGPT 2.0 Decode.",
            inputs=[
                ModelType.Input("model", tooltip="From Lumina-mGPT 2.0 Model Loader."),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="What the image shows. For dual-panel tasks, describe the image panel."),
                io.Combo.Input("task", options=list(TASKS), default="t2i", tooltip=_task_tooltip()),
                *size_inputs("Output", "for dual-panel tasks one panel: the canvas is twice as tall"),
                io.Int.Input("seed", default=0, min=0, max=SEED_MAX, control_after_generate=True,
                             tooltip="Every seed, 0 included, gives its own image, the same every time. Image i of "
                                     "a batch uses seed + i, so it can be regenerated alone."),
                io.Float.Input("cfg", default=4.0, min=0.0, max=20.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale. 1 turns guidance off (and skips the "
                                       "unconditional stream, about twice as fast). Lumina-mGPT 2.0 uses 4."),
                io.Int.Input("top_k", default=4096, min=0, max=65536,
                             tooltip="Sample only among the k most likely codes (0 = all). Lumina-mGPT 2.0 uses 4096; "
                                     "1 is greedy."),
                io.Float.Input("temperature", default=1.0, min=0.0, max=5.0, step=0.05, round=0.01,
                               tooltip="Below 1: safer, flatter images; above 1: more varied. 0 is greedy."),
                io.Int.Input("batch_size", default=1, min=1, max=64,
                             tooltip="Images generated together (seed, seed+1, ...). Memory grows with it. Keep 1 "
                                     "with best-of-N: its n candidates are the batch."),
                TokensType.Input("condition", optional=True,
                                 tooltip="Condition codes from a Condition Encoder, for tasks that start from an "
                                         "image (control_*, subject, dense_*, edit)."),
                ImageTokenizerType.Input("image_tokenizer", optional=True,
                                         tooltip="Connect the MoVQGAN to see decoded previews while sampling; "
                                                 "without it the preview shows flat colours per code."),
                SJDType.Input("sjd", optional=True,
                              tooltip="Speculative Jacobi decoding settings (SJD Settings node): fewer forwards "
                                      "per image. Not connected: plain decoding, one code per forward."),
                BestOfNType.Input("best_of_n", optional=True,
                                  tooltip="Best-of-N settings: generate n scored candidates instead of a batch. All "
                                          "come out with their scores; Select Best keeps the best."),
                SpeedType.Input("speed", optional=True,
                                tooltip="GPU decode-loop options (Speed Settings node: CUDA graphs, compiled layers). "
                                        "Not connected: the plain PyTorch loop."),
                SamplingType.Input("sampling", optional=True,
                                   tooltip="More sampling options (Sampling Settings node: top-p, top-n-sigma, "
                                           "guidance only within the top-k, upstream's cfg schedule)."),
                io.Combo.Input("kv_cache", options=list(KV_CACHES), default="auto", optional=True, tooltip=KV_TOOLTIP),
            ],
            outputs=[TokensType.Output(display_name="tokens", tooltip="The generated code grids (whole canvas), with task and "
                                                        "seeds; connect to Lumina-mGPT 2.0 Decode.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, task: str, width: int, height: int, cfg: float, temperature: float) -> bool | str:
        return first_problem(*cls.problems(task, width, height, cfg, temperature))

    @classmethod
    def problems(cls, task, width, height, cfg, temperature) -> list[str | None]:
        return [choice_problem("task", task, TASKS), size_problem(width, height),
                *float_problems(cls, cfg=cfg, temperature=temperature)]

    @classmethod
    def execute(cls, model, prompt: str, task: str, width: int, height: int, seed: int, cfg: float, top_k: int,
                temperature: float, batch_size: int, condition=None, image_tokenizer=None, sjd=None,
                best_of_n=None, speed=None, sampling=None, kv_cache: str = "auto") -> io.NodeOutput:
        require(*cls.problems(task, width, height, cfg, temperature))  # linked widgets
        engine = model.engine
        spec = get_task(task)
        canvas_w, canvas_h = canvas_size(spec, width, height)
        codes = condition_codes(spec, condition, width, height, engine)
        check_best_of_n(best_of_n, batch_size, image_tokenizer)
        # Plan first: a prompt or size the model cannot take fails before anything is loaded.
        plan = plan_request(engine, prompt, canvas_w, canvas_h, spec, condition_codes=codes)
        untrained = task_warning(engine, spec.name)
        if untrained:
            log.warning("Lumina-mGPT 2.0: %s", untrained)
        window = sjd["window"] if sjd is not None else 1
        # best-of-N with chunk_size 0 sizes its chunks to the memory left after loading; a fixed chunk size
        # generates that many candidates at once, so room is made for all of them
        together = best_of_n["chunk_size"] if best_of_n is not None and best_of_n["chunk_size"] else batch_size
        streams = together * (2 if cfg != 1.0 else 1)
        extra = [image_tokenizer.patcher] if image_tokenizer is not None else []
        workers = getattr(model, "workers", None)  # a Multi-GPU Loader's model: its worker processes decode
        if workers is None:  # the cache format first: the memory reserved for generation depends on it
            engine.kv_cache_format = kv_cache_format(kv_cache, engine, canvas_w, canvas_h, together, cfg != 1.0,
                                                     window, len(plan.cond_ids))
            memory.load_for_generation(model, streams, plan.total_tokens + window, window, extra=extra)
            step, note = step_function(speed, engine)  # after loading: CUDA graphs need the weights in place
        else:
            if extra:
                mm.load_models_gpu(extra)
            step, note = None, None  # the workers apply the speed settings to their own shards
        if note:
            log.info("Lumina-mGPT 2.0: %s", note)
        if sjd is not None:
            decoder, forwards = sjd_decoder(sjd, step) if workers is None else (SJDecoder(**sjd), None)
        else:
            decoder, forwards = (FastPlain(step) if isinstance(step, StepRunner) else None), None
        vq = image_tokenizer.engine if image_tokenizer is not None else None
        progress = SamplerProgress(cls.hidden.unique_id, model, plan.layout.gen_rows, plan.layout.w_lat,
                                   image_tokenizer=vq, forwards=forwards, warning=untrained,
                                   panel_rows=plan.layout.h_lat // 2 if spec.dual_panel else None)
        common = dict(task=spec.name, cfg=cfg, top_k=top_k, temperature=temperature, condition_codes=codes,
                      decoder=decoder, progress=progress.on_rows, cancel=progress.cancel, **(sampling or {}))
        num_codes = engine.tokenizer.special.num_image_codes
        if best_of_n is None:
            run = partial(workers.generate, speed=speed) if workers is not None else partial(generate, engine)
            result = run(prompt, canvas_w, canvas_h, seed=seed, batch_size=batch_size, **common)
            tokens = LuminaTokens(codes=result.codes, layout=result.layout, num_codes=num_codes, task=result.task,
                                  seeds=tuple(result.seeds), stats=result.stats)
        else:
            run = partial(workers.best_of_n, speed=speed) if workers is not None else partial(run_best_of_n, engine)
            result = run(prompt, canvas_w, canvas_h, n=best_of_n["n"], seed=seed,
                                   scorer=best_of_n["scorer"], chunk_size=best_of_n["chunk_size"],
                                   image_tokenizer=vq, **common)
            tokens = LuminaTokens(codes=result.codes, layout=result.layout, num_codes=num_codes, task=result.task,
                                  seeds=tuple(result.seeds), scores=result.scores, stats=merged(result.stats))
        # plain decoding makes one code per forward by definition: the figure only means something with SJD
        progress.finish(tokens.stats.tokens_per_forward if sjd is not None else None)
        mm.soft_empty_cache()
        return io.NodeOutput(tokens)


def check_best_of_n(settings, batch_size: int, image_tokenizer) -> None:
    if settings is None:
        return
    if batch_size != 1:
        raise InputError("with best-of-N connected the candidates are the batch: set batch_size to 1 and the "
                         "number of candidates (n) on the Best-of-N Settings node.")
    if settings["scorer"].needs_images and image_tokenizer is None:
        raise InputError(f"the {settings['scorer'].name} scorer looks at the images: connect the image tokenizer "
                         "to the sampler's image_tokenizer input.")


def merged(chunk_stats: list[DecodeStats]) -> DecodeStats:
    """One DecodeStats for best-of-N's chunks (forwards and per-image tokens add up)."""
    return DecodeStats(forwards=sum(s.forwards for s in chunk_stats),
                       image_tokens=sum(s.image_tokens for s in chunk_stats),
                       prefill_tokens=chunk_stats[0].prefill_tokens, seconds=sum(s.seconds for s in chunk_stats))
