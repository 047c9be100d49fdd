"""The ComfyUI frontend in headless Debian chromium (Playwright): the example workflows load and render our
nodes with their widgets, each UI workflow converts to exactly its API twin, a run from the UI shows the web
extension's statistics and gives the same image as the API twin.

LUMINA_UPDATE_EXAMPLES=1 rewrites the UI workflows from their API twins (laid out by the frontend, seeds fixed);
LUMINA_UPDATE_DOCS=1 also saves the canvas screenshot to docs/canvas.png. A screenshot of every run goes to
test-artifacts/. The frontend the host pins, classic canvas; tests/test_browser_frontends.py covers Nodes 2.0 and
the newest frontend.
"""
import glob
import json
import os
import shutil
import tempfile
import time

import numpy as np
import pytest
from PIL import Image

from conftest import EXAMPLES, ROOT, demo_sampling, load_example, registry_properties

pytestmark = [pytest.mark.browser, pytest.mark.server, pytest.mark.slow]

CHROMIUM = os.environ.get("LUMINA_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = os.path.join(ROOT, "test-artifacts")
UPDATE_EXAMPLES = os.environ.get("LUMINA_UPDATE_EXAMPLES") == "1"
UPDATE_DOCS = os.environ.get("LUMINA_UPDATE_DOCS") == "1"
API_TWINS = sorted(glob.glob(os.path.join(EXAMPLES, "api", "*_api.json")))
NAMES = [os.path.basename(p)[: -len("_api.json")] for p in API_TWINS]


@pytest.fixture(scope="module")
def page(comfy):
    from playwright.sync_api import sync_playwright
    # no template browser on first visit; no minimap or tab bar over the canvas in screenshots
    # the classic canvas (test_browser_frontends.py runs Nodes 2.0 and the newest frontend)
    status, _ = comfy.request("POST", "/settings", {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False,
                                                    "Comfy.Workflow.WorkflowTabsPosition": "Sidebar",
                                                    "Comfy.VueNodes.Enabled": False})
    assert status == 200
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True, args=FLAGS,
                                                       viewport={"width": 1600, "height": 1000})
        page = context.new_page()
        page.errors = []
        page.on("pageerror", lambda e: page.errors.append(str(e)))
        page.on("console", lambda m: page.errors.append(m.text) if "Invalid workflow" in m.text else None)
        page.goto(comfy.base + "/", wait_until="networkidle", timeout=120000)
        page.wait_for_function("window.app && window.app.graph && window.LiteGraph", timeout=120000)
        page.wait_for_function("window.LuminaMGPT2 !== undefined", timeout=60000)
        yield page
        context.close()
    shutil.rmtree(profile, ignore_errors=True)


def load_ui(page, workflow: dict) -> None:
    page.errors.clear()
    page.evaluate("async (w) => { await window.app.loadGraphData(w); }", workflow)
    page.wait_for_timeout(300)
    assert not page.errors, page.errors  # e.g. the frontend's schema check of the workflow file
    page.keyboard.press(".")  # fit the graph in view


def graph_nodes(page) -> dict:
    """Every node's type and its widgets that are workflow values (not the information panel the extension adds,
    nor the frontend's own previews: serialize false), with their values; `display` lists the others."""
    return page.evaluate("""() => Object.fromEntries(window.app.graph._nodes.map(n => {
        const values = (n.widgets || []).filter(w => w.serialize !== false);
        return [String(n.id), {type: n.type, widgets: values.map(w => w.name), values: values.map(w => w.value),
                               display: (n.widgets || []).filter(w => w.serialize === false).map(w => w.name)}]; }))""")


def graph_to_api(page, info: dict) -> dict:
    """The canvas as the frontend queues it, with only the inputs each node declares: frontends differ in
    whether they also send display-only widgets (1.32 sends core PreviewAny's `preview` text, 1.49 does not),
    and the server ignores them."""
    prompt = page.evaluate("window.app.graphToPrompt().then(p => p.output)")

    def declared(node):
        spec = info[node["class_type"]]["input"]
        names = set(spec.get("required", {})) | set(spec.get("optional", {}))
        return {k: v for k, v in node["inputs"].items() if k in names}

    return {nid: {"class_type": n["class_type"], "inputs": declared(n)} for nid, n in prompt.items()}


def expected_widgets(info: dict) -> list[str]:
    """Widget names in the order the frontend makes them: every non-socket input, in input_order, with the
    seed's control_after_generate right after it."""
    names = []
    for section in ("required", "optional"):
        for name in info["input_order"].get(section, []):
            kind, spec = info["input"][section][name]
            if kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO") or isinstance(kind, list):
                names.append(name)
                if spec.get("control_after_generate"):
                    names.append("control_after_generate")
    return names


