"""Download node: fetches an official checkpoint from the Hugging Face Hub into models/lumina_mgpt/."""
from __future__ import annotations

import os

import comfy.model_management as mm
import comfy.utils
from comfy_api.latest import io

from ..lumina_core.model.download import OFFICIAL, download
from .loaders import model_folders
from .types import CATEGORY
from .validation import choice_problem, first_problem, require

KIB = 1 << 10  # progress unit: fine enough for small files, small numbers for 16 GB


class Download(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LuminaMGPT2Download",
            display_name="Lumina-mGPT 2.0 Download Checkpoint",
            category=CATEGORY,
            description="Downloads official files from the Hugging Face Hub into the first lumina_mgpt model "
                        "folder, with progress. Files already complete are kept; an interrupted download resumes. "
                        "Refresh the page afterwards to see them in the loaders.",
            inputs=[
                io.Combo.Input("checkpoint", options=list(OFFICIAL), default=list(OFFICIAL)[0],
                               tooltip="Lumina-mGPT-2.0: text-to-image (about 16 GB). Omni: every task, condition "
                                       "images included (about 16 GB). MoVQGAN 270M: the image tokenizer both need "
                                       "(about 1 GB)."),
            ],
            outputs=[io.String.Output(display_name="path", tooltip="Where the checkpoint now is.")],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, checkpoint: str) -> bool | str:
        return first_problem(choice_problem("checkpoint", checkpoint, OFFICIAL))

    @classmethod
    def fingerprint_inputs(cls, checkpoint: str):
        return float("nan")  # never cached: a rerun checks the files on disk (cheap when they are complete)

    @classmethod
    def execute(cls, checkpoint: str) -> io.NodeOutput:
        require(choice_problem("checkpoint", checkpoint, OFFICIAL))
        pbar = comfy.utils.ProgressBar(1)

        def progress(done: int, total: int, filename: str) -> None:
            pbar.update_absolute(done // KIB, max(1, total // KIB))

        path = download(checkpoint, model_folders()[0], progress=progress,
                        cancel=mm.throw_exception_if_processing_interrupted)
        files = sorted(os.listdir(path)) if os.path.isdir(path) else [os.path.basename(path)]
        return io.NodeOutput(path, ui={"text": [f"{path}: {', '.join(f for f in files if not f.startswith('.'))}"]})
