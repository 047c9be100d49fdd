"""quantization=auto and kv_cache=auto inside a real ComfyUI server, on the bundled demo model: the run
succeeds and the Sampler's stats event reports the plan."""
import pytest

from lumina_core.model.files import DEMO_IMAGE_TOKENIZER, DEMO_PREFIX, DEMO_TRANSFORMER
from test_server_nodes import t2i

pytestmark = [pytest.mark.server, pytest.mark.slow]


def test_auto_quantization_on_the_demo_runs_and_reports_its_plan(comfy):
    prompt = t2i(seed=4, prefix="auto-plan", preview=False, cfg=1.5, temperature=0.5, kv_cache="auto")
    prompt["1"]["inputs"].update(checkpoint=DEMO_PREFIX + DEMO_TRANSFORMER, quantization="auto")
    prompt["2"]["inputs"]["image_tokenizer"] = DEMO_PREFIX + DEMO_IMAGE_TOKENIZER
    run = comfy.run(prompt)
    assert run.status == "success", run.history["status"]
    stats = [s for s in run.of_type("lumina_mgpt2.stats") if s["node"] == "3"]
    # this server runs on the CPU: auto keeps float weights and the compute-dtype cache, and says so
    assert stats and all(s["memory"] == "none weights (auto: system memory keeps the float weights); bf16 cache "
                         "(auto: system memory, the compute-dtype cache)" for s in stats), stats[-1]
    int8 = t2i(seed=4, prefix="int8-plan", preview=False, cfg=1.5, temperature=0.5, kv_cache="int8")
    int8["1"]["inputs"].update(checkpoint=DEMO_PREFIX + DEMO_TRANSFORMER, quantization="int4")
    int8["2"]["inputs"]["image_tokenizer"] = DEMO_PREFIX + DEMO_IMAGE_TOKENIZER
    run = comfy.run(int8)
    assert run.status == "success", run.history["status"]
    stats = [s for s in run.of_type("lumina_mgpt2.stats") if s["node"] == "3"]
    assert stats[-1]["memory"] == "int4 weights (chosen); int8 cache (chosen)"
