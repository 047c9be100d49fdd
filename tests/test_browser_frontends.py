"""What a user sees, on every frontend and canvas the pack is tested with: headless Debian chromium
(Playwright) against a real ComfyUI server.

The matrix (scripts/hosts.sh, `host_frontends`): on ComfyUI 0.33.0 the frontend it pins and the newest one
on PyPI (EXTRA_FRONTENDS, served with --front-end-root), each with the classic canvas and with Nodes 2.0
(`Comfy.VueNodes.Enabled`); on 0.3.75 its pinned frontend with the classic canvas. For each:
- page load: no console error, failed request or uncaught error from the pack;
- a run from the UI of the text-to-image example with an untrained task: the size line, the warning
  (wrapped) and the live statistics are visible text inside the sampler (not covered, not over another
  node), the sampler's image preview is on screen, the node's help page opens without a 404;
- the panel clears when it no longer describes the node (a size changed with the widget's arrow, a changed
  task, a rejected queue);
- a subgraph blueprint from subgraphs/ is inserted from the node search and runs to an image.
Screenshots go to test-artifacts/ (and the test's tmp_path).

LUMINA_UPDATE_BLUEPRINTS=1 rebuilds subgraphs/*.json from the example workflows on the newest frontend
(run once more without it to test the files written).
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid

import numpy as np
import pytest
from PIL import Image

from comfy_host import frontend_root
from conftest import COMFY_PYTHON, COMFY_VERSION, ROOT, load_example, registry_properties, start_comfy, stop_comfy

pytestmark = [pytest.mark.browser, pytest.mark.server, pytest.mark.slow]

CHROMIUM = os.environ.get("LUMINA_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = os.path.join(ROOT, "test-artifacts")
BLUEPRINTS = os.path.join(ROOT, "subgraphs")
UPDATE_BLUEPRINTS = os.environ.get("LUMINA_UPDATE_BLUEPRINTS") == "1"
PACK_URL = "/extensions/ComfyUI-Lumina-mGPT2/"
PACK_MARKS = ("ComfyUI-Lumina-mGPT2", "lumina_mgpt2", "LuminaMGPT2")  # in a message or stack: the pack's
CANVASES = {"classic": False, "nodes2": True}  # Comfy.VueNodes.Enabled
SAMPLER = 3  # the text-to-image example's sampler
T2I_BLUEPRINT = "Lumina-mGPT 2.0 text to image"
CONTROL_BLUEPRINT = "Lumina-mGPT 2.0 from a control image"
UNTRAINED = "pair_depth"  # not in the demo's generation_config.json "tasks": the sampler warns
LINE = 16  # px per panel line (web/lumina_mgpt2.js)


def host_frontends() -> list[str]:
    """The frontends this host is tested with, from scripts/hosts.sh: "pinned" (the host's own package),
    then the extra versions installed by scripts/setup.sh."""
    out = subprocess.run(["bash", "-c", f'source "{ROOT}/scripts/hosts.sh"; host_frontends "$1"', "_", COMFY_VERSION],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out and out[0] == "pinned", out
    return out


def pinned_version() -> str:
    """The frontend package in the host's venv (the server's python; scripts/test.sh runs pytest with it)."""
    try:
        return subprocess.run([COMFY_PYTHON, "-c", "from importlib.metadata import version; "
                               "print(version('comfyui-frontend-package'))"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "pinned"  # no host set up here: the server fixture says so


PINNED = pinned_version()
FRONTENDS = host_frontends()
NEWEST = FRONTENDS[-1]
# Nodes 2.0 where the host's frontends have it as a user setting worth testing (0.33.0's two); 0.3.75's 1.32
# is tested with the classic canvas only.
MATRIX = [(fe, canvas) for fe in FRONTENDS for canvas in CANVASES if canvas == "classic" or COMFY_VERSION != "0.3.75"]


def frontend_version(fe: str) -> str:
    return PINNED if fe == "pinned" else fe


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def servers(comfy, tmp_path_factory):
    """A server per frontend: the session's server for the pinned one, one more per extra frontend (started
    when first asked for), each serving the pack and its bundled demo model."""
    started = {"pinned": comfy}

    def get(fe: str):
        if fe not in started:
            root = frontend_root(fe)
            if not os.path.isfile(os.path.join(root, "index.html")):
                raise RuntimeError(f"frontend {fe} is not installed at {root}: run `bash scripts/setup.sh`")
            state = str(tmp_path_factory.mktemp(f"comfy_frontend_{fe}"))
            started[fe] = start_comfy(state, {"HF_HUB_OFFLINE": "1"}, front_end_root=root)
        return started[fe]

    yield get
    for fe, client in started.items():
        if fe != "pinned":
            stop_comfy(client)
    comfy.request("POST", "/settings", {"Comfy.VueNodes.Enabled": False})  # as the other browser tests expect


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True, args=FLAGS,
                                                       viewport={"width": 1600, "height": 1000})
        yield context
        context.close()
    shutil.rmtree(profile, ignore_errors=True)


# console.error with the stack that called it: "Failed to load resource" and the frontend's own errors name
# no file, so an error is the pack's when its text or its stack names the pack (or a request to it failed)
RECORD_ERRORS = """(() => {
  window.__errors = [];
  const error = console.error;
  console.error = function (...args) {
    window.__errors.push(args.map(String).join(' ') + '\\n' + (new Error().stack || ''));
    return error.apply(this, args);
  };
})()"""


class View:
    """One page of one frontend with one canvas, and what went wrong on it."""

    def __init__(self, page, server, fe: str, canvas: str, artifacts: str):
        self.page, self.server, self.fe, self.canvas, self.artifacts = page, server, fe, canvas, artifacts
        self.name = f"{frontend_version(fe)}-{canvas}"
        self.uncaught: list[str] = []
        self.failed: list[str] = []
        self.responses: dict[str, int] = {}
        self.expected: list[str] = []  # errors a test caused on purpose (a refused prompt)
        page.on("pageerror", lambda e: self.uncaught.append(f"{e}\n{getattr(e, 'stack', '')}"))
        page.on("response", self._response)

    def _response(self, response):
        self.responses[response.url] = response.status
        if response.status >= 400:
            self.failed.append(f"{response.status} {response.url}")

    def pack_errors(self) -> list[str]:
        console = self.page.evaluate("window.__errors || []")
        return ([e for e in console + self.uncaught
                 if any(m in e for m in PACK_MARKS) and not any(x in e for x in self.expected)]
                + [f for f in self.failed if PACK_URL in f])

    def js(self, script: str, arg=None):
        return self.page.evaluate(script, arg)

    def screenshot(self, label: str) -> str:
        os.makedirs(ARTIFACTS, exist_ok=True)
        path = os.path.join(self.artifacts, f"browser_{self.name}_{label}.png")
        self.page.screenshot(path=path)
        shutil.copy(path, ARTIFACTS)
        return path


@pytest.fixture(scope="module", params=MATRIX, ids=[f"{frontend_version(fe)}-{c}" for fe, c in MATRIX])
def view(request, servers, browser, tmp_path_factory):
    fe, canvas = request.param
    server = servers(fe)
    status, _ = server.request("POST", "/settings", {
        "Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False, "Comfy.Workflow.WorkflowTabsPosition": "Sidebar",
        "Comfy.VueNodes.Enabled": CANVASES[canvas]})
    assert status == 200
    page = browser.new_page()
    page.add_init_script(RECORD_ERRORS)
    v = View(page, server, fe, canvas, str(tmp_path_factory.mktemp("screens")))
    try:
        page.goto(server.base + "/", wait_until="networkidle", timeout=120000)
        page.wait_for_function("window.app?.graph && window.LiteGraph && window.LuminaMGPT2", timeout=120000)
        yield v
    finally:
        page.close()


# ------------------------------------------------------------------------------------------ helpers
def load_t2i_example(v: View) -> None:
    v.js("async (w) => { await window.app.loadGraphData(w); }", load_example("lumina_mgpt2_t2i.json"))
    v.page.wait_for_function(f"window.app.graph.getNodeById({SAMPLER})?.luminaInfo?.length > 0", timeout=30000)
    fit_view(v)


def fit_view(v: View) -> None:
    """The whole graph in view (the frontend's "." shortcut), nothing selected, the mouse out of the way."""
    v.js("async () => { window.app.canvas.deselectAll?.(); "
         "await window.app.extensionManager.command.execute('Comfy.Canvas.FitView'); }")
    v.page.mouse.move(800, 990)  # no hover tooltip in the screenshots
    last = [None]

    def still():  # the frontend animates the view: wait until it stops moving
        now = v.js("() => { const ds = window.app.canvas.ds; return [ds.scale, ds.offset[0], ds.offset[1]]; }")
        same, last[0] = now == last[0], now
        return same
    wait_until(still, 30, "the view did not stop moving")


def set_widget(v: View, node_id: int, name: str, value, callback: bool = True) -> None:
    """Set a widget the way the frontend does after an edit (value, then its callback)."""
    v.js("""([id, name, value, callback]) => {
        const w = window.app.graph.getNodeById(id).widgets.find(w => w.name === name);
        w.value = value;
        if (callback) w.callback?.(value);
        window.app.graph.setDirtyCanvas(true, true); }""", [node_id, name, value, callback])


def panel(v: View, node_id: int = SAMPLER) -> dict:
    """The node's information panel as laid out on screen: its lines, their boxes, the node's box and the
    boxes of every other node (client pixels)."""
    return v.js("""(id) => {
        const graph = window.app.graph, ds = window.app.canvas.ds;
        const canvasBox = window.app.canvas.canvas.getBoundingClientRect();
        const box = (r) => [r.left, r.top, r.right, r.bottom];
        const nodeBox = (n) => {
            const el = document.querySelector(`[data-node-id="${n.id}"]`);  // Nodes 2.0: a DOM element
            if (el) return box(el.getBoundingClientRect());
            const title = window.LiteGraph.NODE_TITLE_HEIGHT, x = canvasBox.left + (n.pos[0] + ds.offset[0]) * ds.scale;
            const y = canvasBox.top + (n.pos[1] - title + ds.offset[1]) * ds.scale;
            return [x, y, x + n.size[0] * ds.scale, y + (n.size[1] + title) * ds.scale];
        };
        const node = graph.getNodeById(id), el = node.luminaPanel.element;
        const r = el.getBoundingClientRect();
        const hit = document.elementFromPoint((r.left + r.right) / 2, (r.top + r.bottom) / 2);
        return {text: el.innerText, lines: [...el.children].map(c => ({kind: c.className, text: c.textContent,
                    box: box(c.getBoundingClientRect())})),
                box: box(r), uncovered: !!hit && el.contains(hit), node: nodeBox(node),
                clipped: el.scrollHeight > el.clientHeight + 1 || el.scrollWidth > el.clientWidth + 1,
                others: graph._nodes.filter(n => n !== node).map(nodeBox), scale: ds.scale}; }""", node_id)


def settled_panel(v: View, node_id: int = SAMPLER) -> dict:
    """panel() once the view has stopped moving (fit view animates) and nothing covers the panel."""
    last = [None]

    def settled():
        now = panel(v, node_id)
        same = last[0] is not None and now["box"] == last[0]["box"] and now["node"] == last[0]["node"]
        last[0] = now
        return now if same and now["uncovered"] else None
    return wait_until(settled, 30, f"the panel did not settle uncovered: {last[0]}")


def inside(inner, outer, slack=1.0) -> bool:
    return (inner[0] >= outer[0] - slack and inner[1] >= outer[1] - slack and inner[2] <= outer[2] + slack
            and inner[3] <= outer[3] + slack)


def overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def wait_until(check, timeout: float, what: str):
    deadline = time.time() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.time() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


def open_node_search(v: View) -> None:
    """Double-click the empty canvas, as a user opens the node search, until its input shows (a busy page
    can take the two clicks for two single ones), and put the cursor in it (1.32 opens it unfocused after
    other panels had the focus)."""
    search = v.page.locator("[role=dialog] input:visible, [role=search] input:visible").first
    for _ in range(5):
        v.page.mouse.dblclick(700, 500)
        try:
            search.wait_for(state="visible", timeout=5000)
            break
        except Exception:  # playwright's TimeoutError
            continue
    search.click()


def click_width_increment(v: View) -> None:
    """Raise the sampler's width by one step (32) the way a user does: the widget's increment arrow."""
    if v.canvas == "nodes2":
        v.page.locator(f'[data-node-id="{SAMPLER}"] [aria-label="width"] button[aria-label="Increment"]').first.click()
        return
    x, y = v.js("""(id) => {
        const n = window.app.graph.getNodeById(id), w = n.widgets.find(w => w.name === 'width');
        const ds = window.app.canvas.ds, c = window.app.canvas.canvas.getBoundingClientRect();
        const height = w.computedHeight ?? window.LiteGraph.NODE_WIDGET_HEIGHT;
        return [c.left + (n.pos[0] + n.size[0] - 25 + ds.offset[0]) * ds.scale,  // the right arrow
                c.top + (n.pos[1] + w.y + height / 2 + ds.offset[1]) * ds.scale]; }""", SAMPLER)
    v.page.mouse.click(x, y)


def click_run(v: View) -> None:
    v.page.get_by_role("button", name="Run", exact=True).first.click()


def run_from_ui(v: View, node_id: str = str(SAMPLER)) -> dict:
    """Click Run and wait for the run's last statistics event and its history entry (success)."""
    before = set(v.server.request("GET", "/history")[1])
    v.js("() => { window.LuminaMGPT2.stats = {}; }")
    click_run(v)
    v.page.wait_for_function(f"window.LuminaMGPT2.stats[{json.dumps(node_id)}]?.done === true", timeout=180000)

    def finished():
        new = {k: e for k, e in v.server.request("GET", "/history")[1].items() if k not in before}
        done = [e for e in new.values() if e["status"]["completed"] or e["status"]["status_str"] == "error"]
        return done[0] if done else None
    entry = wait_until(finished, 120, "the prompt queued from the UI did not finish")
    assert entry["status"]["status_str"] == "success", entry["status"]
    return entry


def saturated_pixels(v: View, box) -> int:
    """Strongly coloured pixels on screen inside box: the demo's images (coloured shapes on a coloured
    background) against the node's grey body and grey text."""
    shot = Image.open(io.BytesIO(v.page.screenshot())).convert("RGB")
    left, top, right, bottom = (max(0, int(box[0])), max(0, int(box[1])), int(box[2]), int(box[3]))
    if right <= left or bottom <= top:
        return 0
    pixels = np.asarray(shot.crop((left, top, right, bottom))).astype(int)
    high, low = pixels.max(axis=2), pixels.min(axis=2)
    return int(((high > 100) & (high - low > 80)).sum())


def size_line(width: int, height: int, task: str) -> str:
    h = 2 * height if task != "t2i" else height
    return f"canvas {width}x{h}: {h // 8}x{width // 8} codes, {(h // 8) * (width // 8 + 1) + 4} tokens"


# ------------------------------------------------------------------------------------------ tests
def test_page_loads_without_errors_from_the_pack(view):
    v = view
    assert v.js("window.__COMFYUI_FRONTEND_VERSION__") == frontend_version(v.fe)  # the frontend asked for
    assert v.js("window.app.ui.settings.getSettingValue('Comfy.VueNodes.Enabled')") is CANVASES[v.canvas]
    load_t2i_example(v)
    if v.canvas == "nodes2":  # the nodes are Vue components, not canvas drawings
        v.page.locator(f'[data-node-id="{SAMPLER}"]').first.wait_for(state="visible", timeout=30000)
    assert not v.pack_errors(), v.pack_errors()


def test_the_sampler_shows_size_warning_statistics_and_preview(view):
    v = view
    load_t2i_example(v)
    seed = uuid.uuid4().int % 10**9  # a prompt no earlier test ran: the sampler runs, not the cache
    set_widget(v, SAMPLER, "seed", seed, callback=False)
    set_widget(v, SAMPLER, "task", UNTRAINED)
    # before any run: the size line only, for the dual-panel canvas of the new task
    v.page.wait_for_function(f"window.app.graph.getNodeById({SAMPLER}).luminaInfo.length === 1 && "
                             f"window.app.graph.getNodeById({SAMPLER}).luminaInfo[0] === {json.dumps(size_line(64, 64, UNTRAINED))}")
    before = panel(v)
    assert before["text"] == size_line(64, 64, UNTRAINED)

    entry = run_from_ui(v)
    assert any(im["type"] == "output" for out in entry["outputs"].values() for im in out.get("images", []))
    fit_view(v)
    v.page.wait_for_function(f"window.app.graph.getNodeById({SAMPLER}).luminaInfo.length === 3")
    shown = settled_panel(v)
    kinds = [line["kind"] for line in shown["lines"]]
    texts = [line["text"] for line in shown["lines"]]
    assert kinds == ["lumina-mgpt2-size", "lumina-mgpt2-warning", "lumina-mgpt2-stats"], texts
    assert texts[0] == size_line(64, 64, UNTRAINED)
    assert texts[1].startswith(f"warning: task '{UNTRAINED}' is not one this checkpoint was trained for (t2i, ")
    assert re.fullmatch(r"rows 16/16 \| [0-9.]+ tok/s \| done in [0-9.]+ (s|min [0-9]+ s)", texts[2]), texts[2]
    # what the user sees: the same text rendered in the page, inside the sampler, over no other node
    assert shown["text"].split("\n") == texts
    assert not shown["clipped"], shown  # every line whole, none cut off at the panel's edge
    assert v.page.locator(f'.lumina-mgpt2-info[data-node="{SAMPLER}"]').is_visible()
    assert inside(shown["box"], shown["node"]), (shown["box"], shown["node"])
    assert not [o for o in shown["others"] if overlaps(shown["box"], o)], shown
    warning = shown["lines"][1]["box"]
    assert warning[2] <= shown["node"][2] and warning[3] - warning[1] >= 2 * LINE * shown["scale"] - 1  # wrapped
    # the preview: the sampler's decoded image, on screen below the panel inside the node
    if v.canvas == "nodes2":
        preview = v.page.locator(f'[data-node-id="{SAMPLER}"] img').first
        preview.wait_for(state="visible", timeout=30000)
        assert v.js("(img) => img.complete && img.naturalWidth > 0", preview.element_handle())
    below = [shown["node"][0], shown["box"][3], shown["node"][2], shown["node"][3]]
    v.screenshot("run")
    wait_until(lambda: saturated_pixels(v, below) > 100, 30, f"no preview image under the panel, in {below}")
    assert not v.pack_errors(), v.pack_errors()


def test_the_help_page_opens_without_a_404(view):
    v = view
    load_t2i_example(v)
    v.js(f"() => {{ window.app.canvas.selectNode(window.app.graph.getNodeById({SAMPLER})); window.app.canvas.setDirty(true, true); }}")
    v.page.get_by_test_id("info-button").first.click()
    with open(os.path.join(ROOT, "web", "docs", "LuminaMGPT2Sampler.md"), encoding="utf-8") as f:
        description = f.read().split("\n\n")[1].replace("\n", " ")
    first_words = re.match(r"[A-Za-z ,'-]+", description).group(0).strip()  # plain words, no markdown
    assert len(first_words) > 20, description
    v.page.get_by_text(first_words).first.wait_for(state="visible", timeout=30000)
    asked = {url: status for url, status in v.responses.items() if "/docs/LuminaMGPT2Sampler" in url}
    assert asked and all(status == 200 for status in asked.values()), asked
    v.screenshot("help")
    # back to the whole canvas: close what the help opened in, the properties panel (1.49 and later) or the
    # node library (1.32)
    opened_in = v.page.get_by_role("button", name=re.compile(r"^(Toggle properties panel|Node Library \(n\))$"))
    opened_in.first.click()
    assert not v.pack_errors(), v.pack_errors()


def test_the_panel_clears_when_it_no_longer_describes_the_node(view):
    v = view
    load_t2i_example(v)
    set_widget(v, SAMPLER, "seed", uuid.uuid4().int % 10**9, callback=False)
    set_widget(v, SAMPLER, "task", UNTRAINED)
    run_from_ui(v)
    fit_view(v)
    v.page.wait_for_function(f"window.app.graph.getNodeById({SAMPLER}).luminaInfo.length === 3")
    # a changed size, edited as a user does: the last run's statistics and warning describe another canvas
    click_width_increment(v)
    v.page.wait_for_function(f"window.app.graph.getNodeById({SAMPLER}).luminaInfo.length === 1")
    assert panel(v)["text"] == size_line(96, 64, UNTRAINED)
    # a changed task
    run_from_ui(v)
    v.page.wait_for_function(f"window.app.graph.getNodeById({SAMPLER}).luminaInfo.length === 3")
    set_widget(v, SAMPLER, "task", "t2i")
    assert panel(v)["text"] == size_line(96, 64, "t2i")
    run_from_ui(v)  # a trained task: statistics, no warning
    lines = v.js(f"window.app.graph.getNodeById({SAMPLER}).luminaInfo")
    assert len(lines) == 2 and lines[1].startswith("rows 8/8 | "), lines
    # a rejected queue: the server refuses the prompt (no such checkpoint), the old lines go
    set_widget(v, 1, "checkpoint", "no-such-checkpoint", callback=False)
    v.expected.append("Prompt outputs failed validation")  # the frontend logs the refusal: caused on purpose
    refusal = None
    for _ in range(3):  # a click the busy page dropped (no prompt went out) is clicked again, as a user would
        try:
            with v.page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/prompt"),
                                       timeout=30000) as sent:
                click_run(v)
        except Exception:  # playwright's TimeoutError: nothing was sent, so no dialog stands in the way
            continue
        refusal = sent.value.response()  # the answer, however long a busy machine takes; not clicked again
        break
    assert refusal is not None and refusal.status >= 400, f"the server refused nothing: {v.failed}"
    v.page.wait_for_function(f"window.app.graph.getNodeById({SAMPLER}).luminaInfo.length === 1")
    assert panel(v)["text"] == size_line(96, 64, "t2i")
    v.page.keyboard.press("Escape")
    assert not v.pack_errors(), v.pack_errors()


