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
3. memory: per planner row (lumina_core.planner; bf16/bf16 on the device, then bf16, int8, int4 weights with the
   int8 cache and the embedding table in host memory) that fits the card: builds it, runs the prefill and the
   first row of a 768x768 image (96 steps; the KV cache is allocated for the whole image up front) and checks
   torch.cuda.max_memory_allocated against the planner's estimate.
4. comfyui: ComfyUI 0.33's dynamic-VRAM load of the bundled demo model through the pack's nodes, in a child
   process run by the ComfyUI venv's python (--comfy-dir, default .comfy/0.33.0/comfyui): lazy comfy.ops
   layers filled by the loader with the classic load's weights and codes; on CUDA also comfy-aimdo with
   ModelPatcherDynamic. Without ComfyUI: one "skipped" row (not a failure).
On the CPU (--tiny) everything runs at small shapes in float32; rows that need CUDA say "n/a on CPU" (the
graph rows still run their code, eagerly, so the script itself cannot rot). Every part runs a fixed number of
steps; after --budget-s seconds the remaining checks are skipped with a row that says so.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench.gpu_setup import (GIB, IMAGE, ROOT, Clock, build_model, copy_bandwidth, describe, integrate,  # noqa: E402
                             make_plan, plain_step_ms, shapes, sjd_window_ms)
from lumina_core.decoding import rng  # noqa: E402
from lumina_core.decoding.fast import StepRunner  # noqa: E402
from lumina_core.memory.kv_cache import kv_cache_format  # noqa: E402
from lumina_core.decoding.logits import SamplingOptions, guide  # noqa: E402
from lumina_core.memory.placement import move_embeddings_to_host_  # noqa: E402
from lumina_core.memory.planner import DEFAULT_WORKSPACE, Request, estimate  # noqa: E402
from lumina_core.memory.quant import (Int4Linear, Int8Linear, dequantize_int4, int4_group_size, int8pack_works,  # noqa: E402
                               linear_weight_bytes, quantize_int4_, quantize_int8_)
from lumina_core.memory.triton_kernels import triton as triton_module  # noqa: E402
from lumina_core.memory.triton_kernels import w4_block_k  # noqa: E402
from lumina_core.decoding.sampler import Session, pick_codes, sample_plain  # noqa: E402
from lumina_core.decoding.sjd import JacobiRun, SJDecoder  # noqa: E402

PARTS = ("correctness", "speed", "memory", "comfyui")
SMALL = 128                   # the correctness image: 16x16 codes
WINDOW = 16                   # SJD window, as upstream
CFG = 4.0
GREEDY = SamplingOptions(cfg=CFG, top_k=1)
SAMPLED = SamplingOptions(cfg=CFG, top_k=4096)
HEAD_OFFSET = 1000            # the head check asks forward_rows for rows [1000, 1000 + codes), a slice as in decoding
# (weights, KV cache, embeddings) rows of the planner's table that part 3 builds
MEMORY_ROWS = (("none", "bf16", "device"), ("none", "int8", "host"), ("int8", "int8", "host"), ("int4", "int8", "host"))
DEFAULT_COMFY_DIR = os.path.join(ROOT, ".comfy", "0.33.0", "comfyui")
DEMO_CHECKPOINT = "demo: lumina-mgpt2-shapes-demo"
DEMO_IMAGE_TOKENIZER = "demo: movqgan_shapes_demo.safetensors"
NA_CPU = "n/a on CPU"
AIMDO_CHECK = "comfy-aimdo on the GPU: transformer on the classic patcher, MoVQGAN dynamic, pixels as classic"


@dataclass
class Row:
    part: str
    id: str                   # stable name for scripts and tests
    check: str
    result: str
    limit: str = ""
    status: str = "measured"  # pass | FAIL | n/a | skipped | measured | error
    verdict: str = ""         # the table's last column: pass/FAIL, "n/a on CPU", or the measured figure


class BudgetSpent(Exception):
    pass


def unit_roundoff(dtype: torch.dtype) -> float:
    """Largest relative rounding error of one operation in `dtype` (bf16: 2^-8, float32: 2^-24)."""
    return torch.finfo(dtype).eps / 2


def kernel_error_limit(dtype: torch.dtype, k: int) -> float:
    """Max |error| / max |reference| a correct weight-only kernel may show against float32 dequantise-then-matmul.
    With u the activation dtype's unit roundoff: rounding the output (u), the dequant path's scale product (u),
    and int4's dequantised weights ((q - 8) * scale + zero rounded twice: <= 3u of the group's range per weight,
    which averages to under 2u of the largest output over K terms): 4u, with 2u to spare (measured on the CPU
    in bf16 at the 7B shapes: <= 1.4u). Plus float32 accumulation in kernel and reference, each within K
    roundings of 2^-24 (the textbook worst case, so any CPU's blocking fits). A wrong nibble, group or scale
    row is off by 10% or more."""
    return 6 * unit_roundoff(dtype) + 2 * k * 2.0**-24


def kernel_check_name(fmt: str, kernel: str) -> str:
    return f"{fmt} weight-only layer, kernel {kernel}"


