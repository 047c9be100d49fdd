"""int4 weight-only linear layers: group-wise scale and zero over `group_size` input columns, round-to-nearest,
no calibration data.

Int4Linear stores two 4-bit codes per byte in one portable layout (so a saved folder loads anywhere)
with a scale and zero per group: w = (q - 8) * scale + zero. Kernels:
- "dequant": rebuild the weight (or the head's rows) in the compute dtype and F.linear; works on
  every device (the CPU path and the tests' reference);
- "triton": our Triton kernel (triton_kernels.w4_matmul) reading the portable layout directly, the
  default on CUDA when it is probed to work. Why hand-written: torch's tinygemm int4 kernel (what
  torchao's int4 weight-only config runs) needs its own tiled, device-specific layout; keeping both
  that and the portable copy would double the int4 bytes on a 12 GB card, and converting in place
  would make the layers unsaveable and unmovable between devices. torchao is not required.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .int8 import ROWS_PER_CHUNK, HostCastable, Int8Linear
from .triton_kernels import available as triton_available
from .triton_kernels import w4_block_k, w4_matmul

INT4_KERNELS = ("auto", "triton", "dequant")
INT4_GROUP = 128


def int4_group_size(in_features: int, group_size: int = INT4_GROUP) -> int:
    """The group actually used: `group_size`, or the largest even divisor of in_features below it
    (small test models have widths like 160); the real model's widths (4096, 11008) take 128."""
    for g in range(min(group_size, in_features), 1, -1):
        if in_features % g == 0 and g % 2 == 0:
            return g
    raise ValueError(f"int4 needs an even number of input features, got {in_features}")


