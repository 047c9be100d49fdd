"""Re-roll, extend downward and pruned best-of-N through a real ComfyUI server: the flows run to saved PNGs of the
right size, and every bad start (width, keep_rows, a canvas past the context, codes of another image tokenizer,
keep >= n) comes back as the sampler's error saying what to change, with the server serving on."""
import numpy as np
import pytest
from PIL import Image

from conftest import TINY_CHECKPOINT, TINY_IMAGE_TOKENIZER
from lumina_core.model.files import DEMO_IMAGE_TOKENIZER, DEMO_PREFIX

pytestmark = [pytest.mark.server, pytest.mark.slow]


def reroll(width=64, height=64, keep_rows=4, batch=2, source_size=(64, 64), encoder=None):
    """Load, sample a picture (or encode an empty image with `encoder` as the image tokenizer), re-roll it."""
    prompt = {
        "1": {"class_type": "LuminaMGPT2ModelLoader",
              "inputs": {"checkpoint": TINY_CHECKPOINT, "dtype": "auto", "attention": "sdpa"}},
        "2": {"class_type": "LuminaMGPT2ImageTokenizerLoader", "inputs": {"image_tokenizer": TINY_IMAGE_TOKENIZER}},
        "3": {"class_type": "LuminaMGPT2Sampler",
              "inputs": {"model": ["1", 0], "prompt": "a red circle", "task": "t2i", "width": source_size[0],
                         "height": source_size[1], "seed": 1, "cfg": 4.0, "top_k": 4096, "temperature": 1.0,
                         "batch_size": 1}},
        "4": {"class_type": "LuminaMGPT2Sampler",
              "inputs": {"model": ["1", 0], "prompt": "a blue square", "task": "t2i", "width": width, "height": height,
                         "seed": 10, "cfg": 4.0, "top_k": 4096, "temperature": 1.0, "batch_size": batch,
                         "start_from": ["3", 0], "keep_rows": keep_rows, "image_tokenizer": ["2", 0]}},
        "5": {"class_type": "LuminaMGPT2Decode",
              "inputs": {"tokens": ["4", 0], "image_tokenizer": ["2", 0], "panel": "output"}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "reroll"}},
    }
    if encoder is not None:
        prompt["7"] = {"class_type": "EmptyImage", "inputs": {"width": source_size[0], "height": source_size[1],
                                                              "batch_size": 1, "color": 0x808080}}
        prompt["8"] = {"class_type": "LuminaMGPT2ImageTokenizerLoader", "inputs": {"image_tokenizer": encoder}}
        prompt["3"] = {"class_type": "LuminaMGPT2ImageToTokens",
                       "inputs": {"image_tokenizer": ["8", 0], "image": ["7", 0], "width": source_size[0],
                                  "height": source_size[1]}}
    return prompt


def error_of(comfy, prompt) -> str:
    run = comfy.run(prompt)
    assert run.status == "error", run.history["status"]
    (error,) = run.of_type("execution_error")
    assert error["node_type"] == "LuminaMGPT2Sampler" and error["exception_type"].endswith("InputError")
    return error["exception_message"]


def test_re_roll_and_extend_run_to_pngs(comfy):
    run = comfy.run(reroll())
    assert run.status == "success", run.of_type("execution_error")
    images = [np.asarray(Image.open(p)) for p in comfy.output_images(run, "6")]
    assert len(images) == 2 and images[0].shape == (64, 64, 3) and not np.array_equal(images[0], images[1])
    tall = comfy.run(reroll(height=128, keep_rows=0, batch=1))
    assert tall.status == "success", tall.of_type("execution_error")
    assert Image.open(comfy.output_images(tall, "6")[0]).size == (64, 128)
    # a picture from Image to Tokens, encoded with the model's own tokenizer, re-rolls too
    encoded = comfy.run(reroll(encoder=TINY_IMAGE_TOKENIZER, keep_rows=2, batch=1))
    assert encoded.status == "success", encoded.of_type("execution_error")
    # the sampler's progress starts at row 0 with the kept rows' preview, then a step per painted row
    steps = [p["value"] for p in run.of_type("progress") if p["node"] == "4"]
    assert steps[0] == 0 and steps[-1] == 4


@pytest.mark.parametrize("case, expected", [
    (dict(width=96), "8 codes (64 px) wide but the image is 12 codes (96 px) wide: set the width to 64"),
    (dict(keep_rows=8), "keeping 8 rows (64 px) leaves nothing to paint"),
    (dict(keep_rows=12), "keep_rows is 12 but only 8 rows (64 px) are given: keep at most 8"),
    # 1280x1280 (25,764 positions) past the tiny model's 20,000: the picture is kept, the canvas is too big
    (dict(width=1280, height=1280, keep_rows=0, batch=1, source_size=(1280, 64), encoder=TINY_IMAGE_TOKENIZER),
     "too large for the model"),
    (dict(encoder=DEMO_PREFIX + DEMO_IMAGE_TOKENIZER, keep_rows=2, batch=1),
     "start_from was encoded with a 512-code image tokenizer but the model uses 64 codes"),
])
def test_bad_starts_say_what_to_change(comfy, case, expected):
    assert expected in error_of(comfy, reroll(**case))


def test_pruned_best_of_n_through_the_server(comfy):
    prompt = reroll()
    del prompt["4"]["inputs"]["start_from"], prompt["4"]["inputs"]["keep_rows"]
    prompt["4"]["inputs"]["batch_size"] = 1
    prompt["9"] = {"class_type": "LuminaMGPT2BestOfNSettings",
                   "inputs": {"n": 4, "scorer": "likelihood", "clip_model": "none", "chunk_size": 0,
                              "prune_after_rows": 2, "keep": 2}}
    prompt["4"]["inputs"]["best_of_n"] = ["9", 0]
    run = comfy.run(prompt)
    assert run.status == "success", run.of_type("execution_error")
    assert len(comfy.output_images(run, "6")) == 2  # the two kept candidates
    steps = [p["value"] for p in run.of_type("progress") if p["node"] == "4"]
    assert steps[-1] == 2 + 6  # one chunk's first 2 rows, then the survivors' other 6
    # with SJD connected: the same survivors, finished by SJD; the bar still counts 8 steps and only goes forward
    prompt["10"] = {"class_type": "LuminaMGPT2SJDSettings", "inputs": {"window": 4, "init": "random", "mode": "exact"}}
    prompt["4"]["inputs"]["sjd"] = ["10", 0]
    fast = comfy.run(prompt)
    assert fast.status == "success", fast.of_type("execution_error")
    assert len(comfy.output_images(fast, "6")) == 2
    steps = [p["value"] for p in fast.of_type("progress") if p["node"] == "4"]
    assert steps == sorted(steps) and steps[-1] == 2 + 6
    del prompt["10"], prompt["4"]["inputs"]["sjd"]
    prompt["9"]["inputs"]["keep"] = 4
    (error,) = comfy.run(prompt).of_type("execution_error")
    assert "keep must be fewer than the n = 4 candidates" in error["exception_message"]
