"""NODES.md documents every node, input (in widget order), output and default exactly as the running server
reports them. LUMINA_UPDATE_DOCS=1 rewrites it from /object_info."""
import os

import pytest

from conftest import ROOT

pytestmark = [pytest.mark.server]

NODES_MD = os.path.join(ROOT, "NODES.md")
NODE_ORDER = ["LuminaMGPT2ModelLoader", "LuminaMGPT2ImageTokenizerLoader", "LuminaMGPT2Sampler",
              "LuminaMGPT2Decode", "LuminaMGPT2ConditionEncoder", "LuminaMGPT2ImageToTokens", "LuminaMGPT2SJDSettings",
              "LuminaMGPT2BestOfNSettings", "LuminaMGPT2SelectBest", "LuminaMGPT2SpeedSettings",
              "LuminaMGPT2SamplingSettings",
              "LuminaMGPT2Download", "LuminaMGPT2MultiGPULoader", "LuminaMGPT2SaveQuantized"]
# Combos listing files on this machine: their options differ between installs (value: the default shown).
FILE_LISTS = {("LuminaMGPT2ModelLoader", "checkpoint"): "first found",
              ("LuminaMGPT2ImageTokenizerLoader", "image_tokenizer"): "first found",
              ("LuminaMGPT2MultiGPULoader", "checkpoint"): "first found",
              ("LuminaMGPT2BestOfNSettings", "clip_model"): "`none`"}
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
HEADER = """# Lumina-mGPT 2.0 nodes

Every node of the pack, generated from the running server's `/object_info` (`tests/test_server_docs.py`
checks it; `LUMINA_UPDATE_DOCS=1` rewrites it). Node ids and the order of their widgets are frozen: a saved
UI workflow stores widget values by position (`widgets_values`), with a seed's `control_after_generate`
right after the seed. API-format workflows name every input and are not affected by order.

Models live in `models/lumina_mgpt/` (or any folder `extra_model_paths.yaml` maps to `lumina_mgpt`):
a checkpoint folder per transformer (`Lumina-mGPT-2.0/` with config.json, generation_config.json,
model.safetensors.index.json, model-0000{1..4}-of-00004.safetensors, tokenizer.json, tokenizer_config.json)
and the MoVQGAN file next to them (`movqgan_270M.ckpt`). The bundled demo is listed as
`demo: lumina-mgpt2-shapes-demo` / `demo: movqgan_shapes_demo.safetensors`. CLIP models for the best-of-N
CLIP scorer are transformers CLIPModel folders in `models/clip_vision/`.
"""


def cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", "<br>")


def input_rows(node_id: str, info: dict) -> tuple[list[str], list[str]]:
    rows, widgets = [], []
    for section in ("required", "optional"):
        for name in info["input_order"].get(section, []):
            kind, spec = info["input"][section][name]
            is_widget = kind in WIDGET_TYPES
            if (node_id, name) in FILE_LISTS:
                shown, default = "COMBO (files found)", FILE_LISTS[(node_id, name)]
            elif kind == "COMBO":
                shown, default = "COMBO: " + ", ".join(f"`{o}`" for o in spec["options"]), f"`{spec.get('default')}`"
            elif is_widget:
                limits = f" {spec['min']}..{spec['max']}" if "min" in spec else ""
                shown, default = kind + limits, f"`{spec.get('default')!r}`" if kind == "STRING" else f"`{spec.get('default')}`"
            else:
                shown, default = f"`{kind}`", "optional" if section == "optional" else "required"
            rows.append(f"| {name} | {cell(shown)} | {cell(default)} | {cell(spec.get('tooltip', ''))} |")
            if is_widget:
                widgets.append(name)
                if spec.get("control_after_generate"):
                    widgets.append("control_after_generate")
                    rows.append("| control_after_generate | COMBO: `fixed`, `increment`, `decrement`, `randomize` "
                                "| UI only | What the UI does to the seed after queueing (not sent to the server). |")
    return rows, widgets


def render(object_info: dict) -> str:
    parts = [HEADER]
    for node_id in NODE_ORDER:
        info = object_info[node_id]
        rows, widgets = input_rows(node_id, info)
        parts += [f"## {info['display_name']}", "",
                  f"id `{node_id}` · category `{info['category']}`" + (" · output node" if info["output_node"] else ""),
                  "", info["description"], "",
                  "| input | type | default | notes |", "|---|---|---|---|", *rows, "",
                  "Widget order (`widgets_values`): " + (", ".join(f"`{w}`" for w in widgets) or "none"), "",
                  "| output | type | notes |", "|---|---|---|"]
        parts += [f"| {name} | `{kind}` | {cell(tip or '')} |"
                  for name, kind, tip in zip(info["output_name"], info["output"], info["output_tooltips"])]
        parts.append("")
    return "\n".join(parts)


def test_nodes_md_matches_the_server(comfy):
    info = comfy.object_info()
    ours = {node_id for node_id, node in info.items() if node["category"].startswith("Lumina-mGPT")}
    assert ours == set(NODE_ORDER), f"NODES.md must document every node: add {sorted(ours - set(NODE_ORDER))}"
    text = render(info)
    if os.environ.get("LUMINA_UPDATE_DOCS") == "1":
        with open(NODES_MD, "w", encoding="utf-8") as f:
            f.write(text)
    with open(NODES_MD, encoding="utf-8") as f:
        assert f.read() == text, "NODES.md is out of date: rerun with LUMINA_UPDATE_DOCS=1"