def test_a_blueprint_from_the_node_search_runs_to_an_image(view):
    v = view
    if UPDATE_BLUEPRINTS and v.fe == NEWEST and v.canvas == "classic":
        build_blueprints(v)
    v.page.keyboard.press("Escape")  # no dialog left over from an earlier test on this page
    v.js("() => window.app.graph.clear()")
    open_node_search(v)
    v.page.keyboard.type(T2I_BLUEPRINT, delay=10)
    v.page.get_by_text(T2I_BLUEPRINT).first.wait_for(state="visible", timeout=30000)
    v.page.keyboard.press("Enter")
    v.page.wait_for_function("window.app.graph._nodes.length === 1 && !!window.app.graph._nodes[0].subgraph",
                             timeout=30000)
    # newer frontends hand the new node to the mouse (a "ghost" that follows it) until a click places it
    v.page.locator("[role=dialog] input:visible, [role=search] input:visible").first.wait_for(state="hidden")
    v.page.mouse.move(720, 520)
    v.page.mouse.click(700, 500)
    v.page.wait_for_function("!window.app.graph._nodes[0].flags?.ghost", timeout=30000)
    inserted = v.js("""() => { const n = window.app.graph._nodes[0];
        return {title: n.title, widgets: Object.fromEntries((n.widgets || []).map(w => [w.name, w.value])),
                inner: n.subgraph.nodes.map(m => m.type).sort(), outputs: n.outputs.map(o => o.type)}; }""")
    assert inserted["title"] == T2I_BLUEPRINT
    assert inserted["outputs"] == ["IMAGE"]
    assert {"prompt", "width", "height", "seed", "speed"} <= set(inserted["widgets"]), inserted
    assert inserted["widgets"]["width"] == inserted["widgets"]["height"] == 64, inserted
    seed = uuid.uuid4().int % 10**9
    v.js("""(seed) => {
        const bp = window.app.graph._nodes[0];
        bp.widgets.find(w => w.name === 'seed').value = seed;
        const save = window.LiteGraph.createNode('SaveImage');
        save.pos = [bp.pos[0] + bp.size[0] + 80, bp.pos[1]];
        window.app.graph.add(save);
        bp.connect(0, save, 0);
        save.widgets.find(w => w.name === 'filename_prefix').value = 'lumina_mgpt2_blueprint';
    }""", seed)
    fit_view(v)
    inner = v.js("() => { const n = window.app.graph._nodes.find(n => n.subgraph); return String(n.id) + ':' + "
                 "String(n.subgraph.nodes.find(m => m.type === 'LuminaMGPT2Sampler').id); }")
    entry = run_from_ui(v, inner)  # the sampler runs inside the subgraph, under "outer:inner"
    # its statistics go to the sampler inside (what a user sees on opening the subgraph), not to a root node
    lines = v.js("(id) => window.LuminaMGPT2.nodeOfExecutionId(id).luminaInfo", inner)
    assert len(lines) == 2 and lines[0] == size_line(64, 64, "t2i") and lines[1].startswith("rows 8/8 | "), lines
    images = [im for out in entry["outputs"].values() for im in out.get("images", []) if im["type"] == "output"]
    assert len(images) == 1 and images[0]["filename"].startswith("lumina_mgpt2_blueprint")
    png = Image.open(os.path.join(v.server.state, "output", images[0]["subfolder"], images[0]["filename"]))
    assert png.size == (64, 64)
    fit_view(v)
    v.screenshot("blueprint")
    assert not v.pack_errors(), v.pack_errors()


