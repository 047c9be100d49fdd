"""Decode node: code grids -> IMAGE, cropped to the panel the task produced."""
from __future__ import annotations

import comfy.model_management as mm
import comfy.utils
from comfy_api.latest import io

from ..lumina_core import InputError, crop_codes, decode_images
from . import memory
from .types import CATEGORY, ImageTokenizerType, TokensType
from .validation import choice_problem, require

PANELS = ("output", "other panel", "full canvas")
OTHER = {"upper": "lower", "lower": "upper", "full": "full"}


def panel_of(tokens, choice: str) -> str:
    """'output' -> the task's result panel; 'other panel' -> the rest of a dual-panel canvas."""
    own = tokens.task.output_panel if tokens.task is not None else "full"
    return {"output": own, "other panel": OTHER[own], "full canvas": "full"}[choice]


class Decode(io.ComfyNode):
    # One image per decoder call: batched convolutions can round differently, and a seed must give the same
    # pixels whatever the batch size. Each image alone is large enough to keep a GPU busy.
    DECODE_BATCH = 1

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LuminaMGPT2Decode",
            display_name="Lumina-mGPT 2.0 Decode",
            category=CATEGORY,
            description="Turns code grids into images with the MoVQGAN image tokenizer. For dual-panel tasks it "
                        "crops to the panel the task generated.",
            inputs=[
                TokensType.Input("tokens", tooltip="From the sampler, Select Best or a Condition Encoder."),
                ImageTokenizerType.Input("image_tokenizer", tooltip="The MoVQGAN that belongs to the model."),
                io.Combo.Input("panel", options=list(PANELS), default="output",
                               tooltip="output: the task's result (the image for pair_* tasks, the lower panel for "
                                       "control/dense/subject/edit). other panel: the rest (the map, or the "
                                       "condition as the model saw it). full canvas: both panels, each decoded on its "
                                       "own."),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="IMAGE [batch, height, width, 3], values 0..1.")],
        )

    @classmethod
    def execute(cls, tokens, image_tokenizer, panel: str) -> io.NodeOutput:
        require(choice_problem("panel", panel, PANELS))
        vq = image_tokenizer.engine
        if tokens.num_codes != vq.num_codes:
            raise InputError(f"these codes index a {tokens.num_codes}-code codebook but the image tokenizer has "
                             f"{vq.num_codes} codes: use the MoVQGAN that belongs to the model.")
        part = panel_of(tokens, panel)
        codes = crop_codes(tokens.codes, part)
        # a whole dual-panel canvas is decoded panel by panel (decode_images says why)
        panels = 2 if part == "full" and tokens.task is not None and tokens.task.dual_panel else 1
        f = vq.downsample_factor
        memory.load_image_tokenizer(image_tokenizer, codes.shape[-2] * codes.shape[-1] * f * f, cls.DECODE_BATCH)
        pbar = comfy.utils.ProgressBar(codes.shape[0])
        images = decode_images(vq, codes, batch=cls.DECODE_BATCH, progress=lambda done, total: pbar.update_absolute(done),
                               cancel=mm.throw_exception_if_processing_interrupted, panels=panels)  # raises on Cancel
        return io.NodeOutput(images.to(mm.intermediate_device()))
