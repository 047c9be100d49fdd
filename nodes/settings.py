"""Settings nodes (kijai style): optional sampler inputs that keep the sampler itself small."""
from __future__ import annotations

import comfy.model_management as mm
import folder_paths
from comfy_api.latest import io

from ..lumina_core import CLIPScorer, InputError, LikelihoodScorer, StepRunner
from ..lumina_core.decoding.fast import compile_layers
from ..lumina_core.decoding.logits import CFG_MODES
from ..lumina_core.model.files import list_clip_folders
from ..lumina_core.decoding.sjd import INITS, MODES, SJDecoder

# the SJD Settings node's draft_tree choices: SJDecoder keywords (besides the window widget)
DRAFT_TREES = {"auto": {}, "off": {}, "4 candidates": {"candidates": 4, "branch": 8},
               "8 candidates": {"candidates": 8, "branch": 8}}
RELAXED_GROUP = 8  # codes per group for the lossy relaxed acceptance (BENCHMARKS.md, SJD)
from .types import ADVANCED, BestOfNType, SamplingType, SJDType, SpeedType
from .validation import choice_problem, first_problem, float_problems, require

SCORERS = ("likelihood", "clip")
MAX_PRUNE_ROWS = 511  # rows of a 4096-px image, less the one that must be left to paint
NO_CLIP = "none"
CLIP_FOLDER_KEY = "clip_vision"


class CountingForward:
    """The cached-step function SJD calls, counting its forwards so the sampler can show tokens per forward
    while it runs."""

    def __init__(self, forward_step):
        self.forward_step = forward_step
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.forward_step(*args, **kwargs)


class SJDSettings(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LuminaMGPT2SJDSettings",
            display_name="Lumina-mGPT 2.0 SJD Settings",
            category=ADVANCED,
            description="Speculative Jacobi decoding: each forward checks guessed codes and keeps the ones the "
                        "model agrees with, so an image needs fewer forwards. 'exact' gives the same distribution of "
                        "images as plain sampling. By default every forward also tries a few other codes where a "
                        "guess is likely to fail (a draft tree), and the device decides how many: about 1.3x fewer "
                        "forwards again, still exact.",
            inputs=[
                io.Int.Input("window", default=16, min=2, max=64,
                             tooltip="Codes per forward on the main line of guesses: the last known code plus "
                                     "window-1 guesses (16 as upstream). Used when draft_tree is not auto."),
                io.Combo.Input("init", options=list(INITS), default="random",
                               tooltip="How new guesses start: random codes, or the code one row above (spatial)."),
                io.Combo.Input("mode", options=list(MODES), default="exact",
                               tooltip="exact: lossless (same images in distribution as without SJD). upstream: "
                                       "upstream's acceptance rule, not lossless; for comparisons."),
                io.Combo.Input("draft_tree", options=list(DRAFT_TREES), default="auto", optional=True,
                               tooltip="auto: the window and how many other codes each forward tries, from what this "
                                       "GPU runs for free alongside reading the weights (the window widget is then "
                                       "not used). off: one line of guesses, as upstream. 4 / 8 candidates: the "
                                       "window widget's line plus 3 or 7 other codes for the next position, each "
                                       "followed by 8 guesses. All are exact."),
                io.Boolean.Input("relaxed", default=False, optional=True,
                                 tooltip="CHANGES THE IMAGES' DISTRIBUTION (lossy): a guess also counts as right when "
                                         "the model favours codes similar to it. Fewer forwards, slightly different "
                                         "images than plain sampling would make. Off: exact."),
            ],
            outputs=[SJDType.Output(display_name="sjd", tooltip="Connect to the sampler's 'sjd' input.")],
        )

    @classmethod
    def execute(cls, window: int, init: str, mode: str, draft_tree: str = "auto", relaxed: bool = False) -> io.NodeOutput:
        require(choice_problem("init", init, INITS), choice_problem("mode", mode, MODES),
                choice_problem("draft_tree", draft_tree, DRAFT_TREES))
        shape = dict(DRAFT_TREES[draft_tree], window=window) if draft_tree != "auto" else {"window": "auto"}
        if mode == "upstream":  # upstream's rule is one line of guesses
            shape = {"window": window}
        settings = {**shape, "init": init, "mode": mode, "relaxed": RELAXED_GROUP if relaxed else 0}
        if "branch" in settings:
            settings["branch"] = min(settings["branch"], max(0, window - 2))
        SJDecoder(**settings)  # refuses a shape it cannot run, with what to change
        return io.NodeOutput(settings)


