"""The Multi-GPU Loader in a real ComfyUI server, on two CPU ranks (gloo): the text-to-image example gives
the same PNG as the single-process loader, Interrupt stops both ranks within a few rows and they stay in
step, and 'Free model and node cache' leaves no worker process behind."""
import os
import threading
import time

import numpy as np
import psutil
import pytest
from PIL import Image

from conftest import EXAMPLES, TINY_CHECKPOINT, load_example

pytestmark = [pytest.mark.server, pytest.mark.slow]


def multigpu(checkpoint: str) -> dict:
    return {"class_type": "LuminaMGPT2MultiGPULoader",
            "inputs": {"checkpoint": checkpoint, "devices": "cpu,cpu", "dtype": "fp32", "quantization": "none"}}


def workers_of(comfy) -> list[psutil.Process]:
    out = []
    for child in psutil.Process(comfy.proc.pid).children(recursive=True):
        try:
            if "lumina_core.parallel.worker" in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                out.append(child)
        except psutil.NoSuchProcess:
            pass
    return out


def pixels(comfy, run, node) -> np.ndarray:
    (path,) = comfy.output_images(run, node)
    return np.asarray(Image.open(path).convert("RGB"))


def test_multigpu_t2i_example_gives_the_single_process_png(comfy):
    workflow = load_example(os.path.join(EXAMPLES, "api", "lumina_mgpt2_t2i_api.json"))
    single = comfy.run(workflow, timeout=600)
    assert single.status == "success", single.of_type("execution_error")
    workflow["1"] = multigpu(workflow["1"]["inputs"]["checkpoint"])
    workflow["5"]["inputs"]["filename_prefix"] = "multigpu_t2i"
    split = comfy.run(workflow, timeout=600)
    assert split.status == "success", split.of_type("execution_error")
    assert np.array_equal(pixels(comfy, split, "5"), pixels(comfy, single, "5"))
    assert len(workers_of(comfy)) == 2  # held by ComfyUI's cache for the next run


def test_interrupt_stops_both_ranks_and_free_leaves_no_worker(comfy):
    seen = {}

    def interrupt_after_two_rows(run, event):
        if event["type"] == "progress" and event["data"]["node"] == "3" and event["data"]["value"] >= 2 \
                and "at" not in seen:
            seen["at"] = event["data"]["value"]
            threading.Thread(target=comfy.request, args=("POST", "/interrupt")).start()

    def prompt(size, seed, prefix):
        return {
            "1": multigpu(TINY_CHECKPOINT),
            "3": {"class_type": "LuminaMGPT2Sampler",
                  "inputs": {"model": ["1", 0], "prompt": "a red circle", "task": "t2i", "width": size,
                             "height": size, "seed": seed, "cfg": 4.0, "top_k": 4096, "temperature": 1.0,
                             "batch_size": 1}},
            "7": {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}},
        }

    run = comfy.run(prompt(1024, 61, "interrupted"), on_event=interrupt_after_two_rows, timeout=600)
    assert run.status == "error"
    (stopped,) = run.of_type("execution_interrupted")
    assert stopped["node_type"] == "LuminaMGPT2Sampler"
    last = max(p["value"] for p in run.of_type("progress") if p["node"] == "3")
    assert seen["at"] <= last < 128, (seen, last)  # row-exact stopping: tests/test_tp_workers.py
    workers = workers_of(comfy)
    assert len(workers) >= 2
    assert comfy.run(prompt(64, 62, "after"), timeout=300).status == "success"  # both ranks still in step
    status, _ = comfy.request("POST", "/free", {"unload_models": True, "free_memory": True})
    assert status == 200
    deadline = time.time() + 60
    while time.time() < deadline and any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers):
        time.sleep(0.5)
    assert not workers_of(comfy), "Multi-GPU workers outlived 'Free model and node cache'"
