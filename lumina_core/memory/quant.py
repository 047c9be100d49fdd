"""Weight-only quantized linear layers: int8 (one symmetric scale per output channel) and int4
(group-wise scale and zero over `group_size` input columns, round-to-nearest, no calibration data).

Decoding reads every weight once per step, so halving the bytes per weight nearly halves the step
time on a bandwidth-bound GPU. Activations stay in the compute dtype. Kernels:
- "triton": our Triton kernel (quant_triton.py), the default on CUDA: torch's own int8 paths are
  slower than bf16 there (measured on an H200 with torch 2.11: int8pack 170 GB/s, dequant 300 GB/s,
  bf16 3,500 GB/s for a 4096x11008 layer at 2 rows);
- "int8pack": torch._weight_int8pack_mm, the default on CPU when this torch has it (probed once);
- "dequant": F.linear(x, w.to(x.dtype)) * scale, which works everywhere and fuses under torch.compile.
With torchao installed, backend="torchao" quantizes the transformer body with torchao's int8
weight-only config instead; the lm_head always uses this module (it needs `forward_rows`).

Int4Linear stores two 4-bit codes per byte in one portable layout (so a saved folder loads anywhere)
with a scale and zero per group: w = (q - 8) * scale + zero. Kernels:
- "dequant": rebuild the weight (or the head's rows) in the compute dtype and F.linear; works on
  every device (the CPU path and the tests' reference);
- "triton": our Triton kernel (quant_triton.w4_matmul) reading the portable layout directly, the
  default on CUDA when it is probed to work. Why hand-written: torch's tinygemm int4 kernel (what
  torchao's int4 weight-only config runs) needs its own tiled, device-specific layout; keeping both
  that and the portable copy would double the int4 bytes on a 12 GB card, and converting in place
  would make the layers unsaveable and unmovable between devices. torchao is not required.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .triton_kernels import available as triton_available
from .triton_kernels import w4_block_k, w4_matmul, w8_matmul

KERNELS = ("auto", "triton", "int8pack", "dequant")
INT4_KERNELS = ("auto", "triton", "dequant")
WEIGHT_FORMATS = ("none", "int8", "int4")
INT4_GROUP = 128
BACKENDS = ("auto", "native", "torchao")
_probe_cache: dict = {}


def _kernel_works(name: str, fn, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether fn(x, w_int8, scale) runs on this device and dtype and agrees with a float reference
    (probed once per kernel, device type and dtype: optional kernels must never break generation)."""
    key = (name, torch.device(device).type, dtype)
    if key not in _probe_cache:
        try:
            g = torch.Generator().manual_seed(0)
            x = torch.randn(2, 64, generator=g).to(device=device, dtype=dtype)
            w = torch.randint(-127, 128, (48, 64), generator=g, dtype=torch.int8).to(device)
            s = (torch.rand(48, generator=g) + 0.5).to(device=device, dtype=dtype)
            got = fn(x, w, s).float()
            want = F.linear(x.float(), w.float()) * s.float()
            _probe_cache[key] = bool(torch.allclose(got, want, rtol=2e-2, atol=2e-2 * float(want.abs().max())))
        except Exception:  # a missing kernel, compiler or driver: use another kernel
            _probe_cache[key] = False
    return _probe_cache[key]


