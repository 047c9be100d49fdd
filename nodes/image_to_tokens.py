"""Image to Tokens: any picture (a batch too) -> the code grids the model paints in, at a chosen size, for the
sampler's start_from (keep its top, paint the rest) or for Decode (the image tokenizer's round trip)."""
from __future__ import annotations

import torch
from comfy_api.latest import io

from ..lumina_core import InputError
from ..lumina_core.image.prep import prepare_condition, signed_to_unit_bhwc
from ..lumina_core.layout import ImageLayout
from . import memory
from .types import CATEGORY, ImageTokenizerType, LuminaTokens, TokensType
from .validation import require, size_inputs, size_problem


class ImageToTokens(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LuminaMGPT2ImageToTokens",
            display_name="Lumina-mGPT 2.0 Image to Tokens",
            category=CATEGORY,
            description="Turns pictures into the code grids the model paints in: each image is scaled to cover the "
                        "size and cropped at the centre, then encoded with the image tokenizer. Connect the tokens "
                        "to the sampler's start_from to keep the picture's top rows and paint the rest (variations "
                        "of a photo, extending it downward), or to Decode to see what the tokenizer keeps.",
            inputs=[
                ImageTokenizerType.Input("image_tokenizer", tooltip="The MoVQGAN that belongs to the model."),
                io.Image.Input("image", tooltip="Any picture, or a batch of them (each is encoded on its own)."),
                *size_inputs("Encoded", "width: the sampler's; height: the sampler's, or less to extend the "
                                        "picture downward"),
            ],
            outputs=[
                TokensType.Output(display_name="tokens", tooltip="The code grids, one per image; connect to the "
                                                                 "sampler's start_from or to Decode."),
                io.Image.Output(display_name="image", tooltip="The pictures exactly as encoded (scaled and cropped)."),
            ],
        )

    @classmethod
    def execute(cls, image_tokenizer, image, width: int, height: int) -> io.NodeOutput:
        require(size_problem(width, height))
        if image.ndim != 4 or image.shape[0] < 1:
            raise InputError(f"image must be an IMAGE batch [B, H, W, C], got shape {tuple(image.shape)}")
        vq = image_tokenizer.engine
        memory.load_image_tokenizer(image_tokenizer, width * height, 1)
        # one image at a time: a picture's codes never depend on what else is in the batch
        fitted = [prepare_condition(image[i], width, height) for i in range(image.shape[0])]
        codes = torch.cat([vq.encode(f).cpu() for f in fitted])
        tokens = LuminaTokens(codes=codes, layout=ImageLayout(width, height, vq.downsample_factor),
                              num_codes=vq.num_codes)
        return io.NodeOutput(tokens, torch.cat([signed_to_unit_bhwc(f) for f in fitted]))
