"""The pack inside a real ComfyUI server, driven over HTTP and the websocket like any client."""
import json
import math
import os
import re
import struct
import threading
import urllib.request
from io import BytesIO

import numpy as np
import pytest
from PIL import Image

from conftest import HOST_CHECKS_COMBOS, TINY_CHECKPOINT, TINY_IMAGE_TOKENIZER, check_progress_values
from lumina_core.model.files import DEMO_IMAGE_TOKENIZER, DEMO_PREFIX, DEMO_TRANSFORMER

pytestmark = [pytest.mark.server, pytest.mark.slow]

NODE_IDS = ["LuminaMGPT2ModelLoader", "LuminaMGPT2ImageTokenizerLoader", "LuminaMGPT2ConditionEncoder",
            "LuminaMGPT2Sampler", "LuminaMGPT2SJDSettings", "LuminaMGPT2BestOfNSettings", "LuminaMGPT2SelectBest",
            "LuminaMGPT2Decode", "LuminaMGPT2Download", "LuminaMGPT2SpeedSettings",
            "LuminaMGPT2SamplingSettings", "LuminaMGPT2ImageToTokens"]


def t2i(seed=0, size=64, batch=1, prefix="t2i", prompt="a red circle", preview=True, **sampler):
    """API-format prompt on the tiny models: load, sample, decode, save."""
    sampler_inputs = {"model": ["1", 0], "prompt": prompt, "task": "t2i", "width": size, "height": size,
                      "seed": seed, "cfg": 4.0, "top_k": 4096, "temperature": 1.0, "batch_size": batch, **sampler}
    if preview:
        sampler_inputs["image_tokenizer"] = ["2", 0]
    return {
        "1": {"class_type": "LuminaMGPT2ModelLoader",
              "inputs": {"checkpoint": TINY_CHECKPOINT, "dtype": "auto", "attention": "sdpa"}},
        "2": {"class_type": "LuminaMGPT2ImageTokenizerLoader", "inputs": {"image_tokenizer": TINY_IMAGE_TOKENIZER}},
        "3": {"class_type": "LuminaMGPT2Sampler", "inputs": sampler_inputs},
        "4": {"class_type": "LuminaMGPT2Decode",
              "inputs": {"tokens": ["3", 0], "image_tokenizer": ["2", 0], "panel": "output"}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": prefix}},
    }


def with_sjd(prompt: dict, window: int = 16) -> dict:
    prompt["6"] = {"class_type": "LuminaMGPT2SJDSettings", "inputs": {"window": window, "init": "random", "mode": "exact"}}
    prompt["3"]["inputs"]["sjd"] = ["6", 0]
    return prompt


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def executed_nodes(run) -> set:
    return {e["node"] for e in run.of_type("executing") if e.get("node")}


def test_object_info_lists_every_node_with_inputs_and_tooltips(comfy):
    info = comfy.object_info()
    for node_id in NODE_IDS:
        assert node_id in info, f"{node_id} missing from /object_info (see the server log for an import error)"
        node = info[node_id]
        assert node["category"].startswith("Lumina-mGPT")
        assert node["description"]
        for section in ("required", "optional"):
            for name, spec in node["input"].get(section, {}).items():
                assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
        assert all(node["output_tooltips"]), f"{node_id} has an output without a tooltip"
    sampler = info["LuminaMGPT2Sampler"]
    assert sampler["input_order"]["required"] == ["model", "prompt", "task", "width", "height", "seed", "cfg",
                                                  "top_k", "temperature", "batch_size"]
    assert "control_canny" in sampler["input"]["required"]["task"][1]["options"]
    loader = info["LuminaMGPT2ModelLoader"]["input"]["required"]["checkpoint"][1]["options"]
    assert TINY_CHECKPOINT in loader
    vq = info["LuminaMGPT2ImageTokenizerLoader"]["input"]["required"]["image_tokenizer"][1]["options"]
    assert TINY_IMAGE_TOKENIZER in vq
    # the tiny transformer's shards sit in a checkpoint folder and are not offered as image tokenizers
    assert not any(name.startswith("model-") for name in vq)


def test_run_saves_png_with_progress_previews_and_stats(comfy, progress_throttle_s):
    run = comfy.run(t2i(seed=11, prefix="events"))
    assert run.status == "success", run.history["status"]
    (png,) = comfy.output_images(run, "5")
    assert Image.open(png).size == (64, 64)
    progress = [p for p in run.of_type("progress") if p["node"] == "3"]
    check_progress_values([p["value"] for p in progress], 8, progress_throttle_s)  # a step per token row
    assert {p["max"] for p in progress} == {8}
    # binary preview frames: event type 1 (PREVIEW_IMAGE) + image type 1 (JPEG) + a JPEG, at the image's own
    # size (the UI labels a preview with its size: an enlarged one read "512 x 512" under a 64x64 image)
    previews = [f for f in run.frames if struct.unpack(">II", f[:8]) == (1, 1)]
    assert previews and all(f[8:10] == b"\xff\xd8" for f in previews)
    assert all(Image.open(BytesIO(f[8:])).size == (64, 64) for f in previews)
    stats = [s for s in run.of_type("lumina_mgpt2.stats") if s["node"] == "3"]
    assert [s["rows"] for s in stats] == list(range(1, 9)) + [8]
    # plain decoding makes one code per forward: no tokens-per-forward figure (that is SJD's), no warning
    assert stats[-1]["done"] and all(s["tokens_per_forward"] is None and s["warning"] is None for s in stats)
    assert all(s["tokens_per_s"] > 0 for s in stats)


def test_identical_rerun_is_cached_and_new_seed_changes_the_image(comfy):
    first = comfy.run(t2i(seed=21, prefix="cache"))
    again = comfy.run(t2i(seed=21, prefix="cache"))
    assert again.status == "success"
    cached = set(again.of_type("execution_cached")[0]["nodes"])
    assert {"1", "2", "3", "4", "5"} <= cached and not executed_nodes(again) & {"3"}
    other = comfy.run(t2i(seed=22, prefix="cache"))
    assert "3" in executed_nodes(other)
    a, b = pixels(comfy.output_images(first, "5")[0]), pixels(comfy.output_images(other, "5")[0])
    assert a.shape == b.shape and not np.array_equal(a, b)


def test_image_i_of_a_batch_equals_seed_plus_i_alone(comfy):
    alone = comfy.run(t2i(seed=31, prefix="alone", preview=False))
    batch = comfy.run(t2i(seed=30, batch=3, prefix="batch", preview=False))
    images = comfy.output_images(batch, "5")
    assert len(images) == 3
    assert np.array_equal(pixels(images[1]), pixels(comfy.output_images(alone, "5")[0]))
    assert not np.array_equal(pixels(images[0]), pixels(images[1]))


def test_seed_zero_is_a_real_seed(comfy):
    """Seed 0 must not mean 'random': the same image alone and as image 0 of a batch."""
    alone = comfy.run(t2i(seed=0, prefix="zero", preview=False))
    batch = comfy.run(t2i(seed=0, batch=2, prefix="zero_batch", preview=False))
    first, second = (pixels(p) for p in comfy.output_images(batch, "5"))
    assert np.array_equal(pixels(comfy.output_images(alone, "5")[0]), first)
    assert not np.array_equal(first, second)


def test_bad_size_is_http_400_with_node_errors(comfy):
    status, body = comfy.queue(t2i(size=100))
    assert status == 400
    errors = body["node_errors"]["3"]["errors"]
    assert errors[0]["type"] == "custom_validation_failed"
    assert "multiple of 32" in errors[0]["details"] and "96 or 128" in errors[0]["details"]


def test_unknown_checkpoint_is_http_400(comfy):
    prompt = t2i()
    prompt["1"]["inputs"]["checkpoint"] = "../../etc"
    status, body = comfy.queue(prompt)
    assert status == 400
    error = body["node_errors"]["1"]["errors"][0]
    assert error["type"] == "custom_validation_failed" and "not available" in error["details"]


def test_size_from_a_linked_int_node_is_checked_at_run_time(comfy):
    """One core Int node driving width and height (as the tooltips suggest for sampler + condition encoder):
    the value only exists at run time, so the queue must accept it and the sampler check it when it runs."""
    prompt = t2i(seed=42, prefix="linked_size", preview=False)
    prompt["9"] = {"class_type": "PrimitiveInt", "inputs": {"value": 64}}
    prompt["3"]["inputs"]["width"] = prompt["3"]["inputs"]["height"] = ["9", 0]
    run = comfy.run(prompt)
    assert run.status == "success", run.history["status"]
    assert Image.open(comfy.output_images(run, "5")[0]).size == (64, 64)
    prompt["9"]["inputs"]["value"] = 100
    bad = comfy.run(prompt)
    assert bad.status == "error"
    (error,) = bad.of_type("execution_error")
    assert error["node_type"] == "LuminaMGPT2Sampler" and "multiple of 32" in error["exception_message"]


def test_runtime_error_is_reported_and_server_keeps_serving(comfy):
    run = comfy.run(t2i(size=1280, prefix="too_big"))  # 25764 positions > the tiny model's 20000
    assert run.status == "error"
    (error,) = run.of_type("execution_error")
    assert error["node_type"] == "LuminaMGPT2Sampler" and error["exception_type"].endswith("InputError")
    assert "Use a smaller size" in error["exception_message"]
    assert comfy.run(t2i(seed=41, prefix="after_error")).status == "success"


def test_condition_flow_and_size_mismatch_error(comfy):
    prompt = t2i(seed=51, prefix="control")
    prompt["6"] = {"class_type": "LuminaMGPT2ConditionEncoder",
                   "inputs": {"image_tokenizer": ["2", 0], "image": ["4", 0], "preprocess": "canny",
                              "width": 64, "height": 64, "canny_low": 100, "canny_high": 200}}
    prompt["7"] = {"class_type": "LuminaMGPT2Sampler",
                   "inputs": {**prompt["3"]["inputs"], "task": "control_canny", "condition": ["6", 0]}}
    prompt["8"] = {"class_type": "LuminaMGPT2Decode",
                   "inputs": {"tokens": ["7", 0], "image_tokenizer": ["2", 0], "panel": "full canvas"}}
    prompt["9"] = {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "control_full"}}
    run = comfy.run(prompt)
    assert run.status == "success", run.of_type("execution_error")
    assert Image.open(comfy.output_images(run, "9")[0]).size == (64, 128)
    prompt["7"]["inputs"]["width"] = 96
    run = comfy.run(prompt)
    (error,) = run.of_type("execution_error")
    assert "encoded at 64x64" in error["exception_message"] and "96x64" in error["exception_message"]