def write_ui_from_api_twin(page, name: str) -> None:
    """Give the API twin's samplers the demo's recommended settings, then lay it out in the frontend and save it
    as the UI workflow, seeds 'fixed'."""
    api_path = os.path.join(EXAMPLES, "api", f"{name}_api.json")
    api = load_example(api_path)
    for node in api.values():
        if node["class_type"] == "LuminaMGPT2Sampler":
            node["inputs"].update(demo_sampling())
    with open(api_path, "w", encoding="utf-8") as f:
        json.dump(api, f, indent=2)
        f.write("\n")
    page.evaluate("async (p) => { await window.app.loadApiJson(p, 'x.json'); }", api)
    page.evaluate("""() => {
        for (const n of window.app.graph._nodes) {
            (n.widgets || []).forEach(w => { if (w.name === 'control_after_generate') w.value = 'fixed'; });
            if (n.type.endsWith('Loader')) n.setSize([Math.max(n.size[0], 440), n.size[1]]);  // full file names
        }
        window.app.graph.arrange(60);
    }""")
    ui = page.evaluate("JSON.parse(JSON.stringify(window.app.graph.serialize()))")  # drops undefined fields
    ui.get("extra", {}).pop("ds", None)  # the viewport of this browser window, not part of the workflow
    registry_properties(ui)
    with open(os.path.join(EXAMPLES, f"{name}.json"), "w", encoding="utf-8") as f:
        json.dump(ui, f, indent=1)
        f.write("\n")


def test_extension_and_nodes_are_registered(page):
    registered = page.evaluate("Object.keys(LiteGraph.registered_node_types).filter(t => t.startsWith('LuminaMGPT2'))")
    assert {"LuminaMGPT2Sampler", "LuminaMGPT2ModelLoader", "LuminaMGPT2Decode"} <= set(registered)
    assert page.evaluate("window.LuminaMGPT2.stats") == {}


@pytest.mark.parametrize("name", NAMES)
def test_example_workflow_renders_and_converts_to_its_api_twin(page, comfy, name):
    if UPDATE_EXAMPLES:
        write_ui_from_api_twin(page, name)
    load_ui(page, load_example(f"{name}.json"))
    info = comfy.object_info()
    nodes = graph_nodes(page)
    ours = {nid: n for nid, n in nodes.items() if n["type"].startswith("LuminaMGPT2")}
    assert ours, "no Lumina-mGPT 2.0 nodes on the canvas"
    for nid, node in ours.items():
        assert node["widgets"] == expected_widgets(info[node["type"]]), (name, nid)
        if "control_after_generate" in node["widgets"]:
            assert node["values"][node["widgets"].index("control_after_generate")] == "fixed"
        if node["type"] in ("LuminaMGPT2Sampler", "LuminaMGPT2ConditionEncoder"):
            assert node["display"] == ["lumina_mgpt2_info"], (name, nid, node["display"])  # the panel
    assert graph_to_api(page, info) == load_example(os.path.join("api", f"{name}_api.json"))
    # the panel is no workflow value: a saved workflow holds the input widgets' values only, position for position
    saved = page.evaluate("JSON.parse(JSON.stringify(window.app.graph.serialize()))")
    for node in saved["nodes"]:
        if str(node["id"]) in ours:
            assert node["widgets_values"] == ours[str(node["id"])]["values"], (name, node["id"])
    os.makedirs(ARTIFACTS, exist_ok=True)
    page.screenshot(path=os.path.join(ARTIFACTS, f"browser_{name}.png"))


def test_size_helper_snaps_to_the_grid_and_counts_tokens(page):
    load_ui(page, load_example("lumina_mgpt2_t2i.json"))
    width = page.evaluate("""() => {
        const node = window.app.graph._nodes.find(n => n.type === 'LuminaMGPT2Sampler');
        const widget = node.widgets.find(w => w.name === 'width');
        widget.value = 100;
        widget.callback(100);  // what the frontend calls after an edit
        return widget.value; }""")
    assert width == 96
    page.evaluate("window.app.graph.setDirtyCanvas(true, true)")
    page.wait_for_function("""window.app.graph._nodes.find(n => n.type === 'LuminaMGPT2Sampler')
        .luminaInfo?.[0]?.startsWith('canvas 96x64')""", timeout=10000)
    # the id the server runs a node under: "3" on the root graph, "12:3" for node 3 inside subgraph node 12
    assert page.evaluate("window.LuminaMGPT2.nodeOfExecutionId('3')?.type") == "LuminaMGPT2Sampler"
    assert page.evaluate("window.LuminaMGPT2.nodeOfExecutionId('12:3')") is None  # no node 12 here
    # 64x96 panel, control task: a 96x128 canvas of 16 rows x 12 codes, a row end per row, 4 more tokens
    assert page.evaluate("window.LuminaMGPT2.sizeText(96, 64, 'control_canny')") == \
        "canvas 96x128: 16x12 codes, 212 tokens"


def clear_execution_cache(comfy) -> None:
    """POST /free resets the cache after the next prompt; a trivial prompt makes that happen now."""
    assert comfy.request("POST", "/free", {"free_memory": True})[0] == 200
    trivial = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
               "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    assert comfy.run(trivial).status == "success"