class SamplingSettings(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LuminaMGPT2SamplingSettings",
            display_name="Lumina-mGPT 2.0 Sampling Settings",
            category=ADVANCED,
            description="Less common sampling options for the sampler's 'sampling' input. Not connected: all off, "
                        "which is upstream's sampling with the guidance scale you set.",
            inputs=[
                io.Float.Input("top_p", default=1.0, min=0.01, max=1.0, step=0.01, round=0.001,
                               tooltip="Nucleus sampling: keep the most likely codes up to this probability mass "
                                       "(after top-k and temperature). 1 = off."),
                io.Float.Input("top_n_sigma", default=0.0, min=0.0, max=10.0, step=0.1, round=0.01,
                               tooltip="Keep codes whose logit is within n standard deviations of the best. "
                                       "0 = off; upstream's SJD script uses 1."),
                io.Int.Input("guidance_top_k", default=0, min=0, max=65536,
                             tooltip="Apply guidance only among the k codes the prompt-conditioned model finds most "
                                     "likely. 0 = off (upstream). Lets small models take strong cfg (the shapes "
                                     "demo handles cfg 4 with guidance_top_k 4, see BENCHMARKS.md)."),
                io.Combo.Input("cfg_mode", options=list(CFG_MODES), default="plain",
                               tooltip="plain: the cfg you set. upstream: reproduce upstream's schedule, which turns "
                                       "any cfg between 1 and 4 into 4 and decays it towards 4 (for comparisons)."),
            ],
            outputs=[SamplingType.Output(display_name="sampling", tooltip="Connect to the sampler's 'sampling' input.")],
        )

    @classmethod
    def validate_inputs(cls, top_p: float, top_n_sigma: float) -> bool | str:
        return first_problem(*float_problems(cls, top_p=top_p, top_n_sigma=top_n_sigma))

    @classmethod
    def execute(cls, top_p: float, top_n_sigma: float, guidance_top_k: int, cfg_mode: str) -> io.NodeOutput:
        require(cls.validate_inputs(top_p, top_n_sigma), choice_problem("cfg_mode", cfg_mode, CFG_MODES))
        return io.NodeOutput({"top_p": top_p, "top_n_sigma": top_n_sigma, "guidance_top_k": guidance_top_k,
                              "cfg_mode": cfg_mode})


class SpeedSettings(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LuminaMGPT2SpeedSettings",
            display_name="Lumina-mGPT 2.0 Speed Settings",
            category=ADVANCED,
            description="GPU decode-loop options. CUDA graphs replay each decoding step as one launch instead of "
                        "hundreds of small kernels (about 3x faster per step on an H200 in bench/gpu.py); compiled "
                        "layers fuse the small kernels further. Used only when the whole model sits on a CUDA GPU "
                        "(not in low-VRAM partial loading); otherwise the sampler runs its normal loop.",
            inputs=[
                io.Boolean.Input("cuda_graphs", default=True,
                                 tooltip="Capture each decoding step as a CUDA graph (a few seconds of capture per "
                                         "image, then much faster steps)."),
                io.Boolean.Input("compile_layers", default=False,
                                 tooltip="torch.compile the decoder layers (needs a working Triton; the first image "
                                         "pays the compilation, later ones reuse it)."),
                io.Int.Input("bucket", default=512, min=64, max=4096, step=64,
                             tooltip="Attention length is rounded up to a multiple of this: one captured graph per "
                                     "bucket. Smaller reads fewer cache bytes but captures more graphs."),
            ],
            outputs=[SpeedType.Output(display_name="speed", tooltip="Connect to the sampler's 'speed' input.")],
        )

    @classmethod
    def execute(cls, cuda_graphs: bool, compile_layers: bool, bucket: int) -> io.NodeOutput:
        return io.NodeOutput({"cuda_graphs": cuda_graphs, "compile_layers": compile_layers, "bucket": bucket})


def fully_on_cuda(engine) -> bool:
    """CUDA graphs capture weight addresses: only safe when every weight already lives on the GPU (a
    low-VRAM partial load copies weights from system memory during each step)."""
    tensors = list(engine.parameters()) + list(engine.buffers())
    return bool(tensors) and all(t.device.type == "cuda" for t in tensors)