def test_sampling_settings_reach_the_sampler(comfy):
    """cfg_mode 'upstream' turns cfg 2 into upstream's constant 4 (its max(4, ...) schedule), so it must
    give the plain cfg-4 image and not the plain cfg-2 one."""
    prompt = t2i(seed=71, prefix="upstream_cfg", cfg=2.0, preview=False)
    prompt["6"] = {"class_type": "LuminaMGPT2SamplingSettings",
                   "inputs": {"top_p": 1.0, "top_n_sigma": 0.0, "guidance_top_k": 0, "cfg_mode": "upstream"}}
    prompt["3"]["inputs"]["sampling"] = ["6", 0]
    upstream = pixels(comfy.output_images(comfy.run(prompt), "5")[0])
    cfg4 = pixels(comfy.output_images(comfy.run(t2i(seed=71, prefix="cfg4", cfg=4.0, preview=False)), "5")[0])
    cfg2 = pixels(comfy.output_images(comfy.run(t2i(seed=71, prefix="cfg2", cfg=2.0, preview=False)), "5")[0])
    assert np.array_equal(upstream, cfg4) and not np.array_equal(upstream, cfg2)
    prompt["6"]["inputs"]["cfg_mode"] = "sideways"
    status, body = comfy.queue(prompt)
    if HOST_CHECKS_COMBOS:  # the executor's check: one error, under cfg_mode
        assert status == 400 and [e["extra_info"]["input_name"] for e in body["node_errors"]["6"]["errors"]] == [
            "cfg_mode"]
    else:  # ComfyUI 0.3.75 does not check V3 combos: the node refuses it when it runs
        (error,) = comfy.run(prompt).of_type("execution_error")
        assert "cfg_mode 'sideways' is not available" in error["exception_message"]


