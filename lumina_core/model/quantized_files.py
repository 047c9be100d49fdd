"""Quantized checkpoints: quantizing while loading, and saving/loading a quantized safetensors folder.

Quantizing while loading (`from_pretrained(path, quantization="int8" | "int4")`): every tensor is read
with plain file reads into memory of its own (not from the memory-mapped shard, whose touched pages
would stay resident until the whole shard is released), and each linear layer is quantized as soon
as its weight has arrived, so the float copy lives for one layer: peak host memory stays near the
quantized size plus one layer.

A saved quantized folder holds config.json, the tokenizer files and safetensors shards whose header
metadata records the format ("lumina_quantization": "int8" | "int4", group size, head format).
Loading checks the tensors against it: a folder whose metadata says int4 but whose weights are
float (or whose files are truncated) is refused with an error saying what to do.
"""
from __future__ import annotations

import json
import os
import shutil
import struct

import torch
from torch import nn

from .safetensors_files import open_safetensors
from ..errors import CheckpointError, InputError
from ..memory.quant import INT4_GROUP, WEIGHT_FORMATS, Int4Linear, Int8Linear, quantized_linear, weight_format

META_FORMAT = "lumina_quantization"
META_GROUP = "lumina_int4_group_size"
META_HEAD = "lumina_head_format"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json", "trained_tasks.json")
_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
           "I8": torch.int8, "U8": torch.uint8, "I16": torch.int16, "I32": torch.int32, "I64": torch.int64,
           "BOOL": torch.bool}
_STORED = {"int8": "I8", "int4": "U8"}  # dtype of a quantized layer's `weight` in the file


# ----------------------------------------------------------------------------- reading shards

class ShardReader:
    """Reads single tensors of safetensors files with plain reads (no memory map), caching headers."""

    def __init__(self):
        self._headers: dict[str, tuple[int, dict]] = {}

    def header(self, file: str) -> tuple[int, dict]:
        if file not in self._headers:
            with open(file, "rb") as f:
                n = struct.unpack("<Q", f.read(8))[0]
                self._headers[file] = (8 + n, json.loads(f.read(n)))
        return self._headers[file]

    def __call__(self, file: str, name: str) -> torch.Tensor:
        base, header = self.header(file)
        info = header[name]
        begin, end = info["data_offsets"]
        buf = torch.empty(end - begin, dtype=torch.uint8)
        with open(file, "rb") as f:
            f.seek(base + begin)
            if f.readinto(memoryview(buf.numpy())) != end - begin:
                raise CheckpointError(f"{os.path.basename(file)} ends inside tensor {name}: the file is truncated. "
                                      "Re-download or re-save it.")
        return buf.view(_DTYPES[info["dtype"]]).reshape(info["shape"])


def file_metadata(file: str) -> dict:
    with open_safetensors(file) as f:  # its errors name truncated or corrupt files
        return f.metadata() or {}


def saved_format(files) -> dict | None:
    """The quantization recorded in a folder's shards ({format, group, head}), or None for a float folder."""
    found = {}
    for file in files:
        meta = file_metadata(file)
        found[file] = (meta.get(META_FORMAT), meta.get(META_GROUP), meta.get(META_HEAD))
    kinds = set(found.values())
    if len(kinds) > 1:
        raise CheckpointError("the shards of this folder record different quantizations "
                              f"({', '.join(os.path.basename(k) + ': ' + (v[0] or 'none') for k, v in found.items())}); "
                              "save the whole model again with Save Quantized.")
    fmt, group, head = kinds.pop()
    if fmt is None or fmt == "none":
        return None
    if fmt not in ("int8", "int4"):
        raise CheckpointError(f"this folder's metadata records quantization {fmt!r}; this version reads "
                              "'int8' and 'int4'. Update the node pack or re-save the model.")
    return {"format": fmt, "group": int(group or INT4_GROUP), "head": head or fmt}


# ----------------------------------------------------------------------------- loading

def _linears(model: nn.Module):
    return [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
            if isinstance(child, nn.Linear)]


def _path(model, module) -> str:
    return next(n for n, m in model.named_modules() if m is module)


def _headers(files, reader) -> dict:
    out = {}
    for file in files:
        out.update({k: v for k, v in reader.header(file)[1].items() if k != "__metadata__"})
    return out


def swap_in_shells_(model: nn.Module, saved: dict, dtype: torch.dtype, stored: dict) -> None:
    """Replace the meta model's float linears by quantized shells of the saved format's shapes (an int4
    layer's group from its stored scale, as narrow layers use a smaller group than the nominal one)."""
    head = getattr(model, "lm_head", None)
    for parent, name, child in _linears(model):
        fmt = saved["head"] if child is head else saved["format"]
        bias = child.bias is not None
        if fmt == "int4":
            scale = stored.get(f"{_path(model, child)}.scale")
            group = child.in_features // scale["shape"][1] if scale and len(scale["shape"]) == 2 \
                and scale["shape"][1] else saved["group"]
            shell = Int4Linear.empty(child.in_features, child.out_features, group, bias, dtype)
        else:
            shell = Int8Linear.empty(child.in_features, child.out_features, bias, dtype)
        setattr(parent, name, shell)


