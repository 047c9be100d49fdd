"""Loader nodes: the transformer folder and the MoVQGAN image tokenizer, from models/lumina_mgpt/."""
from __future__ import annotations

import logging
import os

import comfy.model_management as mm
import folder_paths
from comfy_api.latest import io

from ..lumina_core import CheckpointError, LuminaMGPT, MoVQGAN, quantize_int8_
from ..lumina_core.model.checkpoint import weight_files
from ..lumina_core.model.config import read_config
from ..lumina_core.memory.placement import move_embeddings_to_host_
from ..lumina_core.memory.planner import plan_for_loading
from ..lumina_core.memory.quant import quantize_int4_, weight_format
from ..lumina_core.model.quantized_files import saved_format
from ..lumina_core.model.transformer import ATTENTION_BACKENDS
from ..lumina_core.model.files import list_image_tokenizers, list_transformers, resolve
from . import memory
from .types import CATEGORY, ImageTokenizer, ImageTokenizerType, LuminaModel, ModelType
from .validation import choice_problem, first_problem, require

log = logging.getLogger(__name__)
FOLDER_KEY = "lumina_mgpt"
ATTENTION_NOTES = {
    "sdpa": "PyTorch's fused attention; needs nothing extra (default).",
    "flash_attn": "needs the flash-attn package and a CUDA GPU (a clear error says so when it is missing); the "
                  "engine uses it for full-sequence forwards, its cached decoding steps run on sdpa.",
    "eager": "the slow float32 reference, for GPUs where sdpa misbehaves.",
    "matmul": "two batched matmuls with a float32 softmax: reads a long KV cache once per decoding step.",
}
QUANTIZATIONS = ("none", "int8")  # what every loader offers (the Multi-GPU Loader uses these)
LOADER_QUANTIZATIONS = ("auto", "none", "int8", "int4")  # the Model Loader's: the memory planner and int4
folder_paths.add_model_folder_path(FOLDER_KEY, os.path.join(folder_paths.models_dir, FOLDER_KEY))


def model_folders() -> list[str]:
    return folder_paths.get_folder_paths(FOLDER_KEY)


def _weights_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if f.endswith(".safetensors"))


class ModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        names = list(list_transformers(model_folders()))
        return io.Schema(
            node_id="LuminaMGPT2ModelLoader",
            display_name="Lumina-mGPT 2.0 Model Loader",
            category=CATEGORY,
            description="Loads a Lumina-mGPT 2.0 checkpoint folder (config.json, model*.safetensors, tokenizer.json) "
                        "from models/lumina_mgpt/. ComfyUI moves it to the GPU when a sampler needs it and offloads "
                        "it when other models need the memory.",
            inputs=[
                io.Combo.Input("checkpoint", options=names, default=names[0] if names else None,
                               tooltip="A checkpoint folder inside models/lumina_mgpt/ (or a folder that "
                                       "extra_model_paths.yaml maps to lumina_mgpt). 'demo: ...' is the small "
                                       "bundled shapes model that runs on a CPU."),
                io.Combo.Input("dtype", options=["auto", *memory.DTYPES], default="auto",
                               tooltip="Weight dtype. auto: bf16 on GPUs that support it, else fp32 (and fp32 on "
                                       "the CPU). fp16 halves memory on older GPUs but may overflow."),
                io.Combo.Input("attention", options=list(ATTENTION_BACKENDS), default="sdpa",
                               tooltip="\n".join(f"{b}: {ATTENTION_NOTES.get(b, '')}" for b in ATTENTION_BACKENDS)),
                io.Combo.Input("quantization", options=list(LOADER_QUANTIZATIONS), default="auto", optional=True,
                               tooltip="auto: the least lossy setting that fits this GPU's free memory for a 768x768 "
                                       "image with guidance (the memory planner; the log says what it chose): 24 GB "
                                       "cards keep bf16 weights, 16 GB int8, 12 GB int4 with the embedding table in "
                                       "system memory. none: weights in 'dtype'. int8: linear weights quantized per "
                                       "output channel (half of bf16). int4: group-wise 4-bit (a quarter; the head "
                                       "stays int8). Activations stay in 'dtype'. When even that does not fit, ComfyUI keeps some layers "
                                       "in system memory and copies them in at every token (it runs, slowly). A folder written by Save Quantized loads in its "
                                       "own format (auto or that format). Optional: workflows saved before it "
                                       "existed still load."),
            ],
            outputs=[ModelType.Output(display_name="model", tooltip="The Lumina-mGPT 2.0 transformer and its text tokenizer.")],
        )

    @classmethod
    def validate_inputs(cls, checkpoint: str) -> bool | str:  # one input, one error (validation.py)
        return first_problem(choice_problem("checkpoint", checkpoint, list_transformers(model_folders())))

    @classmethod
    def execute(cls, checkpoint: str, dtype: str, attention: str, quantization: str = "auto") -> io.NodeOutput:
        require(choice_problem("dtype", dtype, ["auto", *memory.DTYPES]),
                choice_problem("attention", attention, ATTENTION_BACKENDS),
                choice_problem("quantization", quantization, LOADER_QUANTIZATIONS))
        folder = resolve(checkpoint, list_transformers(model_folders()), "checkpoint", model_folders())
        load_device = mm.get_torch_device()
        weight, compute = memory.pick_dtypes(dtype, load_device, _weights_bytes(folder) // 2)
        quantization, embeddings, plan_note = cls.memory_plan(folder, quantization, load_device, compute)
        # quantized while streaming in (low host memory) when the weights are stored in the compute dtype
        engine = LuminaMGPT.from_pretrained(folder, dtype=weight, device=mm.unet_offload_device(),
                                            operations=memory.operations_for(weight, compute), attention=attention,
                                            quantization=quantization if weight == compute else "none")
        if engine.tokenizer is None:
            raise CheckpointError(f"{folder} has no tokenizer.json; copy the checkpoint's tokenizer.json and "
                                  "tokenizer_config.json into it.")
        memory.set_compute_dtype_(engine, compute)
        if quantization in ("int8", "int4") and weight_format(engine) == "none":  # weights stored unlike compute
            quantize_int8_(engine, backend="native", dtype=compute) if quantization == "int8" else \
                quantize_int4_(engine, dtype=compute)
        if embeddings == "host":
            move_embeddings_to_host_(engine)
        engine.memory_plan_loaded = plan_note  # the Sampler reports it with its cache choice
        return io.NodeOutput(LuminaModel(memory.wrap(engine), checkpoint))

    @staticmethod
    def memory_plan(folder: str, quantization: str, load_device, compute) -> tuple[str, str, str]:
        """(weight format to load with, embedding placement, a line saying why) from the planner and ComfyUI's
        free memory."""
        if saved_format(weight_files(folder)) is not None:
            return quantization, "device", "weights as saved"  # a Save Quantized folder (checked by the loader)
        if quantization in ("none", "int8") or load_device.type != "cuda":
            chosen = quantization if quantization != "auto" else "none"
            why = "auto: system memory keeps the float weights" if quantization == "auto" else "chosen"
            return chosen, "device", f"{chosen} weights ({why})"
        plan, note = plan_for_loading(read_config(folder), memory.freeable_bytes(load_device), quantization, compute)
        log.info("Lumina-mGPT 2.0: %s", note)
        return plan.weights, plan.embeddings, f"{plan.weights} weights, embeddings on the {plan.embeddings} ({note})"


class ImageTokenizerLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        names = list(list_image_tokenizers(model_folders()))
        return io.Schema(
            node_id="LuminaMGPT2ImageTokenizerLoader",
            display_name="Lumina-mGPT 2.0 Image Tokenizer Loader",
            category=CATEGORY,
            description="Loads the MoVQGAN image tokenizer (movqgan_270M.ckpt for the real model) that turns code "
                        "grids into pixels and condition images into codes.",
            inputs=[
                io.Combo.Input("image_tokenizer", options=names, default=names[0] if names else None,
                               tooltip="A .ckpt or .safetensors MoVQGAN file directly inside models/lumina_mgpt/. "
                                       "Use the one that belongs to the checkpoint (movqgan_270M.ckpt for "
                                       "Lumina-mGPT 2.0, the demo's file for the demo model)."),
            ],
            outputs=[ImageTokenizerType.Output(display_name="image_tokenizer", tooltip="The MoVQGAN image tokenizer.")],
        )

    @classmethod
    def validate_inputs(cls, image_tokenizer: str) -> bool | str:
        return first_problem(choice_problem("image_tokenizer", image_tokenizer,
                                            list_image_tokenizers(model_folders())))

    @classmethod
    def execute(cls, image_tokenizer: str) -> io.NodeOutput:
        path = resolve(image_tokenizer, list_image_tokenizers(model_folders()), "image tokenizer", model_folders())
        vq = MoVQGAN.from_file(path, device=mm.unet_offload_device())
        return io.NodeOutput(ImageTokenizer(memory.wrap(vq, memory.image_tokenizer_patcher_class()), image_tokenizer))
