"""ComfyUI memory management for the engine's models: ModelPatcher wrapping, dtype choice, and loading
onto the GPU with an estimate of what generation needs on top of the weights."""
from __future__ import annotations

import torch

import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops
from comfy.patcher_extension import CallbacksMP

from ..lumina_core.memory.kv_cache import KVCache

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
AUTO_DTYPES = [torch.bfloat16, torch.float32]  # fp16 only on request: activations can overflow it


class PatcherModule(torch.nn.Module):
    """What a ModelPatcher manages. ModelPatcher writes bookkeeping attributes (device, model_lowvram,
    ...) onto its module; the engine's models derive `device` from their weights, so they stay inside."""

    def __init__(self, inner: torch.nn.Module, device: torch.device):
        super().__init__()
        self.inner = inner
        self.device = device


def pick_dtypes(choice: str, load_device, params: int) -> tuple[torch.dtype, torch.dtype]:
    """(weight dtype, compute dtype). 'auto' asks ComfyUI what this device runs well; when the weights
    are stored in a dtype the device computes badly, ComfyUI's manual cast computes in another."""
    weight = DTYPES[choice] if choice != "auto" else mm.unet_dtype(load_device, params, supported_dtypes=AUTO_DTYPES)
    compute = mm.unet_manual_cast(weight, load_device, AUTO_DTYPES) or weight
    return weight, compute


def operations_for(weight: torch.dtype, compute: torch.dtype):
    """ComfyUI layer ops: weights can stay offloaded per layer (low-VRAM) and are cast on the fly."""
    return comfy.ops.disable_weight_init if weight == compute else comfy.ops.manual_cast


def set_compute_dtype_(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Give the small non-layer parameters (norms) the compute dtype; the engine computes in their dtype."""
    for module in model.modules():
        if not hasattr(module, "comfy_cast_weights"):
            for name, p in module.named_parameters(recurse=False):
                if p.is_floating_point() and p.dtype != dtype:
                    setattr(module, name, torch.nn.Parameter(p.to(dtype), requires_grad=False))


def _follow_load_device(patcher, device_to, *args) -> None:
    """After a partial (low-VRAM) load ComfyUI has moved only the weights of its own layers. The norms and
    the rotary table are small and needed on the compute device: move every tensor not owned by an op."""
    if device_to is None:
        return
    for module in patcher.model.inner.modules():
        if hasattr(module, "comfy_cast_weights") or getattr(module, "on_host", False):
            continue  # ComfyUI's own layers, and the embedding table the memory plan keeps in system memory
        for name, p in list(module.named_parameters(recurse=False)):
            if p.device != device_to:
                module._parameters[name] = torch.nn.Parameter(p.to(device_to), requires_grad=False)
        for name, b in list(module.named_buffers(recurse=False)):
            if b.device != device_to:
                module._buffers[name] = b.to(device_to)


def transformer_patcher_class() -> type:
    """The legacy ModelPatcher, on purpose, whatever ComfyUI's CoreModelPatcher is.

    ComfyUI 0.33 makes ModelPatcherDynamic (dynamic VRAM, comfy-aimdo) the default on NVIDIA: weights are
    paged onto the GPU when a layer runs and evicted under pressure. That suits a diffusion model, whose
    forwards are few and long. An autoregressive decoder reads every weight once per token, 9,312 times for
    a 768x768 image: a weight that is not resident is copied over PCIe thousands of times. The transformer
    therefore loads whole when it fits (the sampler reserves the KV cache as inference memory), and the
    pack's memory planning chooses a size that fits; legacy partial loading remains the slow last resort.
    The CUDA-graph decode loop (Speed Settings) also needs weights that stay where they are."""
    return comfy.model_patcher.ModelPatcher


def image_tokenizer_patcher_class() -> type:
    """Whatever ComfyUI uses for its own VAEs at run time (ModelPatcherDynamic on 0.33 with a GPU): the
    MoVQGAN runs a few full-image forwards per image, like a VAE. Its layers are plain torch convolutions,
    so either patcher loads it whole (1.08 GB for movqgan_270M)."""
    return getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)  # 0.3.75: none


def device_bytes(model: torch.nn.Module) -> int:
    """What loading `model` puts on the GPU, as ComfyUI should count it: quantized weights at their stored
    size (buffers), without the embedding table the memory plan keeps in system memory."""
    skip = {id(t) for m in model.modules() if getattr(m, "on_host", False)
            for t in list(m.parameters()) + list(m.buffers())}
    tensors = {id(t): t for t in list(model.parameters()) + list(model.buffers()) if id(t) not in skip}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def wrap(model: torch.nn.Module, patcher_class: type | None = None) -> comfy.model_patcher.ModelPatcher:
    """A ModelPatcher for an engine model whose weights sit on the offload device."""
    load_device, offload_device = mm.get_torch_device(), mm.unet_offload_device()
    cls = patcher_class or transformer_patcher_class()
    patcher = cls(PatcherModule(model, offload_device), load_device, offload_device, size=device_bytes(model))
    patcher.add_callback(CallbacksMP.ON_LOAD, _follow_load_device)
    return patcher


def freeable_bytes(device) -> int:
    """What the memory plan may count on: the device's free memory plus what the models ComfyUI holds there
    take (it evicts them when ours needs the room, ours included when it is loaded already)."""
    held = sum(lm.model_loaded_memory() for lm in mm.current_loaded_models if lm.device == device)
    return int(mm.get_free_memory(device) + held)


def generation_bytes(engine, rows: int, tokens: int, window: int = 1, prefill_chunk: int = 1024) -> int:
    """Memory a generation needs besides the weights: the KV cache of `rows` streams of `tokens`, the
    prefill's activations (one cond + one uncond stream, a chunk at a time) and the code logits."""
    cfg, dtype = engine.config, engine.compute_dtype
    element = torch.tensor([], dtype=dtype).element_size()
    # the Sampler sets the cache format (memory plan) before loading: an int8 cache needs about half
    kv = KVCache.estimate_bytes(cfg, rows, tokens, dtype, getattr(engine, "kv_cache_format", None) or "bf16")
    chunk = min(tokens, prefill_chunk)
    activations = 2 * chunk * (3 * cfg.intermediate_size + 6 * cfg.hidden_size) * element
    logits = 4 * rows * window * engine.tokenizer.special.num_image_codes * 4
    return kv + activations + logits


def load_for_generation(model, rows: int, tokens: int, window: int = 1, extra=()) -> None:
    """Make room on the GPU (evicting other models) and load the transformer, partially if it must, together
    with `extra` patchers used while sampling (the MoVQGAN for previews)."""
    mm.load_models_gpu([model.patcher, *extra], memory_required=generation_bytes(model.engine, rows, tokens, window))


def load_image_tokenizer(vq, pixels: int, batch: int) -> None:
    """Load the MoVQGAN whole (its convolutions are not ComfyUI ops); reserve its decoder activations."""
    channels = vq.engine.config.ch * vq.engine.config.ch_mult[0]
    mm.load_models_gpu([vq.patcher], memory_required=8 * 4 * channels * pixels * batch, force_full_load=True)