def quantize_groupwise_int4(weight: torch.Tensor, group_size: int = INT4_GROUP, dtype: torch.dtype = torch.float32):
    """float [out, in] -> (packed uint8 [out, in/2], scale [out, in/g], zero [out, in/g]) in `dtype`,
    with w ~= (q - 8) * scale + zero, q in 0..15, round-to-nearest over each group's min..max.
    q is chosen against the scale and zero as stored in `dtype`, so their rounding costs nothing extra."""
    out_f, in_f = weight.shape
    g = int4_group_size(in_f, group_size)
    packed = torch.empty(out_f, in_f // 2, dtype=torch.uint8, device=weight.device)
    scale = torch.empty(out_f, in_f // g, dtype=dtype, device=weight.device)
    zero = torch.empty_like(scale)
    for a in range(0, out_f, ROWS_PER_CHUNK):  # row blocks: bounded float32 temporaries
        w = weight[a:a + ROWS_PER_CHUNK].detach().float()
        rows = w.shape[0]
        w = w.reshape(rows, in_f // g, g)
        lo, hi = w.amin(-1), w.amax(-1)
        s = ((hi - lo) / 15).clamp(min=1e-8).to(dtype)
        z = (lo + 8 * s.float()).to(dtype)
        q = torch.round((w - z.float()[..., None]) / s.float()[..., None] + 8).clamp_(0, 15).to(torch.uint8)
        q = q.reshape(rows, in_f)
        packed[a:a + rows] = q[:, 0::2] | (q[:, 1::2] << 4)
        scale[a:a + rows], zero[a:a + rows] = s, z
    return packed, scale, zero


def dequantize_int4(packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of quantize_groupwise_int4 (any rows slice of it): [out, in] in `dtype`."""
    out_f, half = packed.shape
    groups = scale.shape[1]
    q = torch.stack((packed & 15, packed >> 4), dim=-1).reshape(out_f, groups, 2 * half // groups)
    w = (q.to(dtype) - 8) * scale.to(dtype)[..., None] + zero.to(dtype)[..., None]
    return w.reshape(out_f, 2 * half)


_int4_probe: dict = {}


def int4_triton_works(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the Triton int4 kernel runs here and agrees with the dequantising path (probed once)."""
    key = (torch.device(device).type, dtype)
    if key not in _int4_probe:
        ok = False
        if triton_available(device):
            try:
                g = torch.Generator().manual_seed(0)
                w = torch.randn(48, 256, generator=g)
                packed, scale, zero = (t.to(device) for t in quantize_groupwise_int4(w, 128, dtype))
                x = torch.randn(2, 256, generator=g).to(device=device, dtype=dtype)
                got = w4_matmul(x, packed, scale, zero).float()
                want = F.linear(x.float(), dequantize_int4(packed, scale, zero, torch.float32))
                ok = bool(torch.allclose(got, want, rtol=2e-2, atol=2e-2 * float(want.abs().max())))
            except Exception:  # no compiler, driver or kernel support: the dequantising path serves
                ok = False
        _int4_probe[key] = ok
    return _int4_probe[key]


class Int4Linear(HostCastable, nn.Module):
    """Drop-in for nn.Linear with group-wise int4 weights; `forward_rows` computes only rows [a, b).

    Buffers (the saved format): weight uint8 [out, in/2] (column 2j in the low nibble, 2j+1 in the
    high one), scale and zero [out, in/group] in the compute dtype, optional bias.
    """

    def __init__(self, packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bias: torch.Tensor | None,
                 dtype: torch.dtype, kernel: str = "auto"):
        super().__init__()
        if kernel not in INT4_KERNELS:
            raise ValueError(f"int4 kernel must be one of {INT4_KERNELS}, got {kernel!r}")
        self.out_features, self.in_features = packed.shape[0], 2 * packed.shape[1]
        self.group_size = self.in_features // scale.shape[1]
        self.register_buffer("weight", packed.contiguous())
        self.register_buffer("scale", scale.to(device=packed.device, dtype=dtype).contiguous())
        self.register_buffer("zero", zero.to(device=packed.device, dtype=dtype).contiguous())
        self.register_buffer("bias", None if bias is None else bias.to(dtype))
        self.kernel_choice = kernel
        self._resolved = (None, None)

    @classmethod
    def from_linear(cls, linear: nn.Module, group_size: int = INT4_GROUP, kernel: str = "auto",
                    dtype: torch.dtype | None = None) -> "Int4Linear":
        """From a float layer (or any module with weight [out, in], e.g. one tensor-parallel shard)."""
        dtype = dtype or linear.weight.dtype
        packed, scale, zero = quantize_groupwise_int4(linear.weight, group_size, dtype)
        bias = None if getattr(linear, "bias", None) is None else linear.bias.detach()
        return cls(packed, scale, zero, bias, dtype, kernel)

    @classmethod
    def empty(cls, in_features: int, out_features: int, group_size: int = INT4_GROUP, bias: bool = False,
              dtype: torch.dtype = torch.bfloat16, device="meta") -> "Int4Linear":
        """A shell with the saved format's shapes, for loading a quantized folder."""
        g = int4_group_size(in_features, group_size)
        return cls(torch.empty(out_features, in_features // 2, dtype=torch.uint8, device=device),
                   torch.empty(out_features, in_features // g, device=device),
                   torch.empty(out_features, in_features // g, device=device),
                   torch.empty(out_features, device=device) if bias else None, dtype)

    @property
    def kernel(self) -> str:
        return self._kernel_for(self.weight.device, self.scale.dtype)

    def _kernel_for(self, device, dtype) -> str:
        if self.kernel_choice != "auto":
            return self.kernel_choice
        if self._resolved[0] != (device, dtype):
            fast = (torch.device(device).type == "cuda" and w4_block_k(self.group_size) is not None
                    and int4_triton_works(device, dtype))  # the kernel's K blocks must tile a group
            self._resolved = ((device, dtype), "triton" if fast else "dequant")
        return self._resolved[1]

    def dequantize(self) -> torch.Tensor:
        return dequantize_int4(self.weight, self.scale, self.zero, self.scale.dtype)

    def _matmul(self, x, packed, scale, zero):
        if x.dtype != scale.dtype:
            x = x.to(scale.dtype)
        if self._kernel_for(packed.device, scale.dtype) == "triton":
            return w4_matmul(x, packed, scale, zero)
        return F.linear(x, dequantize_int4(packed, scale, zero, x.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, scale, zero, bias = self._here(x, self.weight, self.scale, self.zero, self.bias)
        out = self._matmul(x, w, scale, zero)
        return out if bias is None else out + bias

    def forward_rows(self, x: torch.Tensor, a: int, b: int) -> torch.Tensor:
        w, scale, zero, bias = self._here(x, self.weight[a:b], self.scale[a:b], self.zero[a:b],
                                          None if self.bias is None else self.bias[a:b])
        out = self._matmul(x, w, scale, zero)
        return out if bias is None else out + bias

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, group={self.group_size}, kernel={self.kernel}"


def quantize_int4_(model: nn.Module, group_size: int = INT4_GROUP, head: str = "int8",
                   dtype: torch.dtype | None = None) -> nn.Module:
    """Replace the model's nn.Linear layers by int4 layers, in place, one at a time (as quantize_int8_).

    head: format of the lm_head, "int8" (default: the head picks the code, the most sensitive layer,
    and is 10% of the weights) or "int4". Both keep its image-code rows path (`forward_rows`)."""
    if head not in ("int8", "int4"):
        raise ValueError(f"int4 head format must be 'int8' or 'int4', got {head!r}")
    lm_head = getattr(model, "lm_head", None)
    targets = [(parent, name) for parent in model.modules() for name, child in parent.named_children()
               if isinstance(child, nn.Linear)]
    for parent, name in targets:
        child = getattr(parent, name)
        fmt = head if child is lm_head else "int4"
        setattr(parent, name, Int8Linear.from_linear(child, dtype=dtype) if fmt == "int8"
                else Int4Linear.from_linear(child, group_size, dtype=dtype))
        del child
    return model
