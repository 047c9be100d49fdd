"""Loading the transformer from a Hugging Face style checkpoint folder, strictly and with low memory.

The module tree is built on the meta device (no random weights), then every tensor is read from
its safetensors shard (memory-mapped) and converted straight to the target dtype and device, one
tensor at a time: peak host memory stays near one copy of the weights.
"""
from __future__ import annotations

import json
import logging
import os

import torch
from torch import nn

from .config import read_config
from .safetensors_files import open_safetensors, safetensors_shapes, set_tensor
from ..errors import CheckpointError

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
IGNORED_PREFIXES = ("model.vqmodel.",)  # Chameleon's VQ encoder; unused, absent from the release


def looks_like_movqgan(keys) -> bool:
    keys = set(keys)
    return "quantize.embedding.weight" in keys or any(k.startswith("encoder.conv_in") for k in keys)


def looks_like_transformer(keys) -> bool:
    return any(k.startswith("model.embed_tokens") or k.startswith("model.layers.") for k in keys)


def weight_files(folder: str) -> dict[str, list[str]]:
    """Shard path -> tensor names it should hold, from model.safetensors.index.json or one model.safetensors."""
    index = os.path.join(folder, "model.safetensors.index.json")
    single = os.path.join(folder, "model.safetensors")
    if os.path.isfile(index):
        try:
            with open(index, "r", encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index} is not a valid safetensors index ({e}); re-download it.") from None
        files: dict[str, list[str]] = {}
        for key, shard in weight_map.items():
            files.setdefault(os.path.join(folder, shard), []).append(key)
        missing = [os.path.basename(p) for p in files if not os.path.isfile(p)]
        if missing:
            present = sorted(n for n in os.listdir(folder) if n.endswith(".safetensors"))
            raise CheckpointError(f"checkpoint shard(s) missing in {folder}: {', '.join(sorted(missing))} "
                                  f"(found: {', '.join(present) or 'none'}). Download every file listed in "
                                  "model.safetensors.index.json.")
        return files
    if os.path.isfile(single):
        return {single: None}
    present = sorted(os.listdir(folder))
    raise CheckpointError(f"no model.safetensors or model.safetensors.index.json in {folder} "
                          f"(found: {', '.join(present[:12]) or 'nothing'}).")


def check_transformer_path(path: str) -> None:
    if os.path.isfile(path):
        if path.endswith(PICKLE_SUFFIXES):
            raise CheckpointError(f"{os.path.basename(path)} is a pickle checkpoint (the MoVQGAN image tokenizer "
                                  "is shipped as movqgan_270M.ckpt). The Lumina-mGPT transformer is a folder with "
                                  "config.json, model*.safetensors and tokenizer.json; load the .ckpt with the "
                                  "image-tokenizer loader instead.")
        if path.endswith(".safetensors"):
            keys = safetensors_shapes(path).keys()
            if looks_like_movqgan(keys):
                raise CheckpointError(f"{os.path.basename(path)} is a MoVQGAN image tokenizer, not the transformer; "
                                      "load it with the image-tokenizer loader.")
            raise CheckpointError(f"pass the checkpoint folder that holds {os.path.basename(path)}, config.json and "
                                  "tokenizer.json, not the file itself.")
        raise CheckpointError(f"{path} is not a checkpoint folder.")
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint folder not found: {path}")


