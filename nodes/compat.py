"""What differs between the ComfyUI releases the pack runs on (0.3.75 to 0.33), in one place, so the nodes
read the same on all of them. Each fact is probed from the running ComfyUI, not from its version number.

| what                          | 0.3.75                          | 0.8 and later (0.33)                          |
|-------------------------------|---------------------------------|-----------------------------------------------|
| PREPARE_CLASS_CLONE takes     | the hidden-inputs dict          | V3 data: {"hidden_inputs": {...}}             |
| ProgressBar updates           | every update is sent            | first, last and preview updates at once,      |
|                               |                                 | others at most every 0.1 s (throttled)        |
| V3 combo values               | not checked by the executor     | checked (one error under the input), unless   |
|                               | (our nodes check when they run) | validate_inputs takes them                    |
| default model patcher         | ModelPatcher                    | ModelPatcherDynamic on NVIDIA (dynamic VRAM)  |
| comfy.ops layers              | weights allocated at init       | with dynamic VRAM: Linear weight None,        |
|                               |                                 | Embedding weight on meta until loaded         |

No node takes a combo in validate_inputs (but the checkpoint lists, whose message says where files go): a
failed validate_inputs is filed under every input it takes (validation.py), so on 0.33 the executor's own
check gives one error per bad value; on 0.3.75 the nodes refuse a bad value when they run.
"""
from __future__ import annotations

import inspect

import comfy.model_patcher
import comfy.utils
from comfy_api.latest import io

try:
    from comfyui_version import __version__ as COMFYUI_VERSION
except ImportError:  # very old or repackaged ComfyUI
    COMFYUI_VERSION = "unknown"

# ComfyUI 0.8 changed PREPARE_CLASS_CLONE(hidden_inputs) to PREPARE_CLASS_CLONE(v3_data).
CLONE_TAKES_V3_DATA = "v3_data" in inspect.signature(io.ComfyNode.PREPARE_CLASS_CLONE).parameters

# Seconds between two plain (non-preview) progress updates that the host sends; 0 when it sends every update.
PROGRESS_THROTTLE_S = float(getattr(comfy.utils, "PROGRESS_THROTTLE_MIN_INTERVAL", 0.0))

# ModelPatcherDynamic exists from the releases that have dynamic VRAM on.
DYNAMIC_PATCHER = getattr(comfy.model_patcher, "ModelPatcherDynamic", None)


def node_with_hidden(node: type[io.ComfyNode], **hidden) -> type[io.ComfyNode]:
    """The node class as the executor prepares it, with hidden inputs set (e.g. unique_id="7"): for calling a
    node's execute outside a prompt (tests, scripts)."""
    values = {getattr(io.Hidden, name): value for name, value in hidden.items()}
    return node.PREPARE_CLASS_CLONE({"hidden_inputs": values} if CLONE_TAKES_V3_DATA else values)


def dynamic_vram_enabled() -> bool:
    """Whether this ComfyUI loads models with dynamic VRAM (comfy-aimdo), as 0.33 does by default on NVIDIA."""
    try:
        import comfy.memory_management
    except ImportError:
        return False
    return bool(getattr(comfy.memory_management, "aimdo_enabled", False))
