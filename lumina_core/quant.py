"""Weight-only int8 linear layers: int8 weights with one symmetric scale per output channel.

Decoding reads every weight once per step, so halving the bytes per weight nearly halves the step
time on a bandwidth-bound GPU. Activations stay in the compute dtype. Kernels:
- "triton": our Triton kernel (quant_triton.py), the default on CUDA: torch's own int8 paths are
  slower than bf16 there (measured on an H200 with torch 2.11: int8pack 170 GB/s, dequant 300 GB/s,
  bf16 3,500 GB/s for a 4096x11008 layer at 2 rows);
- "int8pack": torch._weight_int8pack_mm, the default on CPU when this torch has it (probed once);
- "dequant": F.linear(x, w.to(x.dtype)) * scale, which works everywhere and fuses under torch.compile.
With torchao installed, backend="torchao" quantizes the transformer body with torchao's int8
weight-only config instead; the lm_head always uses this module (it needs `forward_rows`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .quant_triton import available as triton_available
from .quant_triton import w8_matmul

KERNELS = ("auto", "triton", "int8pack", "dequant")
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


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float [out, in] -> (int8 [out, in], float32 scale [out]) with w ~= q * scale, |q| <= 127."""
    w = weight.float()
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


class Int8Linear(nn.Module):
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
        out = self._matmul(x, self.weight, self.scale)
        return out if self.bias is None else out + self.bias

    def forward_rows(self, x: torch.Tensor, a: int, b: int) -> torch.Tensor:
        out = self._matmul(x, self.weight[a:b], self.scale[a:b])
        return out if self.bias is None else out + self.bias[a:b]

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, kernel={self.kernel}"


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
        if isinstance(m, (nn.Linear, Int8Linear)):
            w = m.weight
            rows = w.shape[0]
            if m is head and head_rows is not None:
                rows = head_rows[1] - head_rows[0]
            per_row = w.shape[1] * w.element_size()
            extra = m.scale.element_size() if isinstance(m, Int8Linear) else 0
            total += rows * (per_row + extra)
    return total