def checkpoint_shapes(cls, cfg) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape that a checkpoint of `cfg` holds, from the module tree built with plain torch.nn
    layers on the meta device (free). Not from the model being loaded: a host's layers may create their
    weights lazily, on meta or not at all until loaded (ComfyUI 0.33's dynamic VRAM)."""
    with torch.device("meta"):
        reference = cls(cfg, operations=None, device="meta")
    return {n: tuple(p.shape) for n, p in reference.named_parameters()}


def load_state_streaming(model: nn.Module, files: dict[str, list[str] | None], dtype, device,
                         ignore_prefixes=IGNORED_PREFIXES, skip=(), transform=None, expected_shapes=None,
                         read=None, on_loaded=None) -> None:
    """Strictly load every tensor of `model` from safetensors `files` (model built on the meta device).

    transform(name, slice) -> tensor: read only part of a tensor (a tensor-parallel shard) from its
    safetensors slice (index it like a tensor: slice[a:b], slice[:, a:b]); expected_shapes: the
    checkpoint shapes the strict check compares against when the model holds such parts.
    read(file, name) -> tensor: read whole tensors another way (quantized_files reads them unmapped);
    on_loaded(name): called after each tensor is set (quantized_files quantizes each completed layer).
    """
    expected = expected_shapes or {n: tuple(p.shape) for n, p in model.named_parameters()}
    found: dict[str, tuple[str, tuple[int, ...]]] = {}
    for file, listed in files.items():
        shapes = safetensors_shapes(file)
        if listed is not None:
            absent = sorted(set(listed) - set(shapes))
            if absent:
                raise CheckpointError(f"{os.path.basename(file)} lacks tensors that the index says it holds: "
                                      f"{', '.join(absent[:5])}. The shard is incomplete; re-download it.")
        for k, shape in shapes.items():
            if k.startswith(tuple(ignore_prefixes)) or k in skip:
                continue
            found[k] = (file, shape)
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if looks_like_movqgan(found) and not looks_like_transformer(found):
        raise CheckpointError("these weights are a MoVQGAN image tokenizer, not the Lumina-mGPT transformer; load "
                              "them with the image-tokenizer loader.")
    if missing:
        raise CheckpointError(f"{len(missing)} tensor(s) missing from the checkpoint, e.g. {', '.join(missing[:5])}.")
    if unexpected:
        raise CheckpointError(f"{len(unexpected)} unexpected tensor(s) in the checkpoint, e.g. "
                              f"{', '.join(unexpected[:5])}. Is config.json from the same checkpoint?")
    for k, (file, shape) in found.items():
        if shape != expected[k]:
            raise CheckpointError(f"tensor {k} in {os.path.basename(file)} has shape {list(shape)}, the model "
                                  f"expects {list(expected[k])}. config.json and the weights do not match.")
    by_file: dict[str, list[str]] = {}
    for k, (file, _) in found.items():
        by_file.setdefault(file, []).append(k)
    for file, keys in by_file.items():
        with open_safetensors(file) as f:
            for k in keys:
                try:
                    t = (read(file, k) if read is not None else
                         f.get_tensor(k) if transform is None else transform(k, f.get_slice(k)))
                except Exception as e:
                    raise CheckpointError(f"could not read {k} from {file} ({e}); the file is corrupt.") from None
                target = dtype if t.is_floating_point() else t.dtype
                set_tensor(model, k, t.to(device=device, dtype=target))
                del t
                if on_loaded is not None:
                    on_loaded(k)


def load_transformer(cls, path: str, dtype=torch.bfloat16, device="cpu", operations=None, attention="sdpa",
                     quantization: str = "none"):
    from .tokenizer import TextTokenizer

    check_transformer_path(path)
    cfg = read_config(path)
    files = weight_files(path)
    shapes = {}
    for file in files:
        shapes.update(safetensors_shapes(file))
    if looks_like_movqgan(shapes) and not looks_like_transformer(shapes):
        raise CheckpointError(f"{path} holds a MoVQGAN image tokenizer, not the transformer.")
    for which in ("q", "k"):
        key = f"model.layers.0.self_attn.{which}_norm.weight"
        if key in shapes:
            shape = shapes[key]
            setattr(cfg, f"{which}_norm_groups", shape[0] if len(shape) == 2 else 1)
    cfg.validate()
    device = torch.device(device)
    with torch.device("meta"):
        model = cls(cfg, operations=operations, device="meta", dtype=dtype)
    skip = ("lm_head.weight",) if cfg.tie_word_embeddings else ()
    expected = checkpoint_shapes(cls, cfg)
    # quantized weights (quantized_files.py): a saved quantized folder loads into quantized layers (its own
    # expected shapes); with quantization int8/int4 a float folder is quantized layer by layer as it streams
    from .quantized_files import prepare_quantized_load
    hooks = {"expected_shapes": expected, **prepare_quantized_load(model, files, quantization, dtype, skip)}
    expected = hooks["expected_shapes"]
    load_state_streaming(model, files, dtype, device, skip=skip, **hooks)
    # the cos/sin table is computed, not stored: build it for real outside the meta context
    model.rotary = type(model.rotary)(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta, device)
    loaded = {**dict(model.named_parameters()), **dict(model.named_buffers())}  # quantized layers hold buffers
    leftovers = [n for n in expected if n not in skip and (n not in loaded or loaded[n].is_meta)]
    leftovers += [n for n, p in loaded.items() if p.is_meta and n not in leftovers]
    if leftovers:
        raise CheckpointError(f"parameters left unloaded: {leftovers[:5]}")
    model.eval().requires_grad_(False)
    model.source_path = path  # save_quantized copies its tokenizer files
    model.set_attention_backend(attention)
    tok_file = next((os.path.join(path, n) for n in ("tokenizer.json", "tokenizer.model")
                     if os.path.isfile(os.path.join(path, n))), None)
    if tok_file is not None:
        model.tokenizer = TextTokenizer.from_pretrained(path)
        model.tokenizer.check_model_vocab(cfg.vocab_size)
    else:
        log.warning("no tokenizer.json in %s; pass a TextTokenizer to generation explicitly", path)
    return model
