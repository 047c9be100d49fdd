"""The sampler node: prompt (+ condition codes) -> code grids, with progress, previews and Cancel."""
from __future__ import annotations

import logging

import comfy.model_management as mm
from comfy_api.latest import io

from ..lumina_core import InputError, TASKS, crop_codes, get_task
from ..lumina_core.decoding.generate import prompt_rows
from ..lumina_core.decoding.tasks import DEFAULT_SUBJECT_DESCRIPTION
from ..lumina_core.request import Request, prepare_request, run_request
from . import memory
from .memory_plan import KV_CACHES, KV_TOOLTIP, kv_cache_format
from .progress import SamplerProgress
from .settings import CountingForward, step_function
from .validation import MAX_SIDE, choice_problem, first_problem, float_problems, require, size_inputs, size_problem
from .types import (BestOfNType, CATEGORY, ImageTokenizerType, LuminaTokens, ModelType, SamplingType, SJDType,
                    SpeedType, TokensType)

log = logging.getLogger(__name__)

SEED_MAX = 0xFFFFFFFFFFFFFFFF


def _task_tooltip() -> str:
    lines = [f"{name}: {spec.description}" for name, spec in TASKS.items()]
    return ("What to generate. Every task but t2i paints a dual-panel canvas (two panels stacked); tasks that "
            "start from an image need 'condition'.\n" + "\n".join(lines))


def condition_codes(spec, condition: LuminaTokens | None, width: int, height: int, engine):
    """The condition socket's codes, after the checks only the socket allows (where they came from, at what
    size, from which image tokenizer). Whether the task takes a condition is the request's own check."""
    if condition is None or not spec.needs_condition:
        return None if condition is None else condition.codes
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


