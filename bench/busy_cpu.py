"""The bundled demo through a real ComfyUI server while another process keeps one core busy: the engine's
thread choice (lumina_core/decoding/threads.py) against torch's default thread count, side by side in one run.

    python bench/busy_cpu.py                      # 64x64 and 160x160, idle and busy, both settings
    python bench/busy_cpu.py --sizes 64 --runs 3

Each setting gets its own server (LUMINA_CPU_THREADS=torch: torch's default, every core, as before the
choice existed; auto: the engine's choice) started with ComfyUI's default threads (no OMP_NUM_THREADS). The
example text-to-image workflow runs once to load the models, then --runs times per size; a row is the median
wall time from queueing to the saved image. "busy": a `while True` loop pinned to the last core (taskset)
runs for the whole row. Run it on a machine where nothing else is running.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from comfy_host import COMFY_VERSION, start_comfy, stop_comfy  # noqa: E402

EXAMPLE = os.path.join(ROOT, "example_workflows", "api", "lumina_mgpt2_t2i_api.json")


def busy_loop():
    """A process spinning on the last core (pinned where taskset exists)."""
    code = [sys.executable, "-c", "while True: pass"]
    last = str((os.cpu_count() or 1) - 1)
    cmd = ["taskset", "-c", last, *code] if subprocess.run(["which", "taskset"], capture_output=True).returncode == 0 \
        else code
    return subprocess.Popen(cmd)


def workflow(size: int, seed: int) -> dict:
    with open(EXAMPLE, encoding="utf-8") as f:
        prompt = json.load(f)
    for node in prompt.values():
        if node["class_type"] == "LuminaMGPT2Sampler":
            node["inputs"].update(width=size, height=size, seed=seed)
    return prompt


def seconds(client, size: int, seed: int) -> float:
    t0 = time.perf_counter()
    run = client.run(workflow(size, seed), timeout=1800)
    if run.status != "success":
        raise RuntimeError(f"the workflow failed: {run.history.get('status')}")
    return time.perf_counter() - t0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 160])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--settings", nargs="+", default=["torch", "auto"])
    args = ap.parse_args(argv)
    rows = []
    for setting in args.settings:
        state = tempfile.mkdtemp(prefix=f"lumina-busy-{setting}-")
        client = start_comfy(state, {"LUMINA_CPU_THREADS": setting}, one_thread=False)
        try:
            seconds(client, min(args.sizes), seed=1000)  # loads the models
            for load in ("idle", "busy"):
                spinner = busy_loop() if load == "busy" else None
                try:
                    for size in args.sizes:
                        times = [seconds(client, size, seed) for seed in range(args.runs)]
                        rows.append((setting, load, size, statistics.median(times), min(times), max(times)))
                        print(f"[busy_cpu] {setting:5s} {load:4s} {size}x{size}: median {rows[-1][3]:.2f} s", flush=True)
                finally:
                    if spinner is not None:
                        spinner.kill()
                        spinner.wait()
        finally:
            stop_comfy(client)
    print(f"\nDemo t2i through ComfyUI {COMFY_VERSION} on {os.cpu_count()} cores, seconds from queue to saved image "
          f"(median of {args.runs}, min-max)\n")
    print("| threads | CPU | size | seconds | min-max |")
    print("|---|---|---|---|---|")
    for setting, load, size, med, lo, hi in rows:
        name = "torch default (before)" if setting == "torch" else "engine's choice (auto)" if setting == "auto" else setting
        print(f"| {name} | {load} | {size}x{size} | {med:.2f} | {lo:.2f}-{hi:.2f} |")


if __name__ == "__main__":
    main()