def wait_for_new_history(comfy, before: set, timeout: float = 60) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        new = {k: v for k, v in comfy.request("GET", "/history")[1].items() if k not in before}
        if new:
            (entry,) = new.values()
            if entry["status"]["completed"] or entry["status"]["status_str"] == "error":
                return entry
        time.sleep(0.1)
    raise TimeoutError("the prompt queued from the UI did not finish")


def test_ui_run_shows_statistics_and_equals_the_api_twin(page, comfy):
    name = "lumina_mgpt2_t2i"
    api_run = comfy.run(load_example(os.path.join("api", f"{name}_api.json")))
    assert api_run.status == "success", api_run.of_type("execution_error")
    clear_execution_cache(comfy)

    load_ui(page, load_example(f"{name}.json"))
    sampler_id = next(nid for nid, n in graph_nodes(page).items() if n["type"] == "LuminaMGPT2Sampler")
    page.evaluate("window.LuminaMGPT2.stats = {}")
    before = set(comfy.request("GET", "/history")[1])
    page.evaluate("window.app.queuePrompt(0)")
    page.wait_for_function(f"window.LuminaMGPT2.stats['{sampler_id}']?.done === true", timeout=180000)
    stats = page.evaluate(f"window.LuminaMGPT2.stats['{sampler_id}']")
    assert stats["rows"] == stats["total"] > 0 and stats["tokens_per_s"] > 0
    text = page.evaluate(f"window.app.graph.getNodeById({sampler_id}).luminaInfo.at(-1)")  # the panel's last line
    assert text.startswith(f"rows {stats['total']}/{stats['total']}") and "tok/s" in text
    ui_entry = wait_for_new_history(comfy, before)
    assert ui_entry["status"]["status_str"] == "success"
    ui_image = [im for out in ui_entry["outputs"].values() for im in out.get("images", []) if im["type"] == "output"]
    api_image = comfy.output_images(api_run, "5")
    assert len(ui_image) == len(api_image) == 1
    ui_png = os.path.join(comfy.state, "output", ui_image[0]["subfolder"], ui_image[0]["filename"])
    assert ui_png != api_image[0]  # a second file: the UI run executed again
    assert np.array_equal(np.asarray(Image.open(ui_png)), np.asarray(Image.open(api_image[0])))

    close_banner = page.get_by_role("button", name="Try it out").locator("xpath=../../button[last()]")
    if close_banner.count():  # the frontend's "Introducing Nodes 2.0" banner covers the top of the canvas
        close_banner.click()
        page.mouse.move(800, 700)  # no hover tooltip in the screenshot
    page.keyboard.press(".")
    page.wait_for_timeout(500)
    os.makedirs(ARTIFACTS, exist_ok=True)
    page.screenshot(path=os.path.join(ARTIFACTS, "browser_ui_run.png"))
    if UPDATE_DOCS:
        page.screenshot(path=os.path.join(ROOT, "docs", "canvas.png"))
    assert not [e for e in page.errors if "lumina" in e.lower()], page.errors


def test_the_template_address_run_demo_prints_opens_our_example(page, comfy):
    """scripts/run_demo.sh prints /?template=lumina_mgpt2_t2i&source=ComfyUI-Lumina-mGPT2: the first visit
    then shows our text-to-image example, not ComfyUI's default SD1.5 graph."""
    fresh = page.context.new_page()
    try:
        fresh.goto(comfy.base + "/?template=lumina_mgpt2_t2i&source=ComfyUI-Lumina-mGPT2", wait_until="networkidle",
                   timeout=120000)
        fresh.wait_for_function("window.app?.graph?._nodes?.some(n => n.type === 'LuminaMGPT2Sampler')", timeout=60000)
        shown = sorted(fresh.evaluate("window.app.graph._nodes.map(n => n.type)"))
        assert shown == sorted(n["type"] for n in load_example("lumina_mgpt2_t2i.json")["nodes"])
    finally:
        fresh.close()


def test_stats_line_shows_tokens_per_forward_only_with_sjd_and_the_warning(page):
    plain = {"rows": 8, "total": 8, "tokens_per_s": 100.0, "tokens_per_forward": None, "elapsed_s": 0.5,
             "done": True, "eta_s": 0.0, "warning": None}
    assert page.evaluate("(s) => window.LuminaMGPT2.statsLines(s)", plain) == ["rows 8/8 | 100.0 tok/s | done in 0.5 s"]
    sjd = {**plain, "tokens_per_forward": 2.5, "warning": "task 'pair_depth' is not one this checkpoint was trained for"}
    assert page.evaluate("(s) => window.LuminaMGPT2.statsLines(s)", sjd) == [
        "warning: task 'pair_depth' is not one this checkpoint was trained for",
        "rows 8/8 | 100.0 tok/s | 2.50 tok/forward | done in 0.5 s"]
    # a run that ended early (an error, Cancel): the panel keeps how far it got, without an ETA
    stopped = {**plain, "rows": 3, "done": False, "eta_s": None, "elapsed_s": 95.0, "stopped": True}
    assert page.evaluate("(s) => window.LuminaMGPT2.statsText(s)", stopped) == \
        "rows 3/8 | 100.0 tok/s | stopped after 1 min 35 s"