# ------------------------------------------------------------------------------------------ blueprints
# What each blueprint is made of, from an example workflow: the nodes left out (the example's own source image
# and output nodes), its inputs (name, label, [(inner node id, input name)]) and outputs (name, label, inner
# node id, output index), in order.
BLUEPRINT_SPECS = {
    T2I_BLUEPRINT: {
        "example": "lumina_mgpt2_t2i_sjd.json", "leave_out": [5],
        "inputs": [("prompt", "prompt", [(3, "prompt")]), ("width", "width", [(3, "width")]),
                   ("height", "height", [(3, "height")]), ("seed", "seed", [(3, "seed")]),
                   ("speed", "speed (SJD window)", [(6, "window")])],
        "outputs": [("image", "image", 4, 0)],
        "description": "Lumina-mGPT 2.0 text to image: prompt, size (a multiple of 32), seed and speed (the SJD "
                       "window: codes guessed per forward; exact SJD gives the same distribution of images as plain "
                       "sampling) in, the image out. Uses the bundled demo model; pick another checkpoint inside.",
    },
    CONTROL_BLUEPRINT: {
        "example": "lumina_mgpt2_control_canny.json", "leave_out": [3, 4, 5, 9],
        "inputs": [("image", "control image", [(6, "image")]), ("prompt", "prompt", [(7, "prompt")]),
                   ("width", "width", [(6, "width"), (7, "width")]),
                   ("height", "height", [(6, "height"), (7, "height")]),
                   ("seed", "seed", [(7, "seed")]), ("preprocess", "preprocess", [(6, "preprocess")])],
        "outputs": [("image", "image", 8, 0), ("control_map", "control map", 6, 1)],
        "description": "Lumina-mGPT 2.0 from a control image (control_canny): a photo (preprocess canny) or a "
                       "ready canny map (preprocess none), a prompt, the panel size and a seed in; the image and the "
                       "control map it followed out. Uses the bundled demo model; the released control tasks "
                       "need the Omni checkpoint.",
    },
}