def check_saved_tensors(model: nn.Module, files, saved: dict, reader: ShardReader) -> None:
    """Every quantized layer's weight must be stored quantized: refuse float weights under int4 metadata."""
    where = _headers(files, reader)
    for name, m in model.named_modules():
        if isinstance(m, (Int8Linear, Int4Linear)):
            key = f"{name}.weight"
            want = _STORED["int4" if isinstance(m, Int4Linear) else "int8"]
            info = where.get(key)
            if info is not None and info["dtype"] != want:
                raise CheckpointError(
                    f"this folder's metadata says {saved['format']} but {key} is stored as {info['dtype']} "
                    f"{info['shape']}, not quantized ({want}). The folder was not written by Save Quantized "
                    "(or was edited); load the original float checkpoint with quantization set, or save it again.")


class StreamingQuantizer:
    """on_loaded(name) hook: quantizes each linear layer as soon as all its tensors are loaded."""

    def __init__(self, model: nn.Module, fmt: str, dtype: torch.dtype, group_size: int = INT4_GROUP):
        if fmt not in ("int8", "int4"):
            raise ValueError(f"quantization must be one of {WEIGHT_FORMATS}, got {fmt!r}")
        head = getattr(model, "lm_head", None)
        self.fmt, self.dtype, self.group = fmt, dtype, group_size
        self.targets = {}
        for parent, name, child in _linears(model):
            layer_fmt = "int8" if child is head else fmt  # the int4 plan keeps an int8 head (quantize_int4_)
            self.targets[_path(model, child)] = (parent, name, layer_fmt)

    def __call__(self, key: str) -> None:
        owner = key.rpartition(".")[0]
        target = self.targets.get(owner)
        if target is None:
            return
        parent, name, fmt = target
        layer = getattr(parent, name)
        if any(p.is_meta for p in layer.parameters()):
            return  # its bias is still to come
        setattr(parent, name, quantized_linear(layer, fmt, self.dtype, self.group))
        del self.targets[owner]


def prepare_quantized_load(model: nn.Module, files, quantization: str, dtype: torch.dtype, skip=()) -> dict:
    """The loader's hook (checkpoint.load_transformer): keyword arguments for load_state_streaming.

    A saved quantized folder: the meta model gets quantized shells and its tensors are checked against
    the metadata (`quantization` must be "none"/"auto" or the saved format). A float folder with
    quantization "int8"/"int4": tensors are read unmapped and each linear is quantized once loaded."""
    if quantization not in ("auto", *WEIGHT_FORMATS):
        raise CheckpointError(f"quantization must be one of auto, {', '.join(WEIGHT_FORMATS)}; got {quantization!r}")
    saved = saved_format(files)
    if saved is not None:
        if quantization not in ("auto", "none", saved["format"]):
            raise CheckpointError(f"this folder is already quantized to {saved['format']}; load it with quantization "
                                  f"{saved['format']} (or auto), or load the float checkpoint to get {quantization}.")
        reader = ShardReader()
        swap_in_shells_(model, saved, dtype, _headers(files, reader))
        check_saved_tensors(model, files, saved, reader)
        expected = {k: tuple(v.shape) for k, v in model.state_dict(keep_vars=True).items()
                    if not k.startswith("rotary.") and k not in skip}
        return {"expected_shapes": expected}
    if quantization in ("auto", "none"):
        return {}
    return {"read": ShardReader(), "on_loaded": StreamingQuantizer(model, quantization, dtype)}


# ----------------------------------------------------------------------------- saving

def save_quantized(model: nn.Module, folder: str, source: str | None = None, max_shard_bytes: int = 2 << 30) -> list[str]:
    """Write a quantized `model` (int8 or int4 layers) as a checkpoint folder that `from_pretrained` loads.

    source: the folder it was loaded from, whose tokenizer files are copied (default: the model's
    `source_path`). Returns the written shard paths."""
    from .checkpoint_writer import save_weights

    fmt = weight_format(model)
    if fmt == "none":
        raise CheckpointError("this model is not quantized: load it with quantization int8 or int4 first "
                              "(a float checkpoint is already the float folder).")
    source = source or getattr(model, "source_path", None)
    if source is None or not os.path.isfile(os.path.join(source, "config.json")):
        raise CheckpointError("save_quantized needs the source checkpoint folder (its tokenizer files are copied); "
                              "pass source=")
    if os.path.abspath(folder) == os.path.abspath(source):
        raise CheckpointError("save the quantized model into a new folder, not over its source checkpoint")
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise InputError(f"{folder} is a file, not a folder: choose another folder name.")
    os.makedirs(folder, exist_ok=True)
    stale = [n for n in os.listdir(folder) if n.endswith(".safetensors") or n == "model.safetensors.index.json"]
    for n in stale:
        os.remove(os.path.join(folder, n))
    for name in ("config.json", *TOKENIZER_FILES):  # copied verbatim (vocabulary map and extra fields included)
        if os.path.isfile(os.path.join(source, name)):
            shutil.copyfile(os.path.join(source, name), os.path.join(folder, name))
    head = getattr(model, "lm_head", None)
    head_fmt = "int4" if isinstance(head, Int4Linear) else "int8" if isinstance(head, Int8Linear) else fmt
    group = max((m.group_size for m in model.modules() if isinstance(m, Int4Linear)), default=INT4_GROUP)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("rotary.")}
    total = sum(v.numel() * v.element_size() for v in state.values())
    shards = max(1, -(-total // max_shard_bytes))
    meta = {META_FORMAT: fmt, META_GROUP: str(group), META_HEAD: head_fmt}
    return save_weights(folder, state, shards=shards, metadata=meta)
