"""bench/gpu_check.py is run by hand on a lent GPU, where time is scarce: its --tiny mode runs every part on the
CPU so the script cannot rot between GPU runs. What must hold on any CPU: the checks that run here pass, the
CUDA-only ones say "n/a on CPU" (neither pass nor fail), every part has its rows, and the exit status is 0.
No timings and no tolerances are asserted here: the script's own limits (each with its reason) decide.
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "gpu_check.py")

CPU_CHECKS = ("int8-dequant", "int4-dequant", "kv-int8-logits", "sjd-greedy")   # must pass on the CPU
CUDA_ONLY = ("int8-triton", "int4-triton", "graphs-logits", "graphs-greedy", "sjd-verify-graph", "sjd-graphs-greedy",
             "memory-none-bf16-device", "memory-none-int8-host", "memory-int8-int8-host", "memory-int4-int8-host")
SPEED = tuple(f"{kind}-{w}-{c}" for w in ("none", "int8", "int4") for c in ("bf16", "int8") for kind in ("step", "sjd"))


def run_tiny(tmp_path):
    out = tmp_path / "check.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, SCRIPT, "--tiny", "--device", "cpu", "--json", str(out)],
                          capture_output=True, text=True, timeout=180, env=env, cwd=ROOT)
    return done, json.loads(out.read_text()) if out.exists() else None


def test_tiny_run_passes_on_cpu_with_cuda_checks_not_applicable(tmp_path):
    done, report = run_tiny(tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert report is not None and report["failed"] == 0
    rows = {r["id"]: r for r in report["rows"]}
    assert {r["part"] for r in report["rows"]} == {"correctness", "speed", "memory", "comfyui"}

    for id in CPU_CHECKS:
        assert rows[id]["status"] == "pass", rows.get(id)
    # torch._weight_int8pack_mm is a CPU kernel where this torch has it; where it does not, the row says so
    assert rows["int8-int8pack"]["status"] in ("pass", "n/a"), rows["int8-int8pack"]
    for id in CUDA_ONLY:
        assert rows[id]["status"] == "n/a" and rows[id]["verdict"] == "n/a on CPU", rows[id]
    # the int8 cache's greedy agreement and the speed rows are figures, not checks
    assert rows["kv-int8-greedy"]["status"] == "measured"
    for id in SPEED:
        assert rows[id]["status"] == "measured" and "floor" in rows[id]["verdict"], rows[id]

    # ComfyUI part: run where a ComfyUI with dynamic VRAM is importable, else one skipped row (not a failure)
    comfy = [r for r in report["rows"] if r["part"] == "comfyui"]
    assert comfy and all(r["status"] in ("pass", "n/a", "skipped", "measured") for r in comfy), comfy
    if any(r["status"] == "pass" for r in comfy):
        assert {"comfy-lazy-layers", "comfy-weights", "comfy-codes"} <= set(rows)
        assert rows["comfy-aimdo"]["verdict"] == "n/a on CPU"

    # the printed table: one line per row, and the header names device and torch
    table = [line for line in done.stdout.splitlines() if line.startswith("| ") and not line.startswith("| part ")]
    assert len(table) == len(report["rows"])
    assert "torch " in done.stdout and "total time" in done.stdout
    assert not any(r["status"] in ("FAIL", "error") for r in report["rows"])


def test_budget_skips_the_remaining_parts_with_a_row(tmp_path):
    """A spent budget (0 s here) must still print the table, with a skipped row per part, and exit 0."""
    out = tmp_path / "check.json"
    done = subprocess.run([sys.executable, SCRIPT, "--tiny", "--device", "cpu", "--budget-s", "0",
                           "--parts", "correctness,memory", "--json", str(out)], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"), cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["part"], r["status"]) for r in rows] == [("correctness", "skipped"), ("memory", "skipped")]
    assert "skipped: time budget" in done.stdout
