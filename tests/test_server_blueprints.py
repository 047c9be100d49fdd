"""The pack's subgraph blueprints (subgraphs/*.json) as ComfyUI serves them: /global_subgraphs lists every
one under this pack, /global_subgraphs/<id> returns it, and each is a workflow the server's own schemas accept:
one node, an instance of the subgraph it defines, whose nodes exist on this server, hold one value per widget
in the order the frontend reads them (positions), and load the bundled demo model, so a blueprint runs on a
fresh install. tests/test_browser_frontends.py inserts one from the node search and runs it.

A blueprint is built from an example workflow (LUMINA_UPDATE_BLUEPRINTS=1, see that file): when a node gains,
loses or reorders an input, rebuild them after the examples.
"""
import glob
import json
import os

import pytest

from conftest import PACK_NAME, ROOT

pytestmark = [pytest.mark.server]

FILES = sorted(glob.glob(os.path.join(ROOT, "subgraphs", "*.json")))
NAMES = [os.path.splitext(os.path.basename(p))[0] for p in FILES]
REQUIRED = {"Lumina-mGPT 2.0 text to image", "Lumina-mGPT 2.0 from a control image"}
DEMO = {"LuminaMGPT2ModelLoader": ("checkpoint", "demo: lumina-mgpt2-shapes-demo"),
        "LuminaMGPT2ImageTokenizerLoader": ("image_tokenizer", "demo: movqgan_shapes_demo.safetensors")}
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


def widget_names(info: dict) -> list[str]:
    """The widgets the frontend makes for a node, in order: every non-socket input in input_order, with a
    seed's control_after_generate right after it."""
    names = []
    for section in ("required", "optional"):
        for name in info["input_order"].get(section, []):
            entry = info["input"][section][name]
            kind, spec = entry[0], (entry[1] if len(entry) > 1 else {})
            if kind in WIDGET_TYPES or isinstance(kind, list):
                names.append(name)
                if spec.get("control_after_generate"):
                    names.append("control_after_generate")
    return names


@pytest.fixture(scope="module")
def listed(comfy) -> dict:
    status, entries = comfy.request("GET", "/global_subgraphs")
    assert status == 200
    return {e["name"]: (entry_id, e) for entry_id, e in entries.items()
            if e["info"]["node_pack"] == f"custom_nodes.{PACK_NAME}"}


def test_global_subgraphs_lists_every_blueprint_of_the_pack(listed):
    assert REQUIRED <= set(NAMES)
    assert set(listed) == set(NAMES)
    assert all(entry["source"] == "custom_node" and "path" not in entry for _, entry in listed.values())


@pytest.mark.parametrize("name", NAMES)
def test_blueprint_is_served_and_fits_the_servers_nodes(comfy, listed, name):
    entry_id, _ = listed[name]
    status, entry = comfy.request("GET", f"/global_subgraphs/{entry_id}")
    assert status == 200 and entry["name"] == name
    with open(os.path.join(ROOT, "subgraphs", f"{name}.json"), encoding="utf-8") as f:
        assert json.loads(entry["data"]) == json.load(f)  # the file as it is
    workflow = json.loads(entry["data"])
    (instance,) = workflow["nodes"]
    (definition,) = workflow["definitions"]["subgraphs"]
    assert instance["type"] == definition["id"] and definition["name"] == name
    assert definition.get("description") and definition.get("category")
    # the instance's sockets are the definition's inputs and outputs, labelled for a user
    assert [i["name"] for i in instance["inputs"]] == [i["name"] for i in definition["inputs"]]
    assert [o["type"] for o in instance["outputs"]] == [o["type"] for o in definition["outputs"]]
    assert all(i.get("label") for i in definition["inputs"] + definition["outputs"])
    assert "IMAGE" in [o["type"] for o in definition["outputs"]]
    # every input feeds a node inside, every output comes from one
    links = {link["id"]: link for link in definition["links"]}
    inner = {node["id"]: node for node in definition["nodes"]}
    for slot in definition["inputs"] + definition["outputs"]:
        assert slot["linkIds"] and all(link_id in links for link_id in slot["linkIds"]), slot["name"]
    for link in links.values():
        assert link["origin_id"] in inner or link["origin_id"] == -10, link
        assert link["target_id"] in inner or link["target_id"] == -20, link

    info = comfy.object_info()
    for node in definition["nodes"]:
        assert node["type"] in info, f"{name}: no node {node['type']} on this server"
        widgets = widget_names(info[node["type"]])
        assert len(node.get("widgets_values") or []) == len(widgets), (
            f"{name}: node {node['id']} ({node['type']}) holds {node.get('widgets_values')} for widgets {widgets}: "
            "rebuild the blueprints (LUMINA_UPDATE_BLUEPRINTS=1, tests/test_browser_frontends.py)")
        values = dict(zip(widgets, node.get("widgets_values") or []))
        for widget, value in values.items():
            spec = info[node["type"]]["input"]["required"].get(widget) or info[node["type"]]["input"].get(
                "optional", {}).get(widget)
            if spec and spec[0] == "COMBO":
                assert value in spec[1]["options"], (name, node["type"], widget, value)
        if node["type"] in DEMO:  # the bundled demo: runs on a fresh install
            widget, demo = DEMO[node["type"]]
            assert values[widget] == demo, (name, node["type"], values[widget])
