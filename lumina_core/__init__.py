"""Lumina-mGPT 2.0 inference engine in pure PyTorch (no ComfyUI imports).

Everything a script needs is importable from here, whatever room it lives in (lumina_core/README.md):
    LuminaMGPT.from_pretrained(path, dtype=..., device=...)   the transformer
    MoVQGAN.from_file(path)                                    the image tokenizer (.encode / .decode)
    TextTokenizer.from_pretrained(path)                        prompt tokenizer + special ids
    generate(model, prompt, width, height, ...)                prompt (+ condition) -> code grids
    decode_images(movqgan, codes)                              code grids -> IMAGE [B, H, W, 3] in 0..1
    generate(..., decoder=SJDecoder(window=16))                speculative Jacobi decoding (lossless)
    generate(..., prefix_codes=codes, keep_rows=k)             keep the top k rows, paint the rest (re-roll, extend)
    encode_image(movqgan, picture, width, height)              any picture -> codes to keep rows of
    best_of_n(model, prompt, ..., n=8, scorer=...)             N candidates, scored (likelihood or CLIP)
    best_of_n(..., prune_after_rows=r, keep=2)                 score at row r, finish only the 2 best
    StepRunner(model) / FastPlain(runner)                      CUDA-graph step with bucketed attention
    quantize_int8_(model) / quantize_int4_(model)              int8 / group-wise int4 weight-only linear layers
    save_quantized(model, folder)                              a quantized folder from_pretrained loads as saved
    plan_memory(config, width, height, free_bytes)             what fits a card: weights, cache, embeddings
    with kv_cache_format(model, "int8"): generate(...)         the 8-bit KV cache
    Request / prepare_request / run_request                    one request to code grids: what the Sampler runs
    TPWorkers(path, "cuda:0,cuda:1")                           a tensor-parallel worker group held by one process
    init_group / init_env_group / load_sharded / leave_group   tensor parallelism in a script (torchrun or your own)
"""
from .errors import CheckpointError, GenerationCancelled, InputError, LuminaError, TokenizerError
from .layout import ImageLayout
from .memory.kv_cache import KVCache, kv_cache_format
from .memory.placement import move_embeddings_to_host_
from .memory.planner import plan_memory
from .memory.quant import Int4Linear, Int8Linear, quantize_int4_, quantize_int8_
from .image.movqgan import MoVQGAN
from .model.config import LuminaConfig
from .model.quantized_files import save_quantized
from .model.tokenizer import SpecialTokens, TextTokenizer
from .model.transformer import LuminaMGPT
from .decoding.best_of_n import BestOfNResult, best_of_n
from .decoding.fast import FastPlain, StepRunner
from .decoding.generate import (GenerationResult, canvas_size, crop_codes, decode_images, encode_condition,
                                encode_image, generate)
from .decoding.logits import SamplingOptions
from .decoding.scorers import CLIPScorer, LikelihoodScorer
from .decoding.sjd import SJDecoder
from .decoding.tasks import TASKS, build_prompt, get_task
from .parallel.group import Rendezvous, init_env_group, init_group, leave_group
from .parallel.tp import Shard, load_sharded
from .parallel.workers import TPWorkers
from .request import Request, prepare_request, run_request

__all__ = [
    "LuminaMGPT", "LuminaConfig", "MoVQGAN", "TextTokenizer", "SpecialTokens", "generate", "GenerationResult",
    "decode_images", "encode_condition", "encode_image", "canvas_size", "crop_codes", "SamplingOptions", "KVCache", "TASKS",
    "ImageLayout", "build_prompt", "get_task", "LuminaError", "CheckpointError", "TokenizerError", "InputError",
    "GenerationCancelled", "SJDecoder", "best_of_n", "BestOfNResult", "LikelihoodScorer", "CLIPScorer", "StepRunner",
    "FastPlain", "quantize_int8_", "Int8Linear", "quantize_int4_", "Int4Linear", "save_quantized", "plan_memory",
    "kv_cache_format", "move_embeddings_to_host_", "Request", "prepare_request", "run_request", "TPWorkers",
    "Rendezvous", "init_group", "init_env_group", "leave_group", "load_sharded", "Shard",
]