BUILD_JS = """async ({workflow, leaveOut, inputs, outputs, name}) => {
    await window.app.loadGraphData(workflow);
    const graph = window.app.graph;
    for (const id of leaveOut) graph.remove(graph.getNodeById(id));
    const { subgraph } = graph.convertToSubgraph(new Set(graph._nodes));
    // the frontend's guesses out, ours in, in order
    for (const input of [...subgraph.inputs]) subgraph.removeInput(input);
    for (const output of [...subgraph.outputs]) subgraph.removeOutput(output);
    for (const [inputName, label, targets] of inputs) {
        let input = null;
        for (const [id, slotName] of targets) {
            const node = subgraph.getNodeById(id), slot = node.inputs.find(s => s.name === slotName);
            input ??= subgraph.addInput(inputName, String(slot.type));
            input.connect(slot, node);
        }
        input.label = label;
    }
    for (const [outputName, label, id, index] of outputs) {
        const node = subgraph.getNodeById(id), slot = node.outputs[index];
        const output = subgraph.addOutput(outputName, String(slot.type));
        output.connect(slot, node);
        output.label = label;
    }
    subgraph.name = name;
    return JSON.parse(JSON.stringify(graph.serialize()));
}"""


def build_blueprints(v: View) -> None:
    """subgraphs/<name>.json from the example workflows, converted and serialized by this frontend."""
    for name, spec in BLUEPRINT_SPECS.items():
        blueprint = v.js(BUILD_JS, {"workflow": load_example(spec["example"]), "leaveOut": spec["leave_out"],
                                    "inputs": spec["inputs"], "outputs": spec["outputs"], "name": name})
        (instance,) = blueprint["nodes"]
        (definition,) = blueprint["definitions"]["subgraphs"]
        # no widgets_values: the instance takes its widgets' values from the nodes inside
        instance.pop("widgets_values", None)
        instance.pop("widgets_values_named", None)
        for i, (_, label, _) in enumerate(spec["inputs"]):
            definition["inputs"][i]["label"] = instance["inputs"][i]["label"] = label
        for i, (_, label, _, _) in enumerate(spec["outputs"]):
            definition["outputs"][i]["label"] = instance["outputs"][i]["label"] = label
        definition["description"] = spec["description"]
        definition["category"] = "Lumina-mGPT 2.0"
        registry_properties(definition)
        blueprint.get("extra", {}).pop("ds", None)
        os.makedirs(BLUEPRINTS, exist_ok=True)
        with open(os.path.join(BLUEPRINTS, f"{name}.json"), "w", encoding="utf-8") as f:
            json.dump(blueprint, f, indent=1)
            f.write("\n")
