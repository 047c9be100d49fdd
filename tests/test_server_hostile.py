"""What a hostile run of the API found, through a real ComfyUI server: each bad input answers with one clear
error, under the input it is about where ComfyUI lets a node say so, and the server goes on serving.

ComfyUI files a failed validate_inputs under every input the method takes (one error per argument), so each
node's queue-time check takes only the inputs it reads (nodes/validation.py); combo values are checked by the
executor itself on 0.33 and by the nodes when they run on 0.3.75, which does not check V3 combos."""
import json
import os

import pytest
from safetensors.torch import save_file

from builders import tiny_movqgan
from conftest import HOST_CHECKS_COMBOS
from test_server_nodes import t2i

pytestmark = [pytest.mark.server]


def errors_of(body: dict, node: str) -> list[dict]:
    return body["node_errors"][node]["errors"]


def test_a_missing_checkpoint_is_one_error_under_checkpoint(comfy):
    prompt = t2i()
    prompt["1"]["inputs"]["checkpoint"] = "lumina-from-another-machine"
    status, body = comfy.queue(prompt)
    assert status == 400
    (error,) = errors_of(body, "1")
    assert error["extra_info"]["input_name"] == "checkpoint"
    assert "'lumina-from-another-machine' is not available" in error["details"]


def test_a_bad_combo_value_is_one_error(comfy):
    prompt = t2i(seed=3, prefix="bad_combo", preview=False)
    prompt["1"]["inputs"]["dtype"] = "fp64"
    status, body = comfy.queue(prompt)
    if HOST_CHECKS_COMBOS:  # the executor's own check, under that input
        assert status == 400
        (error,) = errors_of(body, "1")
        assert error["type"] == "value_not_in_list" and error["extra_info"]["input_name"] == "dtype"
    else:  # 0.3.75 queues it; the loader refuses it when it runs
        assert status == 200, body
        run = comfy.run(prompt)
        (error,) = run.of_type("execution_error")
        assert "dtype 'fp64' is not available; choose one of: auto" in error["exception_message"]


def test_a_size_off_the_grid_is_one_problem_named_after_width(comfy):
    """width 770: the Sampler's check reads width, height, cfg and temperature (NaN, which ComfyUI's min/max
    check lets through), so ComfyUI files the one problem under those four: never under task or the others,
    and every copy says the same thing about width."""
    status, body = comfy.queue(t2i(size=64, width=770))
    assert status == 400
    errors = errors_of(body, "3")
    assert {e["extra_info"]["input_name"] for e in errors} <= {"width", "height", "cfg", "temperature"}
    assert {e["details"].split(" - ", 1)[1] for e in errors} == {
        "image size must be a positive multiple of 32 px, got width=770; try width 768 or 800 and height 64."}


def test_an_image_tokenizer_with_another_codebook_on_the_preview_input_says_what_to_connect(comfy):
    """The tiny model makes 64 codes: a 256-code MoVQGAN failed on the first code past its end, a 16-code one
    decoded garbage previews silently. Both now stop before generating, saying what to connect."""
    folder = os.path.join(comfy.state, "models", "lumina_mgpt")
    for codes in (256, 16):
        name = f"other_movqgan_{codes}.safetensors"
        save_file(tiny_movqgan(codes).state_dict_for_save(), os.path.join(folder, name))
        prompt = t2i(seed=9, prefix=f"other_vq_{codes}")
        prompt["7"] = {"class_type": "LuminaMGPT2ImageTokenizerLoader", "inputs": {"image_tokenizer": name}}
        prompt["3"]["inputs"]["image_tokenizer"] = ["7", 0]
        run = comfy.run(prompt)
        (error,) = run.of_type("execution_error")
        assert error["node_type"] == "LuminaMGPT2Sampler"
        assert f"the image tokenizer has {codes} codes but this model makes 64" in error["exception_message"]
        assert "connect the MoVQGAN that belongs to the checkpoint" in error["exception_message"]
    assert comfy.run(t2i(seed=9, prefix="right_vq")).status == "success"


def test_a_lone_surrogate_in_the_prompt_is_a_clear_error(comfy):
    prompt = t2i(seed=2, prefix="surrogate", prompt="a red circle \ud800 on blue")
    assert "\\ud800" in json.dumps(prompt)  # what a client with broken escaping sends
    status, body = comfy.queue(prompt)
    assert status == 200, body
    run = comfy.run(prompt)
    (error,) = run.of_type("execution_error")
    assert error["exception_type"].endswith("InputError")
    assert "broken character at position 13 (a lone UTF-16 surrogate, U+D800" in error["exception_message"]
    assert comfy.run(t2i(seed=2, prefix="after_surrogate")).status == "success"


def test_multi_gpu_devices_this_machine_lacks_are_one_error_under_devices(comfy):
    import torch
    prompt = t2i(seed=1, prefix="no_gpus", preview=False)
    prompt["1"] = {"class_type": "LuminaMGPT2MultiGPULoader",
                   "inputs": {"checkpoint": prompt["1"]["inputs"]["checkpoint"], "devices": "cuda:0,cuda:7",
                              "dtype": "auto", "quantization": "none"}}
    status, body = comfy.queue(prompt)
    assert status == 400
    (error,) = errors_of(body, "1")
    assert error["extra_info"]["input_name"] == "devices"
    want = "PyTorch sees none on this machine" if not torch.cuda.is_available() else "asks for GPU 7"
    assert want in error["details"]


def test_save_quantized_onto_an_existing_file_is_a_clear_error(comfy):
    folder = os.path.join(comfy.state, "models", "lumina_mgpt")
    with open(os.path.join(folder, "notes.txt"), "w") as f:
        f.write("a user's file")
    prompt = {
        "1": {"class_type": "LuminaMGPT2ModelLoader",
              "inputs": {"checkpoint": t2i()["1"]["inputs"]["checkpoint"], "dtype": "fp32", "attention": "sdpa",
                         "quantization": "int8"}},
        "2": {"class_type": "LuminaMGPT2SaveQuantized", "inputs": {"model": ["1", 0], "folder_name": "notes.txt"}},
    }
    run = comfy.run(prompt)
    (error,) = run.of_type("execution_error")
    assert error["exception_type"].endswith("InputError")
    assert "notes.txt is a file, not a folder: choose another folder name" in error["exception_message"]
    with open(os.path.join(folder, "notes.txt")) as f:
        assert f.read() == "a user's file"  # untouched
