"""Writing checkpoints in the released layout (config.json + safetensors shards + tokenizer.json).

Used to build small models of the real architecture (tests, the demo model, benchmarks); the
loader treats them exactly like the 7B release.
"""
from __future__ import annotations

import json
import os

import torch

from .config import LuminaConfig
from .tokenizer import GRID_BASE, IMAGE_CODE_PREFIX, IMAGE_END, IMAGE_START, ROW_END, TURN_SEPARATOR

BOS_TOKEN = "<|im_end|>"
# Special tokens upstream names besides the ones the sampler uses (kept so layouts look real).
EXTRA_RESERVED = ["<reserved08796>", "<reserved08797>", "<reserved08798>"]


def image_code_token(code: int) -> str:
    return f"{IMAGE_CODE_PREFIX}_{code:05d}>"


def train_text_tokenizer(texts, vocab_size: int = 512):
    """A byte-level BPE tokenizer (the released one is a Qwen byte-level BPE) trained on `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS_TOKEN], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts), trainer)
    return tok


def add_lumina_tokens(tok, num_codes: int, max_grid_units: int = 40, layout: str = "released") -> dict[str, int]:
    """Add Lumina's special, grid and image-code tokens; returns name -> id.

    layout 'released': specials, grid tokens, image codes, then the turn separator (the order of the
    7B vocabulary). layout 'codes_first': image codes before everything else (a different id
    layout, to prove nothing is hard-coded).
    """
    from tokenizers import AddedToken

    def add(names):
        tok.add_special_tokens([AddedToken(n, special=True, normalized=False) for n in names])

    specials = [IMAGE_START, IMAGE_END] + EXTRA_RESERVED + [ROW_END]
    grids = [f"<reserved{GRID_BASE + n:05d}>" for n in range(1, max_grid_units + 1)]
    codes = [image_code_token(c) for c in range(num_codes)]
    if layout == "released":
        for group in (specials, grids, codes, [TURN_SEPARATOR]):
            add(group)
    elif layout == "codes_first":
        for group in (codes, [TURN_SEPARATOR], grids, specials):
            add(group)
    else:
        raise ValueError(f"unknown layout {layout!r}")
    return tok.get_vocab(with_added_tokens=True)


def save_tokenizer(folder: str, tok, bos_token: str = BOS_TOKEN) -> None:
    os.makedirs(folder, exist_ok=True)
    tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"bos_token": None, "eos_token": bos_token, "tokenizer_class": "PreTrainedTokenizerFast"}, f, indent=1)


def save_config(folder: str, config: LuminaConfig, vocabulary_map: dict | None = None, extra: dict | None = None):
    os.makedirs(folder, exist_ok=True)
    d = config.to_dict()
    d["vocabulary_map"] = vocabulary_map or config.vocabulary_map or {}
    d.update(extra or {})
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(d, f, indent=1)


def save_weights(folder: str, state: dict[str, torch.Tensor], shards: int = 1, dtype=None,
                 metadata: dict[str, str] | None = None) -> list[str]:
    """Write model.safetensors, or `shards` files plus model.safetensors.index.json; `metadata` goes
    into every shard's header (quantized_files.py records the quantization there)."""
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in state.items()}
    if shards <= 1:
        path = os.path.join(folder, "model.safetensors")
        save_file(state, path, metadata={"format": "pt", **(metadata or {})})
        return [path]
    keys = sorted(state)
    groups = [keys[i::shards] for i in range(shards)]
    weight_map, paths, total = {}, [], 0
    for i, group in enumerate(groups):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: state[k] for k in group}, os.path.join(folder, name),
                  metadata={"format": "pt", **(metadata or {})})
        paths.append(os.path.join(folder, name))
        for k in group:
            weight_map[k] = name
            total += state[k].numel() * state[k].element_size()
    with open(os.path.join(folder, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
    return paths


def save_checkpoint(folder: str, model, tok, shards: int = 1, dtype=None) -> None:
    """Save a LuminaMGPT `model` and its tokenizers.Tokenizer `tok` as a checkpoint folder."""
    vocab = tok.get_vocab(with_added_tokens=True)
    save_config(folder, model.config, {k: v for k, v in vocab.items() if k.startswith("<")})
    save_tokenizer(folder, tok)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("rotary.")}
    save_weights(folder, state, shards=shards, dtype=dtype)
