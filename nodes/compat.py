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

Frontends (tests/test_browser_frontends.py: 1.32.9 on 0.3.75 classic canvas; 1.49.6 as 0.33.0 pins it and
1.58.1, the newest on PyPI, through --front-end-root, each with the classic canvas and Nodes 2.0):
- Nodes 2.0 (setting Comfy.VueNodes.Enabled; on by default in ComfyUI Desktop and Comfy Cloud) draws nodes as
  Vue components and never calls a node's onDrawForeground, so the web extension draws nothing on the canvas.
  Its information panel is a DOM widget (node.addDOMWidget, serialize false, last widget): the classic canvas
  lays it over the node's body, Vue nodes mount its element (WidgetDOM) in all three frontends. A widget type
  no frontend registers a Vue component for keeps it that way. Not used: PromptServer.send_progress_text
  (which 1.49.6 and 1.58.1 show on the node as a "$$node-text-preview" widget) carries server text during a
  run only, and the size line is needed before one; the stats event already has every field the panel shows.
- Help panel: it fetches /extensions/<pack>/docs/<node>/<locale>.md first, then <node>.md: web/docs has both.
- Blueprints: both releases serve custom_nodes/*/subgraphs/*.json at /global_subgraphs (0.33.0 adds its own
  blueprints/ folder to the list); 1.32.9, 1.49.6 and 1.58.1 offer them in the node search ("Subgraph
  Blueprints/<category>"), fill the instance's widgets from the nodes inside when the file has no
  widgets_values, and run them (execution ids "outer:inner", which the extension follows into the subgraph).

After 0.33.0, from the release notes only (no source or wheel of a later ComfyUI can be had here):
- 0.35.0 counts RAM from the container's limit. In 0.33.0 get_free_memory/get_total_memory on the CPU read
  psutil.virtual_memory(), which ignores a cgroup limit (checked). Ours: the memory plan (memory_plan.py, the
  loader's quantization auto) asks freeable_bytes() -> mm.get_free_memory(load device), so on the CPU it takes
  the container's figure from 0.35 on by itself (a smaller, truer budget); on a GPU it counts VRAM only, and
  the host-memory embedding table (1.3 GiB for the 7.9B model) is placed in system memory without any RAM
  check, on every release. Best-of-N's chunk size on the CPU reads system memory itself
  (lumina_core/memory/host_ram.py): the machine's free figure capped by the cgroup's limit (v1 and v2), so
  it holds in a container on every release (tests/test_host_ram.py, on cgroup-shaped files; no container
  with a memory limit was at hand to try it in).
- 0.45.0 merges parallel Linear weights in its own models. Ours is our own module tree (lumina_core.model)
  that takes only ComfyUI's layer classes (comfy.ops); a merge inside ComfyUI's model definitions does not
  reach it, and our q/k/v and gate/up weights and checkpoint keys stay as they are. If the merge happens in
  comfy.ops or in the ModelPatcher instead (the notes do not say), tests/test_nodes_*.py (weights loaded and
  partially loaded through ComfyUI) and the tensor-parallel split (lumina_core/parallel) are where it shows.
  Not checked.
- 0.45.0 turns local_web_sso and partner_node_token on by default. 0.33.0 has neither: its --feature-flag
  registry knows show_signin_button and enable_telemetry only and passes any other key on as the string
  "true", which the 1.58.1 frontend reads as off (strict booleans), so they cannot be switched on here. From
  the 1.58.1 frontend's code: local_web_sso makes a page opened at 127.0.0.1/localhost try a Comfy account
  sign-in; partner_node_token adds a minted token to the prompts a signed-in user queues, for partner (API)
  nodes. Neither changes what a custom node's extension or its websocket events see; our API clients
  (scripts/api_client.py through scripts/run_demo.sh in tests/test_server_examples.py, and the server tests)
  queue /prompt without any sign-in, which 0.33.0 accepts whatever frontend it serves. Not checked: whether
  0.45's server wants anything new from a client that is not a browser (no 0.45 to run).
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