def test_sjd_greedy_equals_plain_greedy_with_fewer_forwards(comfy):
    plain = comfy.run(t2i(seed=81, prefix="greedy_plain", top_k=1, preview=False))
    sjd = comfy.run(with_sjd(t2i(seed=81, prefix="greedy_sjd", top_k=1, preview=False)))
    assert sjd.status == "success", sjd.of_type("execution_error")
    assert np.array_equal(pixels(comfy.output_images(plain, "5")[0]), pixels(comfy.output_images(sjd, "5")[0]))
    stats = [s for s in sjd.of_type("lumina_mgpt2.stats") if s["node"] == "3"]
    assert all(s["tokens_per_forward"] is not None for s in stats)  # live, not only at the end
    assert stats[-1]["done"] and stats[-1]["tokens_per_forward"] > 1.0


def test_best_of_n_keeps_every_candidate_and_selects_the_best(comfy, progress_throttle_s):
    prompt = t2i(seed=90, prefix="bon_best", preview=False)
    prompt["6"] = {"class_type": "LuminaMGPT2BestOfNSettings",
                   "inputs": {"n": 3, "scorer": "likelihood", "clip_model": "none", "chunk_size": 2}}
    prompt["3"]["inputs"]["best_of_n"] = ["6", 0]
    prompt["7"] = {"class_type": "LuminaMGPT2SelectBest", "inputs": {"tokens": ["3", 0], "k": 1}}
    prompt["4"]["inputs"]["tokens"] = ["7", 0]
    prompt["8"] = {"class_type": "LuminaMGPT2Decode",
                   "inputs": {"tokens": ["3", 0], "image_tokenizer": ["2", 0], "panel": "output"}}
    prompt["9"] = {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "bon_all"}}
    prompt["10"] = {"class_type": "PreviewAny", "inputs": {"source": ["7", 1]}}
    run = comfy.run(prompt)
    assert run.status == "success", run.of_type("execution_error")
    candidates = [pixels(p) for p in comfy.output_images(run, "9")]
    (best,) = [pixels(p) for p in comfy.output_images(run, "5")]
    lines = run.history["outputs"]["10"]["text"][0].splitlines()
    assert len(candidates) == 3 and len(lines) == 3 and lines[0].startswith("* seed ")
    scores = [float(line.split(": ")[1]) for line in lines]
    assert scores == sorted(scores, reverse=True)
    best_seed = int(lines[0].split()[2].rstrip(":"))
    assert np.array_equal(best, candidates[best_seed - 90])
    # candidate i is seed 90 + i: regenerated alone it is the same image
    alone = comfy.run(t2i(seed=91, prefix="bon_alone", preview=False))
    assert np.array_equal(pixels(comfy.output_images(alone, "5")[0]), candidates[1])
    # two chunks (2 + 1 candidates): the bar runs once over both, a step per row
    progress = [p["value"] for p in run.of_type("progress") if p["node"] == "3"]
    check_progress_values(progress, 16, progress_throttle_s)