def int8pack_works(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether torch._weight_int8pack_mm runs on this device and dtype (and agrees with dequant)."""
    return hasattr(torch, "_weight_int8pack_mm") and _kernel_works("int8pack", torch._weight_int8pack_mm, device, dtype)


def triton_works(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether our Triton kernel compiles and agrees on this device (CUDA, or CPU under TRITON_INTERPRET=1)."""
    return triton_available(device) and _kernel_works("triton", w8_matmul, device, dtype)


def default_kernel(device: torch.device, dtype: torch.dtype) -> str:
    device = torch.device(device)
    if device.type == "cuda" and triton_works(device, dtype):
        return "triton"
    return "int8pack" if int8pack_works(device, dtype) else "dequant"


ROWS_PER_CHUNK = 2048  # quantize in row blocks: float32 temporaries stay ~100 MB even for the 171k-row head


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float [out, in] -> (int8 [out, in], float32 scale [out]) with w ~= q * scale, |q| <= 127."""
    q = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
    scale = torch.empty(weight.shape[0], dtype=torch.float32, device=weight.device)
    for a in range(0, weight.shape[0], ROWS_PER_CHUNK):
        w = weight[a:a + ROWS_PER_CHUNK].detach().float()
        s = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        q[a:a + ROWS_PER_CHUNK] = torch.round(w / s[:, None]).clamp_(-127, 127)
        scale[a:a + ROWS_PER_CHUNK] = s
    return q, scale


class HostCastable:
    """A quantized layer a host may leave in system memory and copy in per call: ComfyUI's low-VRAM partial
    loading, duck-typed (lumina_core never imports it). ComfyUI lists the modules that have
    `comfy_cast_weights`, moves those that fit whole and sets the flag on those it leaves offloaded. For an
    autoregressive decoder that copy happens at every token, so it is the slow last resort when the memory
    plan does not fit the card; it runs where a whole-model load would fail."""
    comfy_cast_weights = False
    weight_function: list = []  # ComfyUI's per-layer patch hooks: none apply to quantized weights
    bias_function: list = []

    def _here(self, x: torch.Tensor, *tensors):
        if not self.comfy_cast_weights:
            return tensors
        return tuple(t if t is None or t.device == x.device else t.to(x.device, non_blocking=True) for t in tensors)


class Int8Linear(HostCastable, nn.Module):
    """Drop-in for nn.Linear with int8 weights; `forward_rows` computes only output rows [a, b)."""

    def __init__(self, weight_q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                 dtype: torch.dtype, kernel: str = "auto"):
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"int8 kernel must be one of {KERNELS}, got {kernel!r}")
        self.in_features, self.out_features = weight_q.shape[1], weight_q.shape[0]
        self.register_buffer("weight", weight_q.contiguous())
        self.register_buffer("scale", scale.to(device=weight_q.device, dtype=dtype))
        self.register_buffer("bias", None if bias is None else bias.to(dtype))
        self.kernel_choice = kernel
        self._resolved = (None, None)  # (device, kernel) of the last call: "auto" follows the weights' device

    @property
    def kernel(self) -> str:
        return self._kernel_for(self.weight.device, self.scale.dtype)

    def _kernel_for(self, device: torch.device, dtype: torch.dtype) -> str:
        if self.kernel_choice != "auto":
            return self.kernel_choice
        if self._resolved[0] != (device, dtype):  # a host may move the layer (ComfyUI loads/offloads models)
            self._resolved = ((device, dtype), default_kernel(device, dtype))
        return self._resolved[1]

    @classmethod
    def from_linear(cls, linear: nn.Linear, kernel: str = "auto", dtype: torch.dtype | None = None) -> "Int8Linear":
        """dtype: the activation (compute) dtype; default the float layer's weight dtype."""
        q, scale = quantize_per_channel(linear.weight.detach())
        bias = None if linear.bias is None else linear.bias.detach()
        return cls(q, scale, bias, dtype or linear.weight.dtype, kernel)

    @classmethod
    def empty(cls, in_features: int, out_features: int, bias: bool = False, dtype: torch.dtype = torch.bfloat16,
              device="meta") -> "Int8Linear":
        """A shell with the saved format's shapes, for loading a quantized folder."""
        return cls(torch.empty(out_features, in_features, dtype=torch.int8, device=device),
                   torch.empty(out_features, device=device),
                   torch.empty(out_features, device=device) if bias else None, dtype)

    def _matmul(self, x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        if x.dtype != scale.dtype:
            x = x.to(scale.dtype)
        kernel = self._kernel_for(w.device, scale.dtype)
        if kernel == "triton":
            return w8_matmul(x, w, scale)
        if kernel == "int8pack":
            shape = x.shape[:-1]
            return torch._weight_int8pack_mm(x.reshape(-1, x.shape[-1]).contiguous(), w, scale).view(*shape, -1)
        return F.linear(x, w.to(x.dtype)) * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, scale, bias = self._here(x, self.weight, self.scale, self.bias)
        out = self._matmul(x, w, scale)
        return out if bias is None else out + bias

    def forward_rows(self, x: torch.Tensor, a: int, b: int) -> torch.Tensor:
        w, scale, bias = self._here(x, self.weight[a:b], self.scale[a:b], None if self.bias is None else self.bias[a:b])
        out = self._matmul(x, w, scale)
        return out if bias is None else out + bias

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, kernel={self.kernel}"


# ----------------------------------------------------------------------------- int4, group-wise

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


QUANTIZED_LINEARS = (Int8Linear, Int4Linear)


def quantized_linear(linear: nn.Module, fmt: str, dtype: torch.dtype | None = None,
                     group_size: int = INT4_GROUP) -> nn.Module:
    """One float layer (or a shard's slice of one) -> its int8 or int4 layer."""
    if fmt == "int8":
        return Int8Linear.from_linear(linear, dtype=dtype)
    if fmt == "int4":
        return Int4Linear.from_linear(linear, group_size, dtype=dtype)
    raise ValueError(f"weight format must be 'int8' or 'int4', got {fmt!r}")


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
        setattr(parent, name, quantized_linear(child, fmt, dtype, group_size))
        del child
    return model


def weight_format(model: nn.Module) -> str:
    """"int4", "int8" or "none": the format of the transformer body's linear layers."""
    kinds = {type(m) for m in model.modules() if isinstance(m, (nn.Linear, *QUANTIZED_LINEARS))}
    return "int4" if Int4Linear in kinds else "int8" if Int8Linear in kinds else "none"


def _torchao_available() -> bool:
    try:
        import torchao.quantization  # noqa: F401  (optional dependency)
    except ImportError:
        return False
    return True


def quantize_int8_(model: nn.Module, backend: str = "auto", kernel: str = "auto",
                   include_head: bool = True, dtype: torch.dtype | None = None) -> nn.Module:
    """Replace the model's nn.Linear layers by int8 weight-only layers, in place, one at a time (the
    float weight of a layer is freed before the next is converted, so peak memory grows by one layer).

    backend: "native" (Int8Linear), "torchao" (torchao's int8 weight-only for the body; needs torchao),
    or "auto" (torchao when installed). The lm_head is always an Int8Linear (the image-code head
    slices its rows). dtype: compute dtype of the native layers (default: each layer's weight dtype).
    Returns the model.
    """
    if backend not in BACKENDS:
        raise ValueError(f"int8 backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torchao" and not _torchao_available():
        raise ImportError("backend='torchao' needs the torchao package; use backend='native', which needs nothing")
    use_torchao = backend == "torchao" or (backend == "auto" and _torchao_available())
    head = getattr(model, "lm_head", None)
    if use_torchao:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
        quantize_(model, Int8WeightOnlyConfig(),
                  filter_fn=lambda m, name: isinstance(m, nn.Linear) and m is not head)
    def wanted(child) -> bool:
        return isinstance(child, nn.Linear) and (not use_torchao or child is head) and (include_head or child is not head)

    # hold parents and names only, so each float layer is freed as soon as it is replaced
    targets = [(parent, name) for parent in model.modules() for name, child in parent.named_children() if wanted(child)]
    del head
    for parent, name in targets:
        setattr(parent, name, Int8Linear.from_linear(getattr(parent, name), kernel, dtype))
    return model


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
