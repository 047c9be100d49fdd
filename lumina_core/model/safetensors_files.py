"""Safetensors files: opened with errors that name the file, their tensor shapes from the header alone, and
one tensor set into a module (the loaders' shared pieces: checkpoint.py, quantized_files.py, parallel/tp.py)."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import CheckpointError


def open_safetensors(file: str):
    """safe_open, memory-mapped, with a CheckpointError that names a missing, truncated or corrupt file."""
    from safetensors import safe_open
    try:
        return safe_open(file, framework="pt", device="cpu")
    except FileNotFoundError:
        raise CheckpointError(f"weight file missing: {file}") from None
    except Exception as e:  # SafetensorError: header or size mismatch
        raise CheckpointError(f"{file} is truncated or corrupt ({e}). Re-download this file.") from None


def safetensors_shapes(file: str) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, read from the header only."""
    with open_safetensors(file) as f:
        out = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    return out


def set_tensor(model: nn.Module, name: str, value: torch.Tensor) -> None:
    """model.<name> = value, as a buffer if it is one, else as a frozen parameter."""
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    if attr in module._buffers:
        module._buffers[attr] = value
    else:
        # setattr, not _parameters[...]: a host's layer may hold no weight until loaded (ComfyUI 0.33's
        # comfy.ops with dynamic VRAM sets `weight = None` as a plain attribute), which this replaces
        setattr(module, attr, nn.Parameter(value, requires_grad=False))
