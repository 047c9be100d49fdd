"""int8 weight-only linear layers: one symmetric scale per output channel, activations in the compute dtype.

Decoding reads every weight once per step, so halving the bytes per weight nearly halves the step time on a
bandwidth-bound GPU. Kernels:
- "triton": our Triton kernel (triton_kernels.py), the default on CUDA: torch's own int8 paths are
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

from .triton_kernels import available as triton_available
from .triton_kernels import w8_matmul

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
