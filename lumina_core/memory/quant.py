"""Weight-only quantized linear layers, the formats together: int8 (int8.py, one scale per output channel)
and int4 (int4.py, group-wise), which format a model is in, how many bytes a step reads, and one float layer
to either format. Importers use this module; int8.py and int4.py hold the layers and their kernels.
"""
from __future__ import annotations

import torch
from torch import nn

from .int4 import INT4_GROUP, INT4_KERNELS, Int4Linear, dequantize_int4, int4_group_size, int4_triton_works, \
    quantize_groupwise_int4, quantize_int4_  # noqa: F401 (the public names of the formats, in one place)
from .int8 import BACKENDS, KERNELS, HostCastable, Int8Linear, default_kernel, int8pack_works, quantize_int8_, \
    quantize_per_channel, triton_works  # noqa: F401

WEIGHT_FORMATS = ("none", "int8", "int4")


QUANTIZED_LINEARS = (Int8Linear, Int4Linear)


def quantized_linear(linear: nn.Module, fmt: str, dtype: torch.dtype | None = None,
                     group_size: int = INT4_GROUP) -> nn.Module:
    """One float layer (or a shard's slice of one) -> its int8 or int4 layer."""
    if fmt == "int8":
        return Int8Linear.from_linear(linear, dtype=dtype)
    if fmt == "int4":
        return Int4Linear.from_linear(linear, group_size, dtype=dtype)
    raise ValueError(f"weight format must be 'int8' or 'int4', got {fmt!r}")


def weight_format(model: nn.Module) -> str:
    """"int4", "int8" or "none": the format of the transformer body's linear layers."""
    kinds = {type(m) for m in model.modules() if isinstance(m, (nn.Linear, *QUANTIZED_LINEARS))}
    return "int4" if Int4Linear in kinds else "int8" if Int8Linear in kinds else "none"


def linear_weight_bytes(model: nn.Module, head_rows: tuple[int, int] | None = None) -> int:
    """Bytes of linear weights one decode step reads (the head only over `head_rows` when given)."""
    total = 0
    head = getattr(model, "lm_head", None)
    for m in model.modules():
        if isinstance(m, (nn.Linear, *QUANTIZED_LINEARS)):
            w = m.weight
            rows = w.shape[0]
            if m is head and head_rows is not None:
                rows = head_rows[1] - head_rows[0]
            per_row = w.shape[1] * w.element_size()
            if isinstance(m, Int8Linear):
                per_row += m.scale.element_size()
            elif isinstance(m, Int4Linear):
                per_row += (m.scale[0].numel() + m.zero[0].numel()) * m.scale.element_size()
            total += rows * per_row
    return total