def test_best_of_n_needs_batch_size_1(comfy):
    prompt = t2i(seed=95, batch=2, preview=False)
    prompt["6"] = {"class_type": "LuminaMGPT2BestOfNSettings",
                   "inputs": {"n": 2, "scorer": "likelihood", "clip_model": "none", "chunk_size": 0}}
    prompt["3"]["inputs"]["best_of_n"] = ["6", 0]
    (error,) = comfy.run(prompt).of_type("execution_error")
    assert "set batch_size to 1" in error["exception_message"]


def test_best_of_n_with_the_demo_verifier_ranks_by_its_clip_similarity(comfy):
    """The bundled verifier is offered as a clip_model and scores through the CLIP scorer; the printed scores
    are the CLIP cosine similarities of each saved candidate, computed here by transformers directly."""
    import torch
    from transformers import CLIPModel, CLIPProcessor

    from demo import DEMO_ROOT, DEMO_VERIFIER
    options = comfy.object_info()["LuminaMGPT2BestOfNSettings"]["input"]["required"]["clip_model"][1]["options"]
    assert "demo: " + DEMO_VERIFIER in options
    prompt = t2i(seed=70, prefix="bon_clip", prompt="a red circle on the left")  # preview: wires image_tokenizer
    prompt["6"] = {"class_type": "LuminaMGPT2BestOfNSettings",
                   "inputs": {"n": 3, "scorer": "clip", "clip_model": "demo: " + DEMO_VERIFIER, "chunk_size": 0}}
    prompt["3"]["inputs"]["best_of_n"] = ["6", 0]
    prompt["8"] = {"class_type": "LuminaMGPT2Decode",
                   "inputs": {"tokens": ["3", 0], "image_tokenizer": ["2", 0], "panel": "output"}}
    prompt["9"] = {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "bon_clip_all"}}
    prompt["7"] = {"class_type": "LuminaMGPT2SelectBest", "inputs": {"tokens": ["3", 0], "k": 1}}
    prompt["10"] = {"class_type": "PreviewAny", "inputs": {"source": ["7", 1]}}
    run = comfy.run(prompt)
    assert run.status == "success", [e.get("exception_message") for e in run.of_type("execution_error")]
    candidates = [pixels(p) for p in comfy.output_images(run, "9")]
    lines = run.history["outputs"]["10"]["text"][0].splitlines()
    printed = {int(m.group(1)) - 70: float(m.group(2)) for m in (re.search(r"seed (\d+): (-?[\d.]+)", x) for x in lines)}
    folder = os.path.join(DEMO_ROOT, DEMO_VERIFIER)
    clip, proc = CLIPModel.from_pretrained(folder).float().eval(), CLIPProcessor.from_pretrained(folder)
    with torch.no_grad():
        out = clip(**proc(text=["a red circle on the left"], images=candidates, return_tensors="pt", padding=True))
    image = torch.nn.functional.normalize(out.image_embeds, dim=-1)
    text = torch.nn.functional.normalize(out.text_embeds, dim=-1)
    expected = (image @ text[0]).tolist()
    assert sorted(printed) == [0, 1, 2]
    for i, score in printed.items():
        assert abs(score - expected[i]) < 2e-3, (i, score, expected)


