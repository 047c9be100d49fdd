"""Part 1 of the GPU check: correctness against independent references. Weight-only int8/int4 kernels vs
float32 dequantise-then-matmul, the int8 KV cache vs the bf16 cache, and SJD and CUDA graphs vs plain greedy
codes (equal, or still a greedy decode within rounding noise where bf16 logits tie)."""
from __future__ import annotations

import torch

from bench.gpu_checks.common import (GREEDY, NA_CPU, SMALL, WINDOW, Forced, first_difference,
                                     forced_guided_logits, kernel_error_limit)
from bench.gpu_checks.context import CheckContext
from bench.gpu_setup import make_plan
from lumina_core.decoding.sampler import sample_plain
from lumina_core.decoding.jacobi import JacobiRun
from lumina_core.decoding.jacobi_tree import TreeJacobiRun
from lumina_core.decoding.sjd import SJDecoder
from lumina_core.memory.kv_cache import kv_cache_format
from lumina_core.memory.quant import Int4Linear, Int8Linear, dequantize_int4, int4_group_size, int8pack_works
from lumina_core.memory.triton_kernels import triton as triton_module
from lumina_core.memory.triton_kernels import w4_block_k

PART = "correctness"
HEAD_OFFSET = 1000            # the head check asks forward_rows for rows [1000, 1000 + codes), a slice as in decoding
KERNELS = (("int8", "triton"), ("int8", "int8pack"), ("int8", "dequant"), ("int4", "triton"), ("int4", "dequant"))


def kernel_check_name(fmt: str, kernel: str) -> str:
    return f"{fmt} weight-only layer, kernel {kernel}"


def run(ctx: CheckContext):
    CorrectnessChecks(ctx).run()


