"""Condition encoder: a condition image (a photo to take edges from, or a depth/pose map the user brings)
-> the codes of the given panel of a dual-panel task."""
from __future__ import annotations

from comfy_api.latest import io

from ..lumina_core import InputError, encode_condition
from ..lumina_core.image.prep import prepare_condition, signed_to_unit_bhwc
from ..lumina_core.image import maps
from ..lumina_core.layout import ImageLayout
from . import memory
from .validation import choice_problem, first_problem, require, size_inputs, size_problem
from .types import CATEGORY, ImageTokenizerType, LuminaTokens, TokensType

CANNY_MAX = 1000


class ConditionEncoder(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LuminaMGPT2ConditionEncoder",
            display_name="Lumina-mGPT 2.0 Condition Encoder",
            category=CATEGORY,
            description="Turns a condition image into codes for the controllable tasks (control_canny, "
                        "control_depth, subject, dense_*, edit): resized and centre-cropped to the panel size, "
                        "optionally turned into a canny edge map, then encoded with the image tokenizer.",
            inputs=[
                ImageTokenizerType.Input("image_tokenizer", tooltip="The MoVQGAN that belongs to the model."),
                io.Image.Input("image", tooltip="The condition: a photo (with canny preprocessing) or a ready-made "
                                                "canny/depth/pose map (with preprocessing 'none'). One image: "
                                                "pick one of a batch with Image From Batch."),
                io.Combo.Input("preprocess", options=list(maps.PREPROCESSORS), default="none",
                               tooltip="none: use the image as it is (a depth or pose map you made elsewhere, or a "
                                       "subject photo). canny: white-on-black Canny edges (OpenCV), for "
                                       "control_canny."),
                *size_inputs("Panel", "same value as on the sampler"),
                io.Int.Input("canny_low", default=100, min=0, max=CANNY_MAX,
                             tooltip="Canny lower hysteresis threshold (only used by canny)."),
                io.Int.Input("canny_high", default=200, min=0, max=CANNY_MAX,
                             tooltip="Canny upper hysteresis threshold (only used by canny)."),
            ],
            outputs=[
                TokensType.Output(display_name="condition", tooltip="Codes of the condition panel; connect to the sampler's "
                                                       "condition input."),
                io.Image.Output(display_name="condition_image", tooltip="The condition exactly as encoded (resized, cropped, "
                                                           "preprocessed), for checking."),
            ],
        )

    @staticmethod
    def problems(preprocess, width, height, canny_low, canny_high) -> list[str | None]:
        thresholds = None
        if canny_low is not None and canny_high is not None and not 0 <= canny_low <= canny_high <= CANNY_MAX:
            thresholds = (f"canny thresholds need 0 <= canny_low <= canny_high <= {CANNY_MAX}, got {canny_low} "
                          f"and {canny_high}")
        return [choice_problem("preprocess", preprocess, maps.PREPROCESSORS), size_problem(width, height), thresholds]

    @classmethod
    def validate_inputs(cls, canny_low: int, canny_high: int) -> bool | str:
        # the one check a user can get wrong on the canvas; the size (API only) and the combo are checked in execute
        return first_problem(*cls.problems(None, None, None, canny_low, canny_high))

    @classmethod
    def execute(cls, image_tokenizer, image, preprocess: str, width: int, height: int, canny_low: int,
                canny_high: int) -> io.NodeOutput:
        require(*cls.problems(preprocess, width, height, canny_low, canny_high))
        if image.shape[0] != 1:
            raise InputError(f"the condition encoder takes one image, got a batch of {image.shape[0]}; pick one "
                             "with an 'Image From Batch' node.")
        fitted = signed_to_unit_bhwc(prepare_condition(image, width, height))
        condition = maps.preprocess(fitted, preprocess, canny_low, canny_high)
        vq = image_tokenizer.engine
        memory.load_image_tokenizer(image_tokenizer, width * height, 1)
        codes = encode_condition(vq, condition, width, height).cpu()
        tokens = LuminaTokens(codes=codes, layout=ImageLayout(width, height, vq.downsample_factor),
                              num_codes=vq.num_codes)
        return io.NodeOutput(tokens, condition)