def test_clip_scorer_without_a_clip_model_is_http_400(comfy):
    prompt = t2i(preview=False)
    prompt["6"] = {"class_type": "LuminaMGPT2BestOfNSettings",
                   "inputs": {"n": 2, "scorer": "clip", "clip_model": "none", "chunk_size": 0}}
    prompt["3"]["inputs"]["best_of_n"] = ["6", 0]
    status, body = comfy.queue(prompt)
    assert status == 400 and "models/clip_vision" in body["node_errors"]["6"]["errors"][0]["details"]


@pytest.mark.parametrize("sjd", [False, True], ids=["plain", "sjd"])
def test_interrupt_stops_a_long_generation(comfy, sjd):
    """1024x1024 on the tiny model: 128 rows of 128 codes, far longer than the wait for the first rows. When
    the request lands depends on the client's round trip and the machine's load, so this checks that the run
    stops early and the server goes on; that the sampler stops on the row where the interrupt is seen is
    checked in-process, where it is deterministic (tests/test_nodes_memory.py)."""
    seen = {}

    def interrupt_after_two_rows(run, event):
        if event["type"] == "progress" and event["data"]["node"] == "3" and event["data"]["value"] >= 2 \
                and "at" not in seen:
            seen["at"] = event["data"]["value"]
            threading.Thread(target=comfy.request, args=("POST", "/interrupt")).start()

    prompt = t2i(size=1024, seed=61, prefix="interrupted", preview=False)
    run = comfy.run(with_sjd(prompt) if sjd else prompt, on_event=interrupt_after_two_rows, timeout=300)
    assert run.status == "error"
    (stopped,) = run.of_type("execution_interrupted")
    assert stopped["node_type"] == "LuminaMGPT2Sampler"
    last = max(p["value"] for p in run.of_type("progress") if p["node"] == "3")
    assert seen["at"] <= last < 128, (seen, last)
    assert comfy.run(t2i(seed=62, prefix="after_interrupt")).status == "success"


def download(name):
    return {"class_type": "LuminaMGPT2Download", "inputs": {"checkpoint": name}}


