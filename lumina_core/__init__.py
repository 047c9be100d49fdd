"""Lumina-mGPT 2.0 inference engine in pure PyTorch (no ComfyUI imports).

Public API:
    LuminaMGPT.from_pretrained(path, dtype=..., device=...)   the transformer
    MoVQGAN.from_file(path)                                    the image tokenizer (.encode / .decode)
    TextTokenizer.from_pretrained(path)                        prompt tokenizer + special ids
    generate(model, prompt, width, height, ...)                prompt (+ condition) -> code grids
    decode_images(movqgan, codes)                              code grids -> IMAGE [B, H, W, 3] in 0..1
"""
from .config import LuminaConfig
from .errors import CheckpointError, GenerationCancelled, InputError, LuminaError, TokenizerError
from .generate import GenerationResult, canvas_size, crop_codes, decode_images, encode_condition, generate
from .kv_cache import KVCache
from .logits import SamplingOptions
from .model import LuminaMGPT
from .movqgan import MoVQGAN
from .tasks import TASKS, ImageLayout, build_prompt, get_task
from .tokenizer import SpecialTokens, TextTokenizer

__all__ = [
    "LuminaMGPT", "LuminaConfig", "MoVQGAN", "TextTokenizer", "SpecialTokens", "generate", "GenerationResult",
    "decode_images", "encode_condition", "canvas_size", "crop_codes", "SamplingOptions", "KVCache", "TASKS",
    "ImageLayout", "build_prompt", "get_task", "LuminaError", "CheckpointError", "TokenizerError", "InputError",
    "GenerationCancelled",
]