def kv_bytes_per_token(cfg, fmt: str, dtype: torch.dtype, streams: int = 2) -> int:
    """Bytes of one token's keys and values over all layers and both CFG streams, as attention must read them
    (int8: one byte per value plus a float32 scale and zero per token and head)."""
    value = torch.tensor([], dtype=dtype).element_size() if fmt == "bf16" else 1
    extra = 0 if fmt == "bf16" else 2 * 4
    return 2 * cfg.num_hidden_layers * streams * cfg.num_key_value_heads * (cfg.head_dim * value + extra)


# ----------------------------------------------------------------------------- teacher forcing
def forced_guided_logits(model, plan, special, codes: torch.Tensor, chunk: int = 1, forward=None) -> torch.Tensor:
    """Guided image-code logits at every code of `plan` while `codes` [rows, w] are fed (teacher forcing),
    `chunk` tokens per forward: [rows * w, n_codes] float32. chunk=1 and chunk=16 are equal in exact
    arithmetic; their difference is the rounding noise of two equivalent GEMM shapes."""
    lay, dev = plan.layout, model.device
    row_ends = torch.full((lay.gen_rows, 1), special.row_end, dtype=torch.long, device=dev)
    body = torch.cat([codes + special.image_code_start, row_ends], 1).flatten()
    next_is_code = torch.ones(lay.gen_rows, lay.w_lat + 1, dtype=torch.bool, device=dev)
    next_is_code[:, -1] = False
    next_is_code = next_is_code.flatten()[1:]          # for fed token j: is position j + 1 a code?
    fed = body[:-2]                                     # up to the token before the last code
    out = torch.empty(codes.numel(), special.num_image_codes, device=dev)
    session = Session(model, plan, 1, True, forward=forward)
    with torch.inference_mode():
        logits = session.prefill(special.image_rows)
        out[0] = guide(logits[:1], logits[1:], CFG)[0]
        n = 1
        for a in range(0, fed.numel(), chunk):
            step = session.step(fed[None, a:a + chunk], special.image_rows, last_only=False)
            guided = guide(step[:1], step[1:], CFG)[0]
            keep = next_is_code[a:a + step.shape[1]]
            k = int(keep.sum())
            out[n:n + k] = guided[keep]
            n += k
    return out


@dataclass
class Forced:
    """Teacher-forced guided logits along some codes, and their rounding noise."""
    codes: torch.Tensor       # [rows, w]
    logits: torch.Tensor      # [rows * w, n_codes] guided logits, one token per forward
    noise: torch.Tensor       # [rows * w] per position: max over codes of |logits(1 token) - logits(16 tokens)|

    def shortfall(self) -> torch.Tensor:
        """Per position: how far the fed code's logit is below the best one (0: it is the greedy choice)."""
        return self.logits.amax(-1) - self.logits.gather(-1, self.codes.flatten()[:, None])[:, 0]


def first_difference(got: torch.Tensor, want: torch.Tensor) -> tuple[int, int]:
    """(codes equal, index of the first difference or -1)."""
    got, want = got.flatten(), want.flatten()
    differ = (got != want).nonzero()
    return int((got == want).sum()), int(differ[0]) if differ.numel() else -1


