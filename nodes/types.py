"""The pack's socket types and the Python objects that travel through them."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from comfy_api.latest import io

from ..lumina_core.decoding.sampler import DecodeStats
from ..lumina_core.layout import ImageLayout
from ..lumina_core.decoding.tasks import TaskSpec

ModelType = io.Custom("LUMINA_MGPT2_MODEL")
ImageTokenizerType = io.Custom("LUMINA_MGPT2_VQ")
TokensType = io.Custom("LUMINA_MGPT2_TOKENS")
SJDType = io.Custom("LUMINA_MGPT2_SJD")
BestOfNType = io.Custom("LUMINA_MGPT2_BON")
SpeedType = io.Custom("LUMINA_MGPT2_SPEED")
SamplingType = io.Custom("LUMINA_MGPT2_SAMPLING")

CATEGORY = "Lumina-mGPT"
ADVANCED = "Lumina-mGPT/advanced"


@dataclass
class LuminaModel:
    """LUMINA_MGPT2_MODEL: the transformer inside ComfyUI's ModelPatcher."""
    patcher: object               # comfy.model_patcher.ModelPatcher around PatcherModule(engine model)
    name: str
    preview_palette: torch.Tensor | None = None  # cheap-preview colours, computed on first use

    @property
    def engine(self):
        return self.patcher.model.inner


@dataclass
class ImageTokenizer:
    """LUMINA_MGPT2_VQ: the MoVQGAN inside a ModelPatcher."""
    patcher: object
    name: str

    @property
    def engine(self):
        return self.patcher.model.inner


@dataclass(frozen=True)
class LuminaTokens:
    """LUMINA_MGPT2_TOKENS: code grids plus what they are.

    A sampler's output: codes [N, h, w] of the whole canvas, its task, a seed per image and, after
    best-of-N, a score per image. A condition encoder's output: one panel's codes, task None.
    """
    codes: torch.Tensor                  # [N, h, w] int64 on the CPU
    layout: ImageLayout                  # geometry of the codes (the canvas, or the condition panel)
    num_codes: int                       # size of the codebook the codes index
    task: TaskSpec | None = None
    seeds: tuple[int, ...] = ()
    scores: torch.Tensor | None = None   # [N] higher is better
    stats: DecodeStats = field(default_factory=DecodeStats)

    def select(self, index: torch.Tensor) -> "LuminaTokens":
        """The images at `index`, in that order."""
        return replace(self, codes=self.codes[index], seeds=tuple(self.seeds[i] for i in index.tolist()),
                       scores=None if self.scores is None else self.scores[index])
