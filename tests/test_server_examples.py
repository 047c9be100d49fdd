"""Every shipped example workflow (API format) runs on the bundled demo model to saved PNGs of the right size,
and the set-up-and-run command works end to end. LUMINA_UPDATE_EXAMPLES=1 also rewrites the .jpg thumbnails."""
import copy
import glob
import os
import re
import subprocess
import urllib.request

import numpy as np
import pytest
from PIL import Image

from conftest import EXAMPLES, ROOT, demo_sampling, free_port, load_example, registry_properties

pytestmark = [pytest.mark.server, pytest.mark.slow]

API_TWINS = sorted(glob.glob(os.path.join(EXAMPLES, "api", "*_api.json")))
UPDATE_EXAMPLES = os.environ.get("LUMINA_UPDATE_EXAMPLES") == "1"
THUMBNAIL_SIDE = 256
THUMBNAIL_TOLERANCE = 8.0  # mean absolute difference in 8-bit levels, thumbnail vs. the image made


def expected_size(workflow: dict, save_id: str) -> tuple[int, int]:
    """Width and height of what a SaveImage node receives: the panel size of the sampler behind its decoder."""
    decode = workflow[workflow[save_id]["inputs"]["images"][0]]
    source = workflow[decode["inputs"]["tokens"][0]]
    while source["class_type"] != "LuminaMGPT2Sampler":
        source = workflow[source["inputs"]["tokens"][0]]
    inputs = source["inputs"]
    dual = inputs["task"] != "t2i" and decode["inputs"]["panel"] == "full canvas"
    return inputs["width"], inputs["height"] * (2 if dual else 1)


def test_every_example_is_shipped_in_both_formats():
    names = {os.path.basename(p)[: -len("_api.json")] for p in API_TWINS}
    assert {"lumina_mgpt2_t2i", "lumina_mgpt2_t2i_sjd", "lumina_mgpt2_best_of_n", "lumina_mgpt2_control_canny"} <= names
    for name in names:
        assert os.path.isfile(os.path.join(EXAMPLES, f"{name}.json")), f"{name}: no UI-format workflow"
        assert os.path.isfile(os.path.join(EXAMPLES, f"{name}.jpg")) or UPDATE_EXAMPLES, f"{name}: no thumbnail"


def test_ui_workflows_name_the_pack_for_comfyui_manager():
    """'Install missing nodes' finds the pack from each node's cnr_id."""
    for path in glob.glob(os.path.join(EXAMPLES, "*.json")):
        ui = load_example(path)
        assert any(n["type"].startswith("LuminaMGPT2") for n in ui["nodes"]), path
        assert ui == registry_properties(copy.deepcopy(ui)), \
            f"{os.path.basename(path)}: a node lacks registry properties (LUMINA_UPDATE_EXAMPLES=1)"


def test_examples_use_the_demo_models_recommended_settings():
    wanted = demo_sampling()
    for path in API_TWINS:
        for node in load_example(path).values():
            if node["class_type"] == "LuminaMGPT2Sampler":
                got = {k: node["inputs"][k] for k in wanted}
                assert got == wanted, (f"{os.path.basename(path)} samples with {got} but the demo recommends {wanted}: "
                                       "rerun tests/test_browser.py with LUMINA_UPDATE_EXAMPLES=1")


@pytest.mark.parametrize("path", API_TWINS, ids=[os.path.basename(p) for p in API_TWINS])
def test_example_workflow_runs_to_saved_pngs(comfy, path):
    workflow = load_example(path)
    run = comfy.run(workflow, timeout=600)
    assert run.status == "success", run.of_type("execution_error")
    saves = [nid for nid, node in workflow.items() if node["class_type"] == "SaveImage"]
    assert saves
    for nid in saves:
        images = comfy.output_images(run, nid)
        assert images
        for png in images:
            assert Image.open(png).size == expected_size(workflow, nid)
    # the thumbnail users see in the template browser is what the workflow, as shipped, makes
    first = Image.open(comfy.output_images(run, saves[0])[0]).convert("RGB")
    made = first.resize((THUMBNAIL_SIDE, THUMBNAIL_SIDE * first.height // first.width), Image.NEAREST)
    thumbnail = path.replace(os.path.join("api", ""), "").replace("_api.json", ".jpg")
    if UPDATE_EXAMPLES:
        made.save(thumbnail, quality=90)
    shipped = Image.open(thumbnail).convert("RGB")
    assert shipped.size == made.size, f"{os.path.basename(thumbnail)}: {shipped.size}, the workflow makes {made.size}"
    diff = np.abs(np.asarray(shipped, dtype=np.int16) - np.asarray(made, dtype=np.int16))
    # JPEG at quality 90 moves a pixel by a few levels on average; another image moves it by dozens
    assert diff.mean() < THUMBNAIL_TOLERANCE, (
        f"{os.path.basename(thumbnail)} does not show what the workflow makes (mean difference "
        f"{diff.mean():.1f} levels): rerun with LUMINA_UPDATE_EXAMPLES=1")


def test_set_up_and_run_command(tmp_path):
    """`bash scripts/run_demo.sh --exit-after-image`: set-up, server, the t2i example through the API, a PNG."""
    env = {**os.environ, "LUMINA_STATE": str(tmp_path / "state"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", os.path.join(ROOT, "scripts", "run_demo.sh"), "--exit-after-image",
                           "--port", str(free_port())], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    pngs = re.findall(r"^\[demo\] PNG: (.+)$", done.stdout, re.M)
    assert pngs and all(Image.open(p).size == (64, 64) for p in pngs), done.stdout
    # where the examples are, said when the server starts (not only once the image is done), with the address
    # that opens the UI on our example instead of ComfyUI's default graph (tests/test_browser.py opens it)
    examples = done.stdout.index("[demo] examples: Workflow > Browse Templates > ComfyUI-Lumina-mGPT2")
    assert examples < done.stdout.index("[demo] PNG: ")
    assert "/?template=lumina_mgpt2_t2i&source=ComfyUI-Lumina-mGPT2" in done.stdout[examples:].splitlines()[0]
    port_line = re.search(r"http://127\.0\.0\.1:(\d+)", done.stdout)
    assert port_line  # and the server it started is gone again
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port_line.group(1)}/system_stats", timeout=2)
