"""Save Quantized node: writes a quantized transformer as a checkpoint folder the Model Loader loads
(int4: about 5.6 GB to read at start-up instead of 15.8 GB; the format is recorded in the files)."""
from __future__ import annotations

import os
import re

from comfy_api.latest import io

from ..lumina_core import InputError
from ..lumina_core.memory.quant import weight_format
from ..lumina_core.model.quantized_files import save_quantized
from .loaders import model_folders
from .types import CATEGORY, ModelType

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,99}$")


def name_problem(folder_name: str) -> str | None:
    if folder_name is None:
        return None  # linked: checked at run time
    if not NAME.match(folder_name) or folder_name.endswith((".", " ")):
        return (f"folder_name {folder_name!r}: use letters, digits, '.', '_', '-' or spaces (no slashes), "
                "e.g. lumina-mgpt2-int4")
    return None


class SaveQuantized(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LuminaMGPT2SaveQuantized",
            display_name="Lumina-mGPT 2.0 Save Quantized",
            category=CATEGORY,
            description="Saves a model loaded with quantization int8 or int4 as a new checkpoint folder in "
                        "models/lumina_mgpt/ (safetensors, the format recorded in the files' metadata), so later "
                        "loads read the small quantized weights instead of quantizing the full checkpoint again. "
                        "Refresh the page to see it in the Model Loader.",
            inputs=[
                ModelType.Input("model", tooltip="From a Model Loader with quantization int8 or int4 (or auto when it "
                                                 "chose one)."),
                io.String.Input("folder_name", default="lumina-mgpt2-int4",
                                tooltip="Name of the new folder inside models/lumina_mgpt/. An existing checkpoint "
                                        "folder is never overwritten."),
            ],
            outputs=[io.String.Output(display_name="path", tooltip="The folder written.")],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, folder_name: str) -> bool | str:
        return name_problem(folder_name) or True

    @classmethod
    def execute(cls, model, folder_name: str) -> io.NodeOutput:
        problem = name_problem(folder_name)
        if problem:
            raise InputError(problem)
        if getattr(model, "workers", None) is not None:
            raise InputError("Save Quantized takes the Model Loader's model, not the Multi-GPU Loader's (its "
                             "weights are split over worker processes): load the checkpoint with the Model Loader "
                             "and quantization int8 or int4, save it, then load the saved folder on several GPUs.")
        engine = model.engine
        fmt = weight_format(engine)
        if fmt == "none":
            raise InputError("this model is not quantized: set the Model Loader's quantization to int8 or int4 "
                             "(saving float weights would only copy the checkpoint).")
        target = os.path.join(model_folders()[0], folder_name)
        if os.path.exists(os.path.join(target, "config.json")):
            raise InputError(f"{target} already holds a checkpoint: choose another folder_name (or delete it).")
        paths = save_quantized(engine, target)
        size = sum(os.path.getsize(p) for p in paths)
        return io.NodeOutput(target, ui={"text": [f"{fmt} model saved to {target} ({size / 1e9:.2f} GB in "
                                                  f"{len(paths)} file(s)); refresh to load it."]})
