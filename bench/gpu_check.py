"""One prepared GPU run that checks every GPU-only path at the Lumina-mGPT 2.0 7B shapes (random weights)
and prints one markdown table: part | check | result | reference/limit | pass/FAIL or the measured figure.

    python bench/gpu_check.py                         # CUDA, one GPU: sized for 3-5 minutes on an H200 (an estimate:
                                                      # not yet run on a GPU); --budget-s 420 stops it before 8
    python bench/gpu_check.py --json out.json         # also write the rows as JSON (rewritten after every part)
    python bench/gpu_check.py --parts correctness     # a subset: correctness, speed, memory, comfyui
    python bench/gpu_check.py --tiny                  # small shapes on the CPU in ~20 s (one thread): a smoke test

Parts, each check in its own guard (a failing check prints its exception in its row and the rest still runs;
the exit status is 1 when any check failed):
1. correctness, against an independent reference:
   - int8 (kernels triton / int8pack / dequant) and int4 (triton / dequant) weight-only layers vs dequantise-
     then-matmul in float32, at M = 2 and 32 rows over the 7B's 4096->11008, 11008->4096 and the image-code
     head (4096->16384, through forward_rows): max |error| / max |reference| against a limit built from the
     activation dtype's rounding;
   - the int8 KV cache vs the bf16 cache: guided logits teacher-forced along the bf16 greedy codes of a 128x128
     image (16x16 codes), and how many greedy codes agree;
   - SJD greedy codes == plain greedy codes (128x128); with CUDA graphs (step graphs + SJD's verification
     graph) too;
   - CUDA graphs (fast.StepRunner) == eager: teacher-forced logits and greedy codes.
   Greedy codes may part at a near-tie (bf16 logits round to ~0.25 at their size: exact ties are common); then
   the fast path's codes must still be a greedy decode: teacher-forced along them, every code within twice its
   position's rounding noise of the best logit, the noise being the difference between feeding the same codes
   one token and 16 tokens per forward (equal in exact arithmetic). The model has bf16 weights where they fit
   (22 GiB and up), else int8 or int4 (--check-weights).
2. speed: ms per decode step (CFG: 2 streams, 1 token; CUDA graphs) and per SJD window (16 tokens), for
   weights bf16 / int8 / int4 x cache bf16 / int8 at --contexts KV lengths, against the bandwidth floor (linear
   weights incl. the image-code head + live KV of both streams / measured copy bandwidth), and seconds per
   768x768 image: 9,215 forwards plain, 9,216 / --sjd-accept with SJD (an assumed figure: random weights make
   acceptance meaningless).
3. memory: per planner row (lumina_core.memory.planner; bf16/bf16 on the device, then bf16, int8, int4 weights
   with the int8 cache and the embedding table in host memory) that fits the card: builds it, runs the prefill
   and the first row of a 768x768 image (96 steps; the KV cache is allocated for the whole image up front) and
   checks torch.cuda.max_memory_allocated against the planner's estimate.
4. comfyui: ComfyUI 0.33's dynamic-VRAM load of the bundled demo model through the pack's nodes, in a child
   process run by the ComfyUI venv's python (--comfy-dir, default .comfy/0.33.0/comfyui): lazy comfy.ops
   layers filled by the loader with the classic load's weights and codes; on CUDA also comfy-aimdo with
   ModelPatcherDynamic. Without ComfyUI: one "skipped" row (not a failure).
On the CPU (--tiny) everything runs at small shapes in float32; rows that need CUDA say "n/a on CPU" (the
graph rows still run their code, eagerly, so the script itself cannot rot). Every part runs a fixed number of
steps; after --budget-s seconds the remaining checks are skipped with a row that says so.

This file is the command: options, the budget, running each part in its guard, the table, the JSON and the exit
status. The parts live in bench/gpu_checks/ (correctness.py, speed.py, memory.py, comfyui.py), sharing
context.py (device, rows, guards, the model held between checks) and common.py (rows, constants, numerics);
the 7B-shape set-up and timing helpers are bench/gpu_setup.py's.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from dataclasses import asdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench.gpu_checks import comfyui, correctness, memory, speed  # noqa: E402
from bench.gpu_checks.common import BudgetSpent  # noqa: E402
from bench.gpu_checks.context import CheckContext  # noqa: E402
from bench.gpu_setup import copy_bandwidth, describe  # noqa: E402

PARTS = {"correctness": correctness.run, "speed": speed.run, "memory": memory.run, "comfyui": comfyui.run}


# ----------------------------------------------------------------------------- the run
def run_part(ctx: CheckContext, part: str):
    """One part; a spent budget or a failed set-up becomes a row, and the JSON is rewritten after it."""
    budget = f"time budget of {ctx.args.budget_s:.0f} s spent"
    if ctx.budget_spent():
        ctx.add(part, f"{part}-budget", f"{part}: not run", budget, status="skipped", verdict="skipped: time budget")
        return
    try:
        PARTS[part](ctx)
    except BudgetSpent:
        ctx.add(part, f"{part}-budget", f"{part}: remaining checks", budget, status="skipped",
                verdict="skipped: time budget")
    except Exception as e:  # a part's own set-up failed (e.g. building the model)
        traceback.print_exc()
        ctx.add(part, f"{part}-setup", f"{part}: set-up", f"{type(e).__name__}: {e}"[:300],
                status="FAIL" if part == "correctness" else "error")
    save_json(ctx)


def save_json(ctx: CheckContext):
    if ctx.args.json:
        with open(ctx.args.json, "w") as f:
            json.dump(dict(device=describe(ctx.device), torch=torch.__version__, tiny=ctx.args.tiny,
                           total_s=ctx.elapsed(), failed=len(ctx.failed()),
                           rows=[asdict(r) for r in ctx.rows], args=vars(ctx.args)), f, indent=1, default=str)


def print_table(ctx: CheckContext):
    shape = "TINY smoke-test shapes" if ctx.args.tiny else "7B shapes"
    print(f"\nLumina-mGPT 2.0 GPU check, {shape}, random weights, {describe(ctx.device)}, "
          f"torch {torch.__version__}, activations {ctx.float_name}; "
          f"copy bandwidth {ctx.bandwidth / 1e9:.0f} GB/s")
    print("| part | check | result | reference/limit | pass/FAIL or measured |")
    print("|---|---|---|---|---|")
    for r in ctx.rows:
        cells = [r.part, r.check, r.result, r.limit, r.verdict]
        print("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    failed = ctx.failed()
    print(f"{len(failed)} check(s) failed" + (": " + ", ".join(r.id for r in failed) if failed else "")
          + f"; total time {ctx.elapsed():.0f} s")


def run(args) -> int:
    ctx = CheckContext(args)
    print(f"device: {describe(ctx.device)}; torch {torch.__version__}", flush=True)
    ctx.bandwidth = copy_bandwidth(ctx.device, ctx.clock, args.tiny)
    print(f"copy bandwidth: {ctx.bandwidth / 1e9:.0f} GB/s", flush=True)
    for part in args.parts:
        run_part(ctx, part)
    print_table(ctx)
    save_json(ctx)
    return 1 if ctx.failed() else 0


# ----------------------------------------------------------------------------- command line
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="small shapes (CPU is fine): a smoke test of this script")
    p.add_argument("--device", default=None, help="default: cuda if available")
    p.add_argument("--parts", type=lambda s: s.split(","), default=list(PARTS), help=f"subset of {','.join(PARTS)}")
    p.add_argument("--budget-s", type=float, default=420, help="skip the remaining checks after this many seconds")
    p.add_argument("--json", default=None, help="also write the rows here")
    p.add_argument("--steps", type=int, default=None, help="timed steps per KV length (default 30; --tiny 3)")
    p.add_argument("--contexts", type=lambda s: [int(x) for x in s.split(",")], default=[200, 9300],
                   help="KV lengths (slots incl. the prompt) to time at; the image's span is integrated between them")
    p.add_argument("--bucket", type=int, default=512, help="graph attention-length bucket")
    p.add_argument("--check-weights", default="auto", choices=["auto", "none", "int8", "int4"],
                   help="weights of the model part 1 decodes with (auto: bf16 where it fits the card)")
    p.add_argument("--sjd-accept", type=float, default=2.3, help="ASSUMED image codes per SJD forward for s/image")
    p.add_argument("--comfy-dir", default=comfyui.DEFAULT_COMFY_DIR if os.path.isdir(comfyui.DEFAULT_COMFY_DIR)
                   else None, help="a ComfyUI source tree (default .comfy/0.33.0/comfyui when present)")
    p.add_argument("--comfy-python", default=None, help="python for part 4 (default: the venv next to --comfy-dir)")
    p.add_argument("--comfy-child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    unknown = set(a.parts) - set(PARTS)
    if unknown:
        p.error(f"unknown parts {sorted(unknown)}; choose from {tuple(PARTS)}")
    if a.steps is None:
        a.steps = 3 if a.tiny else 30
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.comfy_child:
        return comfyui.child_main(a)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --tiny (CPU smoke test) or on a GPU machine")
    if not a.tiny and not a.device.startswith("cuda"):
        sys.exit("the 7B shapes need a GPU (16 GB of weights + 9 GB of KV cache); use --tiny on CPU")
    if not a.device.startswith("cuda"):
        torch.set_num_threads(1)  # tiny ops: extra threads only add contention on a shared box
    return run(a)


if __name__ == "__main__":
    sys.exit(main())