def test_download_node_fetches_official_layout_from_the_fake_hub(comfy, fake_hub):
    run = comfy.run({"1": download("Lumina-mGPT-2.0 (text-to-image)"), "2": download("MoVQGAN 270M (image tokenizer)")})
    assert run.status == "success", run.of_type("execution_error")
    folder = os.path.join(comfy.state, "models", "lumina_mgpt", "Lumina-mGPT-2.0")
    assert sorted(f for f in os.listdir(folder) if not f.startswith(".")) == sorted(
        ["config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer.json",
         "tokenizer_config.json"] + [f"model-{i:05d}-of-00004.safetensors" for i in range(1, 5)])
    assert [p["value"] == p["max"] for p in run.of_type("progress") if p["node"] == "1"][-1]
    # the downloaded files are offered by the loaders and generate an image
    info = comfy.object_info()
    assert "Lumina-mGPT-2.0" in info["LuminaMGPT2ModelLoader"]["input"]["required"]["checkpoint"][1]["options"]
    prompt = t2i(seed=71, prefix="downloaded")
    prompt["1"]["inputs"]["checkpoint"] = "Lumina-mGPT-2.0"
    prompt["2"]["inputs"]["image_tokenizer"] = "movqgan_270M.ckpt"
    assert comfy.run(prompt).status == "success"
    # a second download finds every file complete and fetches nothing
    gets = len(fake_hub.downloads())
    assert comfy.run({"1": download("Lumina-mGPT-2.0 (text-to-image)")}).status == "success"
    assert len(fake_hub.downloads()) == gets


def every_float_input(info: dict) -> list[tuple[str, str]]:
    """(node id, input name) for every FLOAT input of every node of the pack, as the server lists them."""
    return [(node_id, name) for node_id, node in info.items() if node_id.startswith("LuminaMGPT2")
            for section in ("required", "optional") for name, spec in node["input"].get(section, {}).items()
            if spec[0] == "FLOAT"]


def strict_json(raw: bytes):
    def refuse(constant):
        raise ValueError(f"bare {constant} in the response: not JSON")
    return json.loads(raw, parse_constant=refuse)


def test_nan_and_infinite_floats_are_http_400_naming_the_input_and_history_stays_json(comfy):
    """Every float input the server lists, set to NaN, +inf or -inf in an API prompt (Python's json writes
    them as NaN / Infinity, which the server's parser accepts): HTTP 400 naming that input."""
    floats = every_float_input(comfy.object_info())
    assert {"cfg", "temperature", "top_p", "top_n_sigma"} <= {name for _, name in floats}
    prompt = t2i(seed=5, prefix="nan", preview=False)
    prompt["6"] = {"class_type": "LuminaMGPT2SamplingSettings",
                   "inputs": {"top_p": 1.0, "top_n_sigma": 0.0, "guidance_top_k": 0, "cfg_mode": "plain"}}
    prompt["3"]["inputs"]["sampling"] = ["6", 0]
    where = {node["class_type"]: key for key, node in prompt.items()}
    missing = {node_id for node_id, _ in floats} - set(where)
    assert not missing, f"add {missing} to this prompt so their float inputs are tried too"
    status, body = comfy.queue(prompt)
    assert status == 200, body  # the prompt itself is fine
    for node_id, name in floats:
        for bad in (math.nan, math.inf, -math.inf):
            key = where[node_id]
            poisoned = json.loads(json.dumps(prompt))
            poisoned[key]["inputs"][name] = bad
            status, body = comfy.queue(poisoned)
            assert status == 400, (node_id, name, bad, body)
            details = " ".join(e["details"] for e in body["node_errors"][key]["errors"])
            assert f"{name} must be a finite number" in details, details
    with urllib.request.urlopen(comfy.base + "/history", timeout=30) as r:
        strict_json(r.read())  # nothing rejected reached the history; what did is plain JSON


def test_a_task_the_checkpoint_was_not_trained_for_is_warned_in_the_stats(comfy):
    """The bundled demo declares t2i, pair_canny and control_canny: pair_depth runs, with a warning."""
    prompt = t2i(seed=2, prefix="untrained", preview=False, task="pair_depth", cfg=1.5, temperature=0.5)
    prompt["1"]["inputs"]["checkpoint"] = DEMO_PREFIX + DEMO_TRANSFORMER
    prompt["2"]["inputs"]["image_tokenizer"] = DEMO_PREFIX + DEMO_IMAGE_TOKENIZER
    run = comfy.run(prompt)
    assert run.status == "success", run.history["status"]
    stats = [s for s in run.of_type("lumina_mgpt2.stats") if s["node"] == "3"]
    assert stats and all("'pair_depth' is not one this checkpoint was trained for" in s["warning"] for s in stats)
    assert "pair_depth' is not one this checkpoint was trained for" in comfy.log()