# ----------------------------------------------------------------------------- the run
class GpuCheck:
    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.dtype = torch.bfloat16 if self.cuda else torch.float32
        self.float_name = "bf16" if self.dtype == torch.bfloat16 else "fp32"
        self.cfg, self.special = shapes(args.tiny)
        self.clock = Clock(self.device)
        self.rows: list[Row] = []
        self.model, self.model_weights = None, None   # the model held between checks, and its weight format
        self.check_weights = args.check_weights if args.check_weights != "auto" else self.weights_that_fit()
        self._reference = None
        self.t0 = time.perf_counter()

    # ------------------------------------------------------------------------- rows and guards
    def add(self, part, id, check, result, limit="", status="measured", verdict=""):
        verdict = verdict or {"pass": "pass", "FAIL": "FAIL", "n/a": NA_CPU}.get(status, status)
        row = Row(part, id, check, result, limit, status, verdict)
        self.rows.append(row)
        print(f"[{part}] {check}: {verdict}" + (f" ({result})" if status in ("FAIL", "error") else ""), flush=True)
        return row

    def add_check(self, part, id, check, result, limit, ok: bool, needs_cuda: bool = False):
        """A pass/fail row; on the CPU a CUDA-only check reports its figures as n/a."""
        status = "n/a" if needs_cuda and not self.cuda else ("pass" if ok else "FAIL")
        return self.add(part, id, check, result, limit, status)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def guard(self, part, id, check, fn, *args, is_check=True):
        """Run one check; an exception becomes its row (FAIL for a check, error for a measurement)."""
        if self.elapsed() > self.args.budget_s:
            raise BudgetSpent
        try:
            return fn(*args)
        except BudgetSpent:
            raise
        except Exception as e:  # keep going: one failure must not hide the other rows
            traceback.print_exc()
            message = f"{type(e).__name__}: {e}".replace("\n", " ")[:300]
            oom = isinstance(e, torch.cuda.OutOfMemoryError)
            self.add(part, id, check, message, status="FAIL" if is_check and not oom else "error",
                     verdict="out of memory on this card" if oom else "")
        finally:
            gc.collect()
            if self.cuda:
                torch.cuda.empty_cache()

    def run_part(self, part, fn):
        if self.elapsed() > self.args.budget_s:
            self.add(part, f"{part}-budget", f"{part}: not run", f"time budget of {self.args.budget_s:.0f} s spent",
                     status="skipped", verdict="skipped: time budget")
            return
        try:
            fn()
        except BudgetSpent:
            self.add(part, f"{part}-budget", f"{part}: remaining checks", f"time budget of {self.args.budget_s:.0f} s "
                     "spent", status="skipped", verdict="skipped: time budget")
        except Exception as e:  # a part's own set-up failed (e.g. building the model)
            traceback.print_exc()
            self.add(part, f"{part}-setup", f"{part}: set-up", f"{type(e).__name__}: {e}"[:300],
                     status="FAIL" if part == "correctness" else "error")
        self.save_json()

    # ------------------------------------------------------------------------- models
    def drop_model(self):
        self.model, self.model_weights = None, None
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def fresh_model(self, weights: str):
        """The 7B-shaped model with random weights, its linear layers in `weights` (none/bf16, int8, int4)."""
        self.drop_model()
        model = build_model(self.cfg, self.device, self.dtype)
        if weights == "int8":
            quantize_int8_(model, backend="native")  # the engine's own layers (torchao, when installed, is not ours)
        elif weights == "int4":
            quantize_int4_(model)
        return model

    def model_for(self, weights: str):
        """The held model when it has these weights, else a fresh one (the old one is freed first)."""
        if self.model is None or self.model_weights != weights:
            self.model = self.fresh_model(weights)
            self.model_weights = weights
        return self.model

    def check_model(self):
        """The model part 1 decodes with: bf16 weights where they fit, else int8 or int4 (smaller cards)."""
        return self.model_for(self.check_weights)

    def weights_note(self) -> str:
        return "" if self.check_weights == "none" else f"; decoded with {self.check_weights} weights"

    def weights_that_fit(self) -> str:
        """bf16 weights (14.7 GiB at 7B) and the small check caches need a 24 GB card; int8 (8 GiB) 12 GB."""
        if not self.cuda or self.args.tiny:
            return "none"
        total = torch.cuda.get_device_properties(self.device).total_memory
        return "none" if total >= 22 * GIB else "int8" if total >= 11 * GIB else "int4"

    def eager_runner(self, model):
        return StepRunner(model, bucket=self.args.bucket, graphs=False)

    def graph_runner(self, model):
        """CUDA graphs where they run (the whole model on a CUDA device); elsewhere the same runner, eager."""
        return StepRunner(model, bucket=self.args.bucket, graphs=None)

    # ------------------------------------------------------------------------- part 1: correctness
    def part_correctness(self):
        for fmt, kernel in (("int8", "triton"), ("int8", "int8pack"), ("int8", "dequant"),
                            ("int4", "triton"), ("int4", "dequant")):
            self.guard("correctness", f"{fmt}-{kernel}", kernel_check_name(fmt, kernel), self.check_kernel, fmt,
                       kernel)
        self.guard("correctness", "kv-int8", f"int8 KV cache vs {self.float_name} cache", self.check_int8_cache)
        self.guard("correctness", "sjd-greedy", "SJD greedy == plain greedy (eager)", self.check_sjd)
        self.guard("correctness", "graphs", "CUDA graphs vs eager", self.check_graphs)

    def layer_shapes(self) -> list[tuple[int, int, str]]:
        C, F = self.cfg.hidden_size, self.cfg.intermediate_size
        return [(C, F, "gate/up"), (F, C, "down"), (C, self.special.num_image_codes, "code head")]

    def kernel_unavailable(self, fmt, kernel) -> str | None:
        if kernel == "triton" and not self.cuda:
            return NA_CPU
        if kernel == "triton" and triton_module is None:
            return "n/a: triton is not installed"
        if kernel == "int8pack" and not int8pack_works(self.device, self.dtype):
            return "n/a: torch._weight_int8pack_mm does not run here"
        return None

    def check_kernel(self, fmt, kernel):
        check = kernel_check_name(fmt, kernel)
        limit = kernel_error_limit(self.dtype, max(k for k, _, _ in self.layer_shapes()))
        limit_text = f"<= {limit:.2g} (6u of {self.float_name} + K x 2^-24 for float32 sums)"
        unavailable = self.kernel_unavailable(fmt, kernel)
        if unavailable:
            return self.add("correctness", f"{fmt}-{kernel}", check, "not run", limit_text,
                            status="n/a", verdict=unavailable)
        worst, where, skipped = -1.0, "", []
        for k, n, name in self.layer_shapes():
            if fmt == "int4" and kernel == "triton" and w4_block_k(int4_group_size(k)) is None:
                skipped.append(f"{name} {k}->{n}: group {int4_group_size(k)} has no Triton tiling (auto: dequant)")
                continue
            for m in (2, 32):
                err = self.kernel_error(fmt, kernel, k, n, m, head=name == "code head")
                if not err <= worst:  # NaN counts as the worst
                    worst, where = err, f"{name} {k}->{n} M={m}"
        result = (f"max rel. error {worst:.2g} ({where}) vs float32 dequantise-then-matmul over "
                  f"{len(self.layer_shapes()) - len(skipped)} shapes x M=2,32; auto kernel here: "
                  f"{self.auto_kernel(fmt)}" + "".join(f"; skipped {s}" for s in skipped))
        self.add_check("correctness", f"{fmt}-{kernel}", check, result, limit_text, worst <= limit)

    def auto_kernel(self, fmt) -> str:
        """The kernel a layer of the model's width gets on this device without a choice."""
        lin = torch.nn.Linear(self.cfg.hidden_size, 64, bias=False, device=self.device, dtype=self.dtype)
        return (Int8Linear if fmt == "int8" else Int4Linear).from_linear(lin).kernel

    def kernel_error(self, fmt, kernel, k, n, m, head: bool) -> float:
        """max |layer(x) - x @ dequant(W).T| / max |reference| for one shape; the head reads a row slice."""
        g = torch.Generator(device=self.device).manual_seed(k * 7 + n + m)
        rows = n + HEAD_OFFSET if head else n
        lin = torch.nn.Linear(k, rows, bias=False, device=self.device, dtype=self.dtype)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(rows, k, generator=g, device=self.device) * k**-0.5)
        x = torch.randn(m, k, generator=g, device=self.device).to(self.dtype)
        if fmt == "int8":
            layer = Int8Linear.from_linear(lin, kernel=kernel)
            w = layer.weight.float() * layer.scale.float()[:, None]
        else:
            layer = Int4Linear.from_linear(lin, kernel=kernel)
            w = dequantize_int4(layer.weight, layer.scale, layer.zero, torch.float32)
        a, b = (HEAD_OFFSET, rows) if head else (0, rows)
        with torch.inference_mode():
            got = (layer.forward_rows(x, a, b) if head else layer(x)).float()
            ref = x.float() @ w[a:b].T
        return float((got - ref).abs().max() / ref.abs().max())

    def forced(self, codes: torch.Tensor) -> Forced:
        """Teacher forcing along `codes` with the eager runner, one token and 16 tokens per forward."""
        model, small = self.check_model(), make_plan(self.special, SMALL)
        eager = self.eager_runner(model)
        one = forced_guided_logits(model, small, self.special, codes, 1, eager)
        window = forced_guided_logits(model, small, self.special, codes, WINDOW, eager)
        return Forced(codes, one, (one - window).abs().amax(-1))

    def reference(self) -> Forced:
        """Computed once: plain greedy codes (eager runner, bf16 cache) and their teacher-forced logits."""
        if self._reference is None:
            model, small = self.check_model(), make_plan(self.special, SMALL)
            codes = sample_plain(model, small, self.special, [0], GREEDY, forward=self.eager_runner(model))[0][0]
            self._reference = self.forced(codes)
        return self._reference

    def codes_check(self, id, check, got: torch.Tensor, needs_cuda=False):
        """Greedy codes of a fast path vs plain greedy. Equal passes. Otherwise (bf16 logits are rounded to
        ~0.25 at their size, so exact ties are common) the codes must still be a greedy decode: teacher-forced
        along them, every code within twice its position's rounding noise of the best logit. That checks all
        positions, not only the first difference, and is what equality means in exact arithmetic."""
        ref = self.reference()
        equal, first = first_difference(got, ref.codes)
        n = ref.codes.numel()
        limit = "equal, or every code its context's greedy choice within 2 x rounding noise"
        if first < 0:
            return self.add_check("correctness", id, check, f"{n}/{n} codes equal to plain greedy"
                                  + self.weights_note(), limit, True, needs_cuda)
        own = self.forced(got)
        excess = own.shortfall() - 2 * own.noise
        bad = int((excess > 0).sum())
        worst = int(excess.argmax())
        result = (f"{equal}/{n} codes equal to plain greedy (first difference at code {first}); as a greedy decode of "
                  f"its own: {n - bad}/{n} codes within 2 x rounding noise of the best (closest to the limit: code "
                  f"{worst}, "
                  f"shortfall {float(own.shortfall()[worst]):.3g}, noise {float(own.noise[worst]):.3g})"
                  + self.weights_note())
        self.add_check("correctness", id, check, result, limit, bad == 0, needs_cuda)

    def check_int8_cache(self):
        ref, model, small = self.reference(), self.check_model(), make_plan(self.special, SMALL)
        eager = self.eager_runner(model)
        with kv_cache_format(model, "int8"):
            forced = forced_guided_logits(model, small, self.special, ref.codes, 1, eager)
            free = sample_plain(model, small, self.special, [0], GREEDY, forward=eager)[0][0]
        diff = forced - ref.logits
        worst, rms = float(diff.abs().max()), float(diff.pow(2).mean().sqrt())
        std = float(ref.logits.std())
        finite = bool(torch.isfinite(forced).all())
        # int8 keeps each token-head vector to 1/255 of its range (~0.4% relative): measured ~0.025 x std after
        # 6 bf16 layers of width 1024; a quarter of the spread leaves room for 32 layers and stays far below an
        # unrelated (misaddressed, mis-scaled) cache's sqrt(2) x std
        self.add_check("correctness", "kv-int8-logits", f"int8 KV cache: guided logits vs {self.float_name} cache "
                       f"(teacher-forced, {SMALL}x{SMALL})",
                       f"max abs diff {worst:.3g}, rms {rms:.3g}; logit std {std:.3g}; finite: {finite}"
                       + self.weights_note(),
                       f"finite, rms <= 0.25 x std = {0.25 * std:.3g}", finite and rms <= 0.25 * std)
        n = ref.codes.numel()
        forced_same = int((forced.argmax(-1) == ref.codes.flatten()).sum())
        equal, i = first_difference(free, ref.codes)
        first = "" if i < 0 else f", first difference at code {i}"
        self.add("correctness", "kv-int8-greedy", f"int8 KV cache: greedy codes vs {self.float_name} cache",
                 f"teacher-forced argmax {forced_same}/{n}; free-running {equal}/{n}{first}",
                 "report (random weights: near-ties part the runs)", verdict=f"{forced_same / n:.3f} / {equal / n:.3f}")

    def check_sjd(self):
        model, small = self.check_model(), make_plan(self.special, SMALL)
        codes = SJDecoder(window=WINDOW, forward=self.eager_runner(model)).sample(
            model, small, self.special, [0], GREEDY)[0][0]
        self.codes_check("sjd-greedy", f"SJD greedy (window {WINDOW}, eager) == plain greedy", codes)

    def check_graphs(self):
        """Graph replay vs the eager runner with the same bucket (same kernels and shapes), then greedy codes."""
        ref, model, small = self.reference(), self.check_model(), make_plan(self.special, SMALL)
        runner = self.graph_runner(model)
        forced = forced_guided_logits(model, small, self.special, ref.codes, 1, runner)
        worst = float((forced - ref.logits).abs().max())
        how = f"{runner.captures} graphs captured" if runner.use_graphs else "ran eagerly: no capture on the CPU"
        self.add_check("correctness", "graphs-logits", "CUDA graphs: guided logits vs eager (teacher-forced)",
                       f"max abs diff {worst:.3g} ({how}){self.weights_note()}",
                       f"<= rounding noise {float(ref.noise.max()):.3g} (same kernels and shapes: expect 0)",
                       worst <= float(ref.noise.max()), needs_cuda=True)
        codes = sample_plain(model, small, self.special, [0], GREEDY, forward=runner)[0][0]
        self.codes_check("graphs-greedy", "CUDA graphs: plain greedy codes == eager", codes, needs_cuda=True)
        run = JacobiRun(SJDecoder(window=WINDOW, forward=runner, graphs=True), model, small, self.special, [0], GREEDY)
        codes = run.run(None, None)[0][0]
        # a failed capture falls back to eager verification with a log line: the codes alone would not show it
        self.add_check("correctness", "sjd-verify-graph", "SJD verification math replayed as a CUDA graph",
                       "captured and replayed" if run._graph is not None else "not captured (eager verification)",
                       "captured", run._graph is not None, needs_cuda=True)
        self.codes_check("sjd-graphs-greedy", "SJD with CUDA graphs (steps + verification) == plain greedy", codes,
                         needs_cuda=True)

    # ------------------------------------------------------------------------- part 2: speed
    def part_speed(self):
        for weights in ("none", "int8", "int4"):
            model = self.model_for(weights)
            for cache in ("bf16", "int8"):
                self.guard("speed", f"step-{weights}-{cache}", self.speed_check_name("step", weights, cache),
                           self.time_plain, model, weights, cache, is_check=False)
                self.guard("speed", f"sjd-{weights}-{cache}", self.speed_check_name("sjd", weights, cache),
                           self.time_sjd, model, weights, cache, is_check=False)
            del model
        self.drop_model()

    def weights_name(self, weights: str) -> str:
        return self.float_name if weights == "none" else weights

    def cache_name(self, cache: str) -> str:
        return self.float_name if cache == "bf16" else cache  # the engine's "bf16" cache is the compute dtype

    def speed_check_name(self, kind, weights, cache) -> str:
        what = "decode step" if kind == "step" else f"SJD window {WINDOW}"
        return f"{what}, {self.weights_name(weights)} weights, {self.cache_name(cache)} cache"

    def speed_setup(self):
        plan = make_plan(self.special, IMAGE)
        start = len(plan.cond_ids)
        span = (start, start + plan.layout.generated_tokens)
        contexts = [c for c in self.args.contexts if c < span[1]]
        return plan, span, contexts

    def floor_ms(self, model, cache, contexts) -> list[float]:
        weights = linear_weight_bytes(model, head_rows=self.special.image_rows)
        per_token = kv_bytes_per_token(self.cfg, cache, self.dtype)
        return [(weights + per_token * c) / self.bandwidth * 1000 for c in contexts]

    def speed_row(self, id, check, model, cache, contexts, span, ms, forwards, how, note=""):
        floor = self.floor_ms(model, cache, contexts)
        mean_ms, mean_floor = integrate(contexts, ms, span), integrate(contexts, floor, span)
        at = " / ".join(f"{m:.2f}" for m in ms) + " ms @ KV " + " / ".join(str(c) for c in contexts)
        weights = linear_weight_bytes(model, head_rows=self.special.image_rows)
        self.add("speed", id, f"{check} ({how})", f"{at}; {forwards * mean_ms / 1000:.1f} s per {IMAGE}² image "
                 f"({forwards:.0f} forwards{note})", "floor " + " / ".join(f"{f:.2f}" for f in floor) +
                 f" ms ({size(weights)} weights + KV at {self.bandwidth / 1e9:.0f} GB/s)",
                 verdict=f"x{mean_ms / mean_floor:.2f} floor")

    def time_plain(self, model, weights, cache):
        plan, span, contexts = self.speed_setup()
        runner = self.graph_runner(model)
        with kv_cache_format(model, cache):
            session = Session(model, plan, 1, True, forward=runner)
            session.prefill(self.special.image_rows)
            ms = [plain_step_ms(session, self.special, SAMPLED, c, self.clock, self.args.steps) for c in contexts]
        del session
        forwards = plan.layout.gen_rows * plan.layout.w_lat - 1
        self.speed_row(f"step-{weights}-{cache}", self.speed_check_name("step", weights, cache), model, cache,
                       contexts, span, ms, forwards, "CUDA graphs" if runner.use_graphs else "eager")

    def time_sjd(self, model, weights, cache):
        plan, span, contexts = self.speed_setup()
        runner = self.graph_runner(model)
        with kv_cache_format(model, cache):
            run = JacobiRun(SJDecoder(window=WINDOW, forward=runner, graphs=True), model, plan, self.special, [0],
                            SAMPLED)
            run.start()
            ms = [sjd_window_ms(run, c, self.clock, max(5, self.args.steps // 4)) for c in contexts]
        how = "eager" if not runner.use_graphs else "CUDA graphs, verification " + (
            "graph" if run._graph is not None else "EAGER: its capture failed")
        del run
        forwards = plan.layout.gen_rows * plan.layout.w_lat / self.args.sjd_accept
        self.speed_row(f"sjd-{weights}-{cache}", self.speed_check_name("sjd", weights, cache), model, cache,
                       contexts, span, ms, forwards, how,
                       f" at an ASSUMED {self.args.sjd_accept} codes/forward: random weights make acceptance "
                       "meaningless")

    # ------------------------------------------------------------------------- part 3: memory
    def part_memory(self):
        self.drop_model()
        for weights, cache, embeddings in MEMORY_ROWS:
            self.guard("memory", f"memory-{weights}-{cache}-{embeddings}", self.memory_check_name(weights, cache,
                       embeddings), self.measure_memory, weights, cache, embeddings)
            self.drop_model()

    def memory_check_name(self, weights, cache, embeddings) -> str:
        return (f"peak memory, {self.weights_name(weights)} weights, {self.cache_name(cache)} cache, embeddings on "
                f"{embeddings}")

    def measure_memory(self, weights, cache, embeddings):
        plan = make_plan(self.special, IMAGE)
        request = Request(IMAGE, IMAGE, prompt_tokens=len(plan.cond_ids))
        planned = estimate(self.cfg, request, weights, cache, embeddings, dtype=self.dtype,
                           num_image_codes=self.special.num_image_codes,
                           workspace=DEFAULT_WORKSPACE if self.cuda else 0).total
        id = f"memory-{weights}-{cache}-{embeddings}"
        check = self.memory_check_name(weights, cache, embeddings)
        limit = f"planner {size(planned)}: the measured peak must not exceed it"
        if self.cuda and planned > torch.cuda.mem_get_info(self.device)[0]:
            free = torch.cuda.mem_get_info(self.device)[0]
            return self.add("memory", id, check, f"does not fit: {free / GIB:.1f} GiB free", limit,
                            status="skipped", verdict="skipped: does not fit this card")
        self.model = model = self.fresh_model(weights)
        if embeddings == "host":
            move_embeddings_to_host_(model)
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        steps = plan.layout.w_lat
        with kv_cache_format(model, cache):
            decode_prefix(model, plan, self.special, SAMPLED, steps)
        ran = f"prefill + {steps} steps of a {IMAGE}² image, eager"
        if not self.cuda:
            return self.add("memory", id, check, f"ran {ran}; peak n/a", limit, status="n/a")
        self.clock.sync()
        peak = torch.cuda.max_memory_allocated(self.device)
        reserved = torch.cuda.max_memory_reserved(self.device)
        self.add_check("memory", id, check, f"{peak / GIB:.2f} GiB allocated = {peak / planned:.2f} x planner "
                       f"(reserved {reserved / GIB:.2f} GiB); {ran}", limit, peak <= planned)

    # ------------------------------------------------------------------------- part 4: ComfyUI
    def part_comfyui(self):
        self.drop_model()
        comfy_dir = self.args.comfy_dir
        if not comfy_dir or not os.path.isfile(os.path.join(comfy_dir, "main.py")):
            where = f"at {comfy_dir}" if comfy_dir else "(--comfy-dir; scripts/setup.sh puts one in .comfy/0.33.0/)"
            return self.add("comfyui", "comfy", "ComfyUI dynamic-VRAM load", f"no ComfyUI source tree {where}",
                            status="skipped", verdict="skipped: ComfyUI not importable")
        python = self.args.comfy_python or comfy_python(comfy_dir)
        left = max(30.0, min(240.0, self.args.budget_s - self.elapsed()))
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "rows.json")
            cmd = [python, os.path.abspath(__file__), "--comfy-child", "--device", str(self.device),
                   "--comfy-dir", comfy_dir, "--json", out]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=left)
            rows = read_json(out) if os.path.isfile(out) else []
        for r in rows:
            self.add(**r)
        if done.returncode or not rows:
            self.add("comfyui", "comfy-child", "ComfyUI child process", f"exit {done.returncode}: "
                     + done.stderr.strip().replace("\n", " ")[-300:], status="FAIL")

    # ------------------------------------------------------------------------- output
    def failed(self) -> list[Row]:
        return [r for r in self.rows if r.status == "FAIL"]

    def save_json(self):
        if self.args.json:
            with open(self.args.json, "w") as f:
                json.dump(dict(device=describe(self.device), torch=torch.__version__, tiny=self.args.tiny,
                               total_s=self.elapsed(), failed=len(self.failed()),
                               rows=[asdict(r) for r in self.rows], args=vars(self.args)), f, indent=1, default=str)

    def print_table(self):
        shape = "TINY smoke-test shapes" if self.args.tiny else "7B shapes"
        print(f"\nLumina-mGPT 2.0 GPU check, {shape}, random weights, {describe(self.device)}, "
              f"torch {torch.__version__}, activations {self.float_name}; "
              f"copy bandwidth {self.bandwidth / 1e9:.0f} GB/s")
        print("| part | check | result | reference/limit | pass/FAIL or measured |")
        print("|---|---|---|---|---|")
        for r in self.rows:
            cells = [r.part, r.check, r.result, r.limit, r.verdict]
            print("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
        failed = self.failed()
        print(f"{len(failed)} check(s) failed" + (": " + ", ".join(r.id for r in failed) if failed else "")
              + f"; total time {self.elapsed():.0f} s")

    def run(self) -> int:
        print(f"device: {describe(self.device)}; torch {torch.__version__}", flush=True)
        self.bandwidth = copy_bandwidth(self.device, self.clock, self.args.tiny)
        print(f"copy bandwidth: {self.bandwidth / 1e9:.0f} GB/s", flush=True)
        parts = {"correctness": self.part_correctness, "speed": self.part_speed, "memory": self.part_memory,
                 "comfyui": self.part_comfyui}
        for part in self.args.parts:
            self.run_part(part, parts[part])
        self.print_table()
        self.save_json()
        return 1 if self.failed() else 0


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def size(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"


def decode_prefix(model, plan, special, opts, steps: int, forward=None) -> None:
    """The plain sampler's loop cut short: prefill, then `steps` decoding steps (codes only, no row ends)."""
    dev = model.device
    session = Session(model, plan, 1, opts.uses_cfg, forward=forward)
    seed_t = rng.seed_tensor([0], dev)
    with torch.inference_mode():
        logits = session.prefill(special.image_rows)
        for i in range(steps):
            counter = torch.full((1,), i, dtype=torch.long, device=dev)
            codes, _ = pick_codes(logits, session, opts, opts.cfg, seed_t, counter)
            logits = session.step((codes + special.image_code_start).view(1, 1), special.image_rows)[:, -1]


def comfy_python(comfy_dir: str) -> str:
    """The ComfyUI release's own venv (scripts/setup.sh puts it next to the source), else this python."""
    venv = os.path.join(os.path.dirname(os.path.abspath(comfy_dir)), "venv", "bin", "python")
    return venv if os.path.isfile(venv) else sys.executable


# ----------------------------------------------------------------------------- ComfyUI child process
class ComfyChild:
    """Part 4 inside ComfyUI (its own process: ComfyUI's modules, device and global state stay out of the main
    run). Loads the pack as ComfyUI does and the bundled demo model through the pack's nodes."""

    def __init__(self, device: torch.device, comfy_dir: str):
        self.device, self.comfy_dir = device, comfy_dir
        self.rows: list[dict] = []

    def add(self, id, check, result, limit="", status="pass", verdict=""):
        self.rows.append(dict(part="comfyui", id=id, check=check, result=result, limit=limit, status=status,
                              verdict=verdict))

    def import_pack(self):
        import importlib.util
        sys.path.insert(0, self.comfy_dir)  # ComfyUI's top-level `nodes` before the repo's package of that name
        from comfy.cli_args import args
        args.cpu = self.device.type != "cuda"
        import folder_paths  # noqa: F401  (the pack registers its model folder there)
        spec = importlib.util.spec_from_file_location("lumina_pack", os.path.join(ROOT, "__init__.py"),
                                                      submodule_search_locations=[ROOT])
        module = importlib.util.module_from_spec(spec)
        sys.modules["lumina_pack"] = module
        spec.loader.exec_module(module)
        return module.nodes

    def sample(self, nodes, model, image_tokenizer=None):
        sampler = nodes.compat.node_with_hidden(nodes.sampler.Sampler, unique_id="1")
        return sampler.execute(model, prompt="a red circle on a blue background", task="t2i", width=64, height=64,
                               seed=3, cfg=1.5, top_k=1, temperature=1.0, batch_size=1,
                               image_tokenizer=image_tokenizer).args[0]

    def run(self) -> list[dict]:
        try:
            nodes = self.import_pack()
        except Exception as e:  # not importable by this python: a skip, not a failure
            self.add("comfy", "ComfyUI dynamic-VRAM load", f"{type(e).__name__}: {e}"[:300], status="skipped",
                     verdict="skipped: ComfyUI not importable")
            return self.rows
        compat = nodes.compat
        version = f"ComfyUI {compat.COMFYUI_VERSION} ({sys.executable})"
        if compat.DYNAMIC_PATCHER is None:
            self.add("comfy", "ComfyUI dynamic-VRAM load", f"{version} has no dynamic VRAM", status="skipped",
                     verdict="skipped: no dynamic VRAM in this ComfyUI")
            return self.rows
        self.add("comfy-host", "ComfyUI in-process", version, status="measured", verdict="loaded")
        self.dynamic_vram(nodes)
        return self.rows

    def dynamic_vram(self, nodes):
        import comfy.memory_management
        import comfy.model_management as mm
        import comfy.model_patcher
        import comfy.ops
        loaders, cuda = nodes.loaders, self.device.type == "cuda"
        classic = loaders.ModelLoader.execute(DEMO_CHECKPOINT, "auto", "sdpa").args[0]
        classic_vq = loaders.ImageTokenizerLoader.execute(DEMO_IMAGE_TOKENIZER).args[0]
        want = self.sample(nodes, classic, classic_vq)
        want_pixels = nodes.decode.Decode.execute(want, classic_vq, "output").args[0]
        weights = {n: p.detach().cpu() for n, p in classic.engine.named_parameters()}
        del classic, classic_vq
        mm.free_memory(10 * mm.get_total_memory(mm.get_torch_device()), mm.get_torch_device())

        if cuda:  # as ComfyUI 0.33 starts on NVIDIA: comfy-aimdo on this GPU, ModelPatcherDynamic the default
            import comfy_aimdo.control
            if not comfy_aimdo.control.init_devices([self.device.index or 0]):
                raise RuntimeError("comfy-aimdo did not initialise on this GPU")
            comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcherDynamic
        comfy.memory_management.aimdo_enabled = True
        probe = comfy.ops.disable_weight_init.Linear(4, 4, bias=False)
        self.check("comfy-lazy-layers", "dynamic VRAM: comfy.ops layers hold no weight until loaded",
                   f"Linear.weight is {'None' if probe.weight is None else 'allocated'}", probe.weight is None,
                   "None until loaded")
        model = loaders.ModelLoader.execute(DEMO_CHECKPOINT, "auto", "sdpa").args[0]
        vq = loaders.ImageTokenizerLoader.execute(DEMO_IMAGE_TOKENIZER).args[0]
        params = dict(model.engine.named_parameters())
        differ = [n for n, w in weights.items() if n not in params or not torch.equal(params[n].detach().cpu(), w)]
        self.check("comfy-weights", "dynamic VRAM: the loader fills every weight as the classic load",
                   f"{len(weights) - len(differ)}/{len(weights)} tensors equal"
                   + (f"; e.g. {differ[0]}" if differ else ""), not differ, "every tensor equal")
        got = self.sample(nodes, model, vq)
        same = int((got.codes == want.codes).sum())
        self.check("comfy-codes", "dynamic VRAM: greedy codes == classic load (demo model, 64x64)",
                   f"{same}/{want.codes.numel()} codes equal", torch.equal(got.codes, want.codes),
                   "identical (same weights, same kernels)")
        patchers = f"transformer {type(model.patcher).__name__}, MoVQGAN {type(vq.patcher).__name__}"
        if not cuda:
            return self.add("comfy-aimdo", AIMDO_CHECK, patchers, status="n/a", verdict=NA_CPU)
        pixels = nodes.decode.Decode.execute(got, vq, "output").args[0]
        err = float((pixels - want_pixels).abs().max())
        ok = (type(model.patcher) is comfy.model_patcher.ModelPatcher
              and isinstance(vq.patcher, comfy.model_patcher.ModelPatcherDynamic) and err <= 1e-3)
        self.check("comfy-aimdo", AIMDO_CHECK, f"{patchers}; max pixel diff {err:.2g}", ok,
                   "ModelPatcher / ModelPatcherDynamic; pixels within 1e-3 (the decoder's float rounding)")

    def check(self, id, check, result, ok: bool, limit=""):
        self.add(id, check, result, limit, status="pass" if ok else "FAIL", verdict="pass" if ok else "FAIL")


def comfy_child(args) -> int:
    device = torch.device(args.device)
    if device.type != "cuda":
        torch.set_num_threads(1)
    child = ComfyChild(device, args.comfy_dir)
    try:
        rows = child.run()
    except Exception as e:  # a check that raised: its row, then the rest of the report
        traceback.print_exc()
        child.add("comfy-error", "ComfyUI dynamic-VRAM load", f"{type(e).__name__}: {e}".replace("\n", " ")[:300],
                  status="FAIL", verdict="FAIL")
        rows = child.rows
    with open(args.json, "w") as f:
        json.dump(rows, f)
    return 0


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
    p.add_argument("--comfy-dir", default=DEFAULT_COMFY_DIR if os.path.isdir(DEFAULT_COMFY_DIR) else None,
                   help="a ComfyUI source tree (default .comfy/0.33.0/comfyui when present)")
    p.add_argument("--comfy-python", default=None, help="python for part 4 (default: the venv next to --comfy-dir)")
    p.add_argument("--comfy-child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    unknown = set(a.parts) - set(PARTS)
    if unknown:
        p.error(f"unknown parts {sorted(unknown)}; choose from {PARTS}")
    if a.steps is None:
        a.steps = 3 if a.tiny else 30
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.comfy_child:
        return comfy_child(a)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --tiny (CPU smoke test) or on a GPU machine")
    if not a.tiny and not a.device.startswith("cuda"):
        sys.exit("the 7B shapes need a GPU (16 GB of weights + 9 GB of KV cache); use --tiny on CPU")
    if not a.device.startswith("cuda"):
        torch.set_num_threads(1)  # tiny ops: extra threads only add contention on a shared box
    return GpuCheck(a).run()


if __name__ == "__main__":
    sys.exit(main())
