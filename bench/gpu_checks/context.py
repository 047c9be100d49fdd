"""CheckContext: what every part of the GPU check shares. The device and the model's shapes, the rows reported
so far (and each check's guard, which turns an exception into its row and stops at the time budget), the model
held between checks, and the step runners (eager, or CUDA graphs where they run)."""
from __future__ import annotations

import gc
import time
import traceback

import torch

from bench.gpu_checks.common import NA_CPU, BudgetSpent, Row
from bench.gpu_setup import GIB, Clock, build_model, shapes
from lumina_core.decoding.fast import StepRunner
from lumina_core.memory.quant import quantize_int4_, quantize_int8_


class CheckContext:
    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.dtype = torch.bfloat16 if self.cuda else torch.float32
        self.float_name = "bf16" if self.dtype == torch.bfloat16 else "fp32"
        self.cfg, self.special = shapes(args.tiny)
        self.clock = Clock(self.device)
        self.bandwidth = None                          # bytes/s of a device copy: measured before the parts run
        self.rows: list[Row] = []
        self.model, self.model_weights = None, None   # the model held between checks, and its weight format
        self.check_weights = args.check_weights if args.check_weights != "auto" else self.weights_that_fit()
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

    def failed(self) -> list[Row]:
        return [r for r in self.rows if r.status == "FAIL"]

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def budget_spent(self) -> bool:
        return self.elapsed() > self.args.budget_s

    def guard(self, part, id, check, fn, *args, is_check=True):
        """Run one check; an exception becomes its row (FAIL for a check, error for a measurement)."""
        if self.budget_spent():
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

    # ------------------------------------------------------------------------- names
    def weights_name(self, weights: str) -> str:
        return self.float_name if weights == "none" else weights

    def cache_name(self, cache: str) -> str:
        return self.float_name if cache == "bf16" else cache  # the engine's "bf16" cache is the compute dtype

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

    # ------------------------------------------------------------------------- step runners
    def eager_runner(self, model):
        return StepRunner(model, bucket=self.args.bucket, graphs=False)

    def graph_runner(self, model):
        """CUDA graphs where they run (the whole model on a CUDA device); elsewhere the same runner, eager."""
        return StepRunner(model, bucket=self.args.bucket, graphs=None)