def step_function(settings: dict | None, engine):
    """The cached-step function the sampler should use: a StepRunner when the speed settings apply, else
    the model's own forward_step. Returns (step, note for the log or None)."""
    if settings is None:
        return engine.forward_step, None
    if not fully_on_cuda(engine):
        compile_layers(engine, enable=False)
        return engine.forward_step, "speed settings skipped: the model is not fully on a CUDA GPU"
    compile_layers(engine, enable=settings["compile_layers"])
    return StepRunner(engine, bucket=settings["bucket"], graphs=settings["cuda_graphs"]), None


def clip_folders() -> dict[str, str]:
    """transformers CLIPModel folders inside models/clip_vision/, then the demo's verifier."""
    return list_clip_folders(folder_paths.get_folder_paths(CLIP_FOLDER_KEY))


class BestOfNSettings(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LuminaMGPT2BestOfNSettings",
            display_name="Lumina-mGPT 2.0 Best-of-N Settings",
            category=ADVANCED,
            description="Generate n candidates (seed, seed+1, ...) and score each; the sampler then outputs all "
                        "of them with their scores, and Select Best keeps the best. Any candidate can be "
                        "regenerated alone with its own seed.",
            inputs=[
                io.Int.Input("n", default=4, min=1, max=64, tooltip="Candidates to generate."),
                io.Combo.Input("scorer", options=list(SCORERS), default="likelihood",
                               tooltip="likelihood: the model's own mean log-probability of its codes (free, "
                                       "no extra weights). clip: CLIP image-text similarity (needs clip_model)."),
                io.Combo.Input("clip_model", options=[NO_CLIP, *clip_folders()], default=NO_CLIP,
                               tooltip="For the clip scorer: a transformers CLIPModel folder (config.json, weights, "
                                       "tokenizer and preprocessor files) inside models/clip_vision/, e.g. "
                                       "openai/clip-vit-large-patch14."),
                io.Int.Input("chunk_size", default=0, min=0, max=64,
                             tooltip="Candidates generated together. 0: as many as fit in free memory."),
                io.Int.Input("prune_after_rows", default=0, min=0, max=MAX_PRUNE_ROWS, optional=True,
                             tooltip="Early pruning: paint every candidate down to this row (a row is 8 px), score "
                                     "the partial pictures, and finish only the 'keep' best. Most of the time goes "
                                     "to candidates worth finishing, and the dropped ones' memory goes to the rest. "
                                     "0: no pruning, every candidate is finished. With SJD connected the first "
                                     "rows are painted plainly and SJD finishes the kept ones."),
                io.Int.Input("keep", default=2, min=1, max=64, optional=True,
                             tooltip="With prune_after_rows: how many candidates to finish (fewer than n). Each "
                                     "keeps its seed: it is exactly the image that seed makes alone (with SJD: "
                                     "what re-rolling its first rows with that seed makes)."),
            ],
            outputs=[BestOfNType.Output(display_name="best_of_n", tooltip="Connect to the sampler's 'best_of_n' "
                                                                         "input.")],
        )

    @classmethod
    def validate_inputs(cls, scorer: str, clip_model: str) -> bool | str:
        needs_clip = None if scorer != "clip" or clip_model != NO_CLIP else \
            "the clip scorer needs a clip_model: put a transformers CLIPModel folder in models/clip_vision/"
        return first_problem(choice_problem("scorer", scorer, SCORERS),
                             choice_problem("clip_model", clip_model, [NO_CLIP, *clip_folders()]), needs_clip)

    @classmethod
    def execute(cls, n: int, scorer: str, clip_model: str, chunk_size: int, prune_after_rows: int = 0,
                keep: int = 2) -> io.NodeOutput:
        require(cls.validate_inputs(scorer, clip_model))
        if prune_after_rows and not 1 <= keep < n:
            raise InputError(f"keep must be fewer than the n = {n} candidates to prune any (got keep {keep}): lower "
                             "keep, raise n, or set prune_after_rows to 0.")
        if scorer == "clip":  # kept off the GPU between scorings, where ComfyUI does not account for it
            chosen = CLIPScorer(clip_folders()[clip_model], device=mm.get_torch_device(),
                                offload_device=mm.unet_offload_device())
        else:
            chosen = LikelihoodScorer()
        return io.NodeOutput({"n": n, "scorer": chosen, "chunk_size": chunk_size or None,
                              "prune_after_rows": prune_after_rows, "keep": keep if prune_after_rows else None})