def start_codes(start_from: LuminaTokens | None, engine):
    """The start_from socket's codes: the part its source painted (a sampler's image, or the lower panel below a
    condition) or the picture an Image to Tokens node encoded, checked against the model's codebook."""
    if start_from is None:
        return None
    want = engine.tokenizer.special.num_image_codes
    if start_from.num_codes != want:
        raise InputError(f"start_from was encoded with a {start_from.num_codes}-code image tokenizer but the model "
                         f"uses {want} codes: encode the picture with the MoVQGAN that belongs to this checkpoint.")
    part = start_from.task.generated_panel if start_from.task is not None else "full"
    return crop_codes(start_from.codes, part)


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
                TokensType.Input("start_from", optional=True,
                                 tooltip="A picture to start from: a sampler's output or Image to Tokens. Its top "
                                         "keep_rows rows stay exactly as they are and the sampler paints the rest, "
                                         "each image of the batch with its own seed (a batch of pictures: one per "
                                         "image). With a height taller than the picture it extends the picture "
                                         "downward. Dual-panel tasks keep the top of the panel they paint."),
                io.Int.Input("keep_rows", default=0, min=0, max=MAX_SIDE // 8, optional=True,
                             tooltip="With start_from: how many rows of codes to keep from the top (a row is 8 px: "
                                     "keep 48 of a 768-px image's 96 rows to re-roll its bottom half). 0 keeps "
                                     "every row of start_from: set a taller height to extend it downward. Without "
                                     "start_from it does nothing."),
                io.String.Input("subject_description", default=DEFAULT_SUBJECT_DESCRIPTION, optional=True,
                                tooltip="For the subject task: a short description of the reference subject, which "
                                        "its template puts in <...> before your prompt. The default is the sentence "
                                        "upstream's code always used (Alpha-VLLM/Lumina-mGPT-2.0 #24); describe your "
                                        "subject instead. Empty: that sentence. Other tasks ignore it."),
            ],
            outputs=[TokensType.Output(display_name="tokens", tooltip="The generated code grids (whole canvas), with task and "
                                                        "seeds; connect to Lumina-mGPT 2.0 Decode.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, width: int, height: int, cfg: float, temperature: float) -> bool | str:
        # not the task: ComfyUI 0.33 checks combos itself (one error under the input), execute checks it on 0.3.75
        return first_problem(*cls.problems(None, width, height, cfg, temperature))

    @classmethod
    def problems(cls, task, width, height, cfg, temperature) -> list[str | None]:
        return [choice_problem("task", task, TASKS), size_problem(width, height),
                *float_problems(cls, cfg=cfg, temperature=temperature)]

    @classmethod
    def execute(cls, model, prompt: str, task: str, width: int, height: int, seed: int, cfg: float, top_k: int,
                temperature: float, batch_size: int, condition=None, image_tokenizer=None, sjd=None,
                best_of_n=None, speed=None, sampling=None, kv_cache: str = "auto", start_from=None,
                keep_rows: int = 0, subject_description: str = DEFAULT_SUBJECT_DESCRIPTION) -> io.NodeOutput:
        require(*cls.problems(task, width, height, cfg, temperature))  # linked widgets
        engine = model.engine  # a Multi-GPU Loader's model answers as its worker group
        vq = image_tokenizer.engine if image_tokenizer is not None else None
        request = Request(prompt=prompt, task=task, width=width, height=height, seed=seed, cfg=cfg, top_k=top_k,
                          temperature=temperature, batch_size=batch_size, sjd=sjd, best_of_n=best_of_n,
                          sampling=sampling or {},
                          condition_codes=condition_codes(get_task(task), condition, width, height, engine),
                          prefix_codes=start_codes(start_from, engine),
                          keep_rows=(keep_rows or None) if start_from is not None else None,
                          subject_description=subject_description or None)
        # checked and planned first: a prompt or size the model cannot take fails before anything is loaded
        prepared = prepare_request(engine, request, image_tokenizer=vq)
        if prepared.warning:
            log.warning("Lumina-mGPT 2.0: %s", prepared.warning)
        extra = [image_tokenizer.patcher] if image_tokenizer is not None else []
        step, multi_gpu = None, getattr(model, "workers", None) is not None
        if not multi_gpu:  # the workers hold their own shards and apply the speed settings themselves
            # the cache format first: the memory reserved for generation depends on it
            engine.kv_cache_format = kv_cache_format(kv_cache, engine, *prepared.canvas, prepared.images_at_once,
                                                     prepared.guided, prepared.window, len(prepared.plan.cond_ids))
            memory.load_for_generation(model, prepared.streams, prepared.cache_tokens, prepared.window, extra=extra)
            step, note = step_function(speed, engine)  # after loading: CUDA graphs need the weights in place
            if note:
                log.info("Lumina-mGPT 2.0: %s", note)
        else:
            if kv_cache == "int8":  # the workers size and hold their own caches, in the compute dtype
                raise InputError("kv_cache int8 is not available with the Multi-GPU Loader yet: set kv_cache to "
                                 "auto or bf16 (splitting the model over cards already divides the cache).")
            if extra:
                mm.load_models_gpu(extra)
        # SJD's forwards are counted for the live tokens-per-forward figure (the workers report theirs at the end)
        forwards = CountingForward(step) if sjd is not None and step is not None else None
        decoder = prepared.decoder(forwards or step)
        plan = prepared.plan
        kept = prompt_rows(plan, engine.tokenizer.special)[plan.layout.prefix_rows - plan.kept_rows:] \
            if plan.kept_rows else None
        progress = SamplerProgress(cls.hidden.unique_id, model, plan.layout.gen_rows, plan.layout.w_lat,
                                   image_tokenizer=vq, forwards=forwards, warning=prepared.warning,
                                   panel_rows=plan.layout.h_lat // 2 if prepared.spec.dual_panel else None, kept=kept)
        outcome = run_request(prepared, engine, decoder=decoder, image_tokenizer=vq, progress=progress.on_rows,
                              cancel=progress.cancel, speed=speed)
        progress.finish(outcome.tokens_per_forward)
        mm.soft_empty_cache()
        return io.NodeOutput(LuminaTokens(codes=outcome.codes, layout=outcome.layout,
                                          num_codes=engine.tokenizer.special.num_image_codes, task=outcome.task,
                                          seeds=outcome.seeds, scores=outcome.scores, stats=outcome.stats))