class CorrectnessChecks:
    def __init__(self, ctx: CheckContext):
        self.ctx = ctx
        self._reference = None

    def run(self):
        ctx = self.ctx
        for fmt, kernel in KERNELS:
            ctx.guard(PART, f"{fmt}-{kernel}", kernel_check_name(fmt, kernel), self.check_kernel, fmt, kernel)
        ctx.guard(PART, "kv-int8", f"int8 KV cache vs {ctx.float_name} cache", self.check_int8_cache)
        ctx.guard(PART, "sjd-greedy", "SJD greedy == plain greedy (eager)", self.check_sjd)
        ctx.guard(PART, "sjd-tree-greedy", "SJD draft tree greedy == plain greedy (eager)", self.check_sjd_tree)
        ctx.guard(PART, "graphs", "CUDA graphs vs eager", self.check_graphs)

    # ------------------------------------------------------------------------- weight-only kernels
    def layer_shapes(self) -> list[tuple[int, int, str]]:
        C, F = self.ctx.cfg.hidden_size, self.ctx.cfg.intermediate_size
        return [(C, F, "gate/up"), (F, C, "down"), (C, self.ctx.special.num_image_codes, "code head")]

    def kernel_unavailable(self, fmt, kernel) -> str | None:
        if kernel == "triton" and not self.ctx.cuda:
            return NA_CPU
        if kernel == "triton" and triton_module is None:
            return "n/a: triton is not installed"
        if kernel == "int8pack" and not int8pack_works(self.ctx.device, self.ctx.dtype):
            return "n/a: torch._weight_int8pack_mm does not run here"
        return None

    def check_kernel(self, fmt, kernel):
        ctx = self.ctx
        check = kernel_check_name(fmt, kernel)
        limit = kernel_error_limit(ctx.dtype, max(k for k, _, _ in self.layer_shapes()))
        limit_text = f"<= {limit:.2g} (6u of {ctx.float_name} + K x 2^-24 for float32 sums)"
        unavailable = self.kernel_unavailable(fmt, kernel)
        if unavailable:
            return ctx.add(PART, f"{fmt}-{kernel}", check, "not run", limit_text, status="n/a", verdict=unavailable)
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
        ctx.add_check(PART, f"{fmt}-{kernel}", check, result, limit_text, worst <= limit)

    def auto_kernel(self, fmt) -> str:
        """The kernel a layer of the model's width gets on this device without a choice."""
        ctx = self.ctx
        lin = torch.nn.Linear(ctx.cfg.hidden_size, 64, bias=False, device=ctx.device, dtype=ctx.dtype)
        return (Int8Linear if fmt == "int8" else Int4Linear).from_linear(lin).kernel

    def kernel_error(self, fmt, kernel, k, n, m, head: bool) -> float:
        """max |layer(x) - x @ dequant(W).T| / max |reference| for one shape; the head reads a row slice."""
        device, dtype = self.ctx.device, self.ctx.dtype
        g = torch.Generator(device=device).manual_seed(k * 7 + n + m)
        rows = n + HEAD_OFFSET if head else n
        lin = torch.nn.Linear(k, rows, bias=False, device=device, dtype=dtype)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(rows, k, generator=g, device=device) * k**-0.5)
        x = torch.randn(m, k, generator=g, device=device).to(dtype)
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

    # ------------------------------------------------------------------------- greedy codes and their logits
    def forced(self, codes: torch.Tensor) -> Forced:
        """Teacher forcing along `codes` with the eager runner, one token and 16 tokens per forward."""
        ctx = self.ctx
        model, small = ctx.check_model(), make_plan(ctx.special, SMALL)
        eager = ctx.eager_runner(model)
        one = forced_guided_logits(model, small, ctx.special, codes, 1, eager)
        window = forced_guided_logits(model, small, ctx.special, codes, WINDOW, eager)
        return Forced(codes, one, (one - window).abs().amax(-1))

    def reference(self) -> Forced:
        """Computed once: plain greedy codes (eager runner, bf16 cache) and their teacher-forced logits."""
        if self._reference is None:
            ctx = self.ctx
            model, small = ctx.check_model(), make_plan(ctx.special, SMALL)
            codes = sample_plain(model, small, ctx.special, [0], GREEDY, forward=ctx.eager_runner(model))[0][0]
            self._reference = self.forced(codes)
        return self._reference

    def codes_check(self, id, check, got: torch.Tensor, needs_cuda=False):
        """Greedy codes of a fast path vs plain greedy. Equal passes. Otherwise (bf16 logits are rounded to
        ~0.25 at their size, so exact ties are common) the codes must still be a greedy decode: teacher-forced
        along them, every code within twice its position's rounding noise of the best logit. That checks all
        positions, not only the first difference, and is what equality means in exact arithmetic."""
        ctx, ref = self.ctx, self.reference()
        equal, first = first_difference(got, ref.codes)
        n = ref.codes.numel()
        limit = "equal, or every code its context's greedy choice within 2 x rounding noise"
        if first < 0:
            return ctx.add_check(PART, id, check, f"{n}/{n} codes equal to plain greedy" + ctx.weights_note(),
                                 limit, True, needs_cuda)
        own = self.forced(got)
        excess = own.shortfall() - 2 * own.noise
        bad = int((excess > 0).sum())
        worst = int(excess.argmax())
        result = (f"{equal}/{n} codes equal to plain greedy (first difference at code {first}); as a greedy decode of "
                  f"its own: {n - bad}/{n} codes within 2 x rounding noise of the best (closest to the limit: code "
                  f"{worst}, "
                  f"shortfall {float(own.shortfall()[worst]):.3g}, noise {float(own.noise[worst]):.3g})"
                  + ctx.weights_note())
        ctx.add_check(PART, id, check, result, limit, bad == 0, needs_cuda)

    # ------------------------------------------------------------------------- the int8 KV cache
    def check_int8_cache(self):
        ctx = self.ctx
        ref, model, small = self.reference(), ctx.check_model(), make_plan(ctx.special, SMALL)
        eager = ctx.eager_runner(model)
        with kv_cache_format(model, "int8"):
            forced = forced_guided_logits(model, small, ctx.special, ref.codes, 1, eager)
            free = sample_plain(model, small, ctx.special, [0], GREEDY, forward=eager)[0][0]
        diff = forced - ref.logits
        worst, rms = float(diff.abs().max()), float(diff.pow(2).mean().sqrt())
        std = float(ref.logits.std())
        finite = bool(torch.isfinite(forced).all())
        # int8 keeps each token-head vector to 1/255 of its range (~0.4% relative): measured ~0.025 x std after
        # 6 bf16 layers of width 1024; a quarter of the spread leaves room for 32 layers and stays far below an
        # unrelated (misaddressed, mis-scaled) cache's sqrt(2) x std
        ctx.add_check(PART, "kv-int8-logits", f"int8 KV cache: guided logits vs {ctx.float_name} cache "
                      f"(teacher-forced, {SMALL}x{SMALL})",
                      f"max abs diff {worst:.3g}, rms {rms:.3g}; logit std {std:.3g}; finite: {finite}"
                      + ctx.weights_note(),
                      f"finite, rms <= 0.25 x std = {0.25 * std:.3g}", finite and rms <= 0.25 * std)
        n = ref.codes.numel()
        forced_same = int((forced.argmax(-1) == ref.codes.flatten()).sum())
        equal, i = first_difference(free, ref.codes)
        first = "" if i < 0 else f", first difference at code {i}"
        ctx.add(PART, "kv-int8-greedy", f"int8 KV cache: greedy codes vs {ctx.float_name} cache",
                f"teacher-forced argmax {forced_same}/{n}; free-running {equal}/{n}{first}",
                "report (random weights: near-ties part the runs)", verdict=f"{forced_same / n:.3f} / {equal / n:.3f}")

    # ------------------------------------------------------------------------- SJD and CUDA graphs
    def check_sjd(self):
        ctx = self.ctx
        model, small = ctx.check_model(), make_plan(ctx.special, SMALL)
        codes = SJDecoder(window=WINDOW, forward=ctx.eager_runner(model)).sample(
            model, small, ctx.special, [0], GREEDY)[0][0]
        self.codes_check("sjd-greedy", f"SJD greedy (window {WINDOW}, eager) == plain greedy", codes)

    def check_sjd_tree(self):
        """The draft tree (jacobi_tree.py: tree attention mask, recursive rejection, moved side paths) at the 7B
        shapes; and the shape window='auto' picks for this device."""
        ctx = self.ctx
        model, small = ctx.check_model(), make_plan(ctx.special, SMALL)
        tree = SJDecoder(window=32, candidates=4, branch=8, forward=ctx.eager_runner(model))
        codes = tree.sample(model, small, ctx.special, [0], GREEDY)[0][0]
        self.codes_check("sjd-tree-greedy", "SJD draft tree (32 + 4 candidates x 8, eager) == plain greedy", codes)
        auto = SJDecoder().resolved(model, GREEDY)
        ctx.add(PART, "sjd-auto", "window='auto' on this device", f"window {auto.window}, {auto.candidates} "
                f"candidates x {auto.branch}: {auto.tokens_per_forward} tokens / forward", "window_rule.py", "chosen")

    def check_graphs(self):
        """Graph replay vs the eager runner with the same bucket (same kernels and shapes), then greedy codes."""
        ctx = self.ctx
        ref, model, small = self.reference(), ctx.check_model(), make_plan(ctx.special, SMALL)
        runner = ctx.graph_runner(model)
        forced = forced_guided_logits(model, small, ctx.special, ref.codes, 1, runner)
        worst = float((forced - ref.logits).abs().max())
        how = f"{runner.captures} graphs captured" if runner.use_graphs else "ran eagerly: no capture on the CPU"
        ctx.add_check(PART, "graphs-logits", "CUDA graphs: guided logits vs eager (teacher-forced)",
                      f"max abs diff {worst:.3g} ({how}){ctx.weights_note()}",
                      f"<= rounding noise {float(ref.noise.max()):.3g} (same kernels and shapes: expect 0)",
                      worst <= float(ref.noise.max()), needs_cuda=True)
        codes = sample_plain(model, small, ctx.special, [0], GREEDY, forward=runner)[0][0]
        self.codes_check("graphs-greedy", "CUDA graphs: plain greedy codes == eager", codes, needs_cuda=True)
        run = JacobiRun(SJDecoder(window=WINDOW, forward=runner, graphs=True), model, small, ctx.special, [0], GREEDY)
        codes = run.run(None, None)[0][0]
        # a failed capture falls back to eager verification with a log line: the codes alone would not show it
        ctx.add_check(PART, "sjd-verify-graph", "SJD verification math replayed as a CUDA graph",
                      "captured and replayed" if run._graph is not None else "not captured (eager verification)",
                      "captured", run._graph is not None, needs_cuda=True)
        self.codes_check("sjd-graphs-greedy", "SJD with CUDA graphs (steps + verification) == plain greedy", codes,
                         needs_cuda=True)
        tree = TreeJacobiRun(SJDecoder(window=32, candidates=4, branch=8, forward=runner, graphs=True), model, small,
                             ctx.special, [0], GREEDY)
        codes = tree.run(None, None)[0][0]
        ctx.add_check(PART, "sjd-tree-verify-graph", "SJD draft tree: verification math replayed as a CUDA graph",
                      "captured and replayed" if tree._graph is not None else "not captured (eager verification)",
                      "captured", tree._graph is not None, needs_cuda=True)
        self.codes_check("sjd-tree-graphs-greedy", "SJD draft tree with CUDA graphs (tree steps + verification) == "
                         "plain greedy", codes, needs_cuda=True)
