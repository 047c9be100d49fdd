"""ComfyUI V3 nodes for Lumina-mGPT 2.0: thin wrappers over lumina_core."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import compat  # noqa: F401  (host differences, also used by tests)
from .condition import ConditionEncoder
from .decode import Decode
from .download import Download
from .image_to_tokens import ImageToTokens
from .loaders import ImageTokenizerLoader, ModelLoader
from .multigpu import MultiGPULoader
from .sampler import Sampler
from .save_quantized import SaveQuantized
from .select import SelectBest
from .settings import BestOfNSettings, SamplingSettings, SJDSettings, SpeedSettings

NODES: list[type[io.ComfyNode]] = [ModelLoader, ImageTokenizerLoader, ConditionEncoder, Sampler, SJDSettings,
                                   BestOfNSettings, SelectBest, Decode, Download, SpeedSettings,
                                   SamplingSettings, MultiGPULoader, SaveQuantized, ImageToTokens]


class LuminaMGPT2Extension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


async def comfy_entrypoint() -> LuminaMGPT2Extension:
    return LuminaMGPT2Extension()
