"""The Multi-GPU Loader: the transformer split across several devices (tensor parallelism) in worker
processes; its model output plugs into the same Sampler as the single-GPU loader's."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import comfy.model_management as mm
from comfy_api.latest import io

from ..lumina_core import InputError
from ..lumina_core.model.transformer import ATTENTION_BACKENDS
from ..lumina_core.model.files import list_transformers, resolve
from ..lumina_core.parallel.workers import TPWorkers, parse_devices
from .loaders import QUANTIZATIONS, model_folders
from .types import CATEGORY, ModelType
from .validation import choice_problem, first_problem, require


def devices_problem(devices: str | None) -> str | None:
    """Why `devices` cannot be split over here (the engine's InputError says what to type instead), or None."""
    if devices is None:  # linked: checked at run time
        return None
    try:
        parse_devices(devices)
    except InputError as e:
        return str(e)
    return None


DTYPES = ("auto", "bf16", "fp16", "fp32")


@dataclass(eq=False)
class MultiGPUModel:
    """LUMINA_MGPT2_MODEL from the Multi-GPU Loader: a handle on the worker group. `workers` is what the
    Sampler looks for; `engine` answers what planning needs (tokenizer, config). The workers stop when
    this object is dropped (ComfyUI's cache lets go of it: a new checkpoint, 'Free model and node cache')
    or when ComfyUI exits."""
    workers: TPWorkers
    name: str
    preview_palette: torch.Tensor | None = None

    @property
    def engine(self) -> TPWorkers:
        return self.workers


class MultiGPULoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        names = list(list_transformers(model_folders()))
        return io.Schema(
            node_id="LuminaMGPT2MultiGPULoader",
            display_name="Lumina-mGPT 2.0 Multi-GPU Loader",
            category=CATEGORY,
            description="Loads a Lumina-mGPT 2.0 checkpoint split across several GPUs (tensor parallelism): each "
                        "GPU holds 1/N of the weights and of the KV cache and reads only its part per step. One "
                        "worker process per GPU; connect the model to the usual Sampler.",
            inputs=[
                io.Combo.Input("checkpoint", options=names, default=names[0] if names else None,
                               tooltip="A checkpoint folder inside models/lumina_mgpt/, as in the Model Loader."),
                io.String.Input("devices", default="cuda:0,cuda:1",
                                tooltip="The devices to split over, comma-separated: 'cuda:0,cuda:1' or "
                                        "'cuda:0,cuda:1,cuda:2,cuda:3' (the model's 32 heads split 2, 4 or 8 "
                                        "ways). 'cpu,cpu' runs two CPU processes (for testing)."),
                io.Combo.Input("dtype", options=list(DTYPES), default="auto",
                               tooltip="Weight dtype on every device. auto: bf16 on GPUs that support it, else fp32."),
                io.Combo.Input("quantization", options=list(QUANTIZATIONS), default="none",
                               tooltip="none: weights in 'dtype'. int8: each device quantizes its own slice per "
                                       "output channel (the same values as the single-GPU int8 model)."),
                io.Combo.Input("attention", options=list(ATTENTION_BACKENDS), default="sdpa", optional=True,
                               tooltip="As in the Model Loader; sdpa needs nothing extra."),
            ],
            outputs=[ModelType.Output(display_name="model",
                                      tooltip="The split transformer; connect to Lumina-mGPT 2.0 Sampler.")],
        )

    @classmethod
    def validate_inputs(cls, devices: str) -> bool | str:
        # one input, one error (validation.py); the combos: ComfyUI 0.33 checks them itself, execute on 0.3.75
        return first_problem(devices_problem(devices))

    @classmethod
    def execute(cls, checkpoint: str, devices: str, dtype: str, quantization: str,
                attention: str = "sdpa") -> io.NodeOutput:
        require(devices_problem(devices), choice_problem("dtype", dtype, DTYPES),
                choice_problem("quantization", quantization, QUANTIZATIONS),
                choice_problem("attention", attention, ATTENTION_BACKENDS))
        folder = resolve(checkpoint, list_transformers(model_folders()), "checkpoint", model_folders())
        # the workers are processes of their own that ComfyUI's memory manager does not see: make room first
        mm.unload_all_models()
        mm.soft_empty_cache()
        workers = TPWorkers(folder, devices, dtype=dtype, quantization=quantization, attention=attention)
        return io.NodeOutput(MultiGPUModel(workers, checkpoint, preview_palette=workers.palette))
