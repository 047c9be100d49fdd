"""GPU decode benchmark: the exact Lumina-mGPT 2.0 7B shapes with random bf16 weights, one table.

    python bench/gpu.py                 # CUDA, ~2-4 minutes, needs only torch
    python bench/gpu.py --tiny          # small model on CPU (or GPU) in seconds: a smoke test of this script

What it does (each mode in its own try/except, so one failure still prints the rest):
1. measures copy bandwidth (a large device-to-device copy: bytes read + written / time);
2. builds the model (hidden 4096, 32 layers, 32 heads, ffn 11008, vocab 171385) and a 768x768 CFG KV cache;
3. per mode, times one decode step (forward + guidance, top-k, Gumbel draw) at several KV lengths,
   integrates ms(KV length) over a 768x768 image (9,312 body tokens, 9,215 plain forwards) and compares
   it with the bandwidth floor: bytes one step must read (linear weights with the image-code head +
   the live KV of both CFG streams) / copy bandwidth;
4. decodes a small real image (128x128, 256 codes) per mode and reports the share of codes equal to the
   eager plain run (greedy); SJD greedy must equal plain greedy.
SJD seconds per image assume --sjd-accept image codes per forward (default 2.2, the published SJD figure;
random weights make acceptance meaningless, so bench/forward_passes.py measures it on the demo model).
The 7B-shape set-up and timing helpers live in bench/gpu_setup.py (shared with bench/gpu_check.py, the
pass/fail checks of every GPU-only path).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench.gpu_setup import (GIB, IMAGE, Clock, build_model, copy_bandwidth, describe, integrate,  # noqa: E402
                             make_plan, plain_step_ms, shapes, sjd_window_ms)
from lumina_core.decoding import rng  # noqa: E402
from lumina_core.decoding.fast import StepRunner, compile_layers  # noqa: E402
from lumina_core.memory.kv_cache import KVCache  # noqa: E402
from lumina_core.decoding.logits import SamplingOptions  # noqa: E402
from lumina_core.memory.quant import Int8Linear, int8pack_works, linear_weight_bytes, quantize_int8_, triton_works  # noqa: E402
from lumina_core.decoding.sampler import Session, pick_codes, sample_plain  # noqa: E402
from lumina_core.decoding.jacobi import JacobiRun  # noqa: E402
from lumina_core.decoding.sjd import SJDecoder  # noqa: E402


# ----------------------------------------------------------------------------- single ops
def micro(cfg, device, dtype, clock, bandwidth, tiny: bool) -> list[tuple[str, float, float]]:
    """Single ops at the 7B shapes: (name, ms, effective GB/s of the bytes they must read)."""
    from lumina_core.model.transformer import matmul_attention
    from lumina_core.memory.quant import Int8Linear
    out = []
    C, F, H, D = cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads, cfg.head_dim
    S = 512 if tiny else 9312
    lin = torch.nn.Linear(C, F, bias=False, device=device, dtype=dtype)
    kernels = {"bf16" if dtype == torch.bfloat16 else str(dtype): lin}
    for k in ("triton", "int8pack", "dequant"):
        if (k == "dequant" or (k == "int8pack" and int8pack_works(device, dtype))
                or (k == "triton" and triton_works(device, dtype))):
            kernels[f"int8 {k}"] = Int8Linear.from_linear(lin, kernel=k)
    for M in (2, 32):
        x = torch.randn(M, C, device=device, dtype=dtype)
        ref = lin(x).float()
        for name, layer in kernels.items():
            nbytes = sum(b.numel() * b.element_size() for b in list(layer.parameters()) + list(layer.buffers()))
            err = float((layer(x).float() - ref).abs().max() / ref.abs().max())
            ms = clock.time(lambda: layer(x), n=50, warm=5)
            out.append((f"linear {C}->{F} M={M} {name} (max rel. error vs bf16 {err:.4f})", ms, nbytes / ms / 1e6))
    buf_k = torch.randn(2, H, S + 64, D, device=device, dtype=dtype)
    buf_v = torch.randn_like(buf_k)
    k, v = buf_k[:, :, :S], buf_v[:, :, :S]
    kv_bytes = 2 * k.numel() * k.element_size()
    for T in (1, 16):
        q = torch.randn(2, H, T, D, device=device, dtype=dtype)
        mask = torch.ones(2, 1, T, S, dtype=torch.bool, device=device).tril(S - T)
        mask[1, ..., :100] = False  # the unconditional stream's left padding
        mask[1, ..., -T:] |= torch.eye(T, dtype=torch.bool, device=device)
        fns = {"sdpa+mask": lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask),
               "matmul+mask": lambda: matmul_attention(q, k, v, mask, D),
               "sdpa causal, no mask (not usable: ignores padding)":
                   lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=T > 1)}
        for name, fn in fns.items():
            ms = clock.time(fn, n=50, warm=5)
            out.append((f"attention T={T} S={S} {name}", ms, kv_bytes / ms / 1e6))
    return out


# ----------------------------------------------------------------------------- per-mode timing
class Bench:
    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        self.clock = Clock(self.device)
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.cfg, self.special = shapes(args.tiny)
        self.plan = make_plan(self.special, IMAGE)
        self.small = make_plan(self.special, 128)
        self.opts = SamplingOptions(cfg=4.0, top_k=4096)
        self.greedy = SamplingOptions(cfg=4.0, top_k=1)
        self.rows = self.special.image_rows
        self.seed_t = rng.seed_tensor([0], self.device)
        self.contexts = [c for c in args.contexts if c < len(self.plan.cond_ids) + self.plan.layout.generated_tokens]
        self.rows_out: list[dict] = []
        self.micro_rows: list[tuple] = []
        self.references: dict = {}
        self.weights_tag = "bf16" if self.dtype == torch.bfloat16 else "fp32"
        self.t0 = time.perf_counter()

    def budget_left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.t0)

    def reset_peak(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self):
        return torch.cuda.max_memory_allocated() / GIB if self.device.type == "cuda" else float("nan")

    # -- one plain step at a fixed KV length: the sampler's inner loop (step + pick), then roll back
    def plain_ms(self, session, context: int) -> float:
        return plain_step_ms(session, self.special, self.opts, context, self.clock, self.args.steps)

    # -- one SJD window at a fixed KV length: JacobiRun.iterate with its state pinned there
    def sjd_ms(self, run: JacobiRun, context: int) -> float:
        return sjd_window_ms(run, context, self.clock, max(5, self.args.steps // 4))

    def check_small(self, forward, sjd: bool) -> float:
        """Token check on a 128x128 image with the same weights and attention backend.

        Plain modes: teacher-forced greedy agreement with the eager decode (the eager greedy codes are
        fed, and each step's argmax is compared with them), so one rounding difference does not
        cascade; ~1.000 means the fast path computes the same thing. SJD: its free-running greedy codes
        vs plain greedy through the same runner (equal in exact arithmetic; bf16 window vs one-token
        rounding can flip a near-tie, and everything after it then differs).
        """
        key = (self.weights_tag, self.model.model.layers[0].self_attn.backend)
        if key not in self.references:
            compiled = self.model.model.layers[0]._compiled_call_impl is not None
            compile_layers(self.model, enable=False)
            self.references[key] = sample_plain(self.model, self.small, self.special, [0], self.greedy)[0]
            compile_layers(self.model, enable=compiled)
        if sjd:
            codes, _ = SJDecoder(window=16, forward=forward, graphs=self.args.sjd_graphs).sample(
                self.model, self.small, self.special, [0], self.greedy)
            plain, _ = sample_plain(self.model, self.small, self.special, [0], self.greedy, forward=forward)
            return float((codes == plain).float().mean())
        return float((self.forced_argmax(forward, self.references[key]) == self.references[key]).float().mean())

    def forced_argmax(self, forward, codes: torch.Tensor) -> torch.Tensor:
        """The greedy code at every position of the small image while `codes` [1, h, w] are fed."""
        lay, sp = self.small.layout, self.special
        session = Session(self.model, self.small, 1, True, forward=forward)
        logits = session.prefill(self.rows)
        picks = torch.empty_like(codes)
        counter = torch.zeros(1, dtype=torch.long, device=self.device)
        row_end = torch.full((1, 1), sp.row_end, dtype=torch.long, device=self.device)
        for r in range(lay.gen_rows):
            for c in range(lay.w_lat):
                picks[:, r, c] = pick_codes(logits, session, self.greedy, self.greedy.cfg, self.seed_t, counter)[0]
                if r == lay.gen_rows - 1 and c == lay.w_lat - 1:
                    break
                tokens = (codes[:, r, c] + sp.image_code_start).view(1, 1)
                if c == lay.w_lat - 1:
                    tokens = torch.cat([tokens, row_end], 1)
                logits = session.step(tokens, self.rows)[:, -1]
        return picks

    def record(self, mode, ms, floor_ms, forwards, check, note=""):
        mean_ms = integrate(self.contexts, ms, self.span())
        mean_floor = integrate(self.contexts, floor_ms, self.span())
        seconds = forwards * mean_ms / 1000
        floor_s = forwards * mean_floor / 1000
        codes = self.plan.layout.gen_rows * self.plan.layout.w_lat
        row = dict(mode=mode, ms=ms, mean_ms=mean_ms, s_per_image=seconds, floor_s=floor_s,
                   x_floor=seconds / floor_s, tok_s=codes / seconds, peak_gib=self.peak_gib(), check=check,
                   note=note)
        self.rows_out.append(row)
        print(f"  {mode}: " + ", ".join(f"{m:.2f} ms @ {c}" for c, m in zip(self.contexts, ms))
              + f" -> {seconds:.1f} s/image (x{row['x_floor']:.2f} floor), check {check:.3f}", flush=True)

    def span(self):
        start = len(self.plan.cond_ids)
        return start, start + self.plan.layout.generated_tokens

    def floor_ms(self, weight_bytes: int) -> list[float]:
        per_token = KVCache.estimate_bytes(self.cfg, 2, 1, self.dtype)   # K+V, all layers, both CFG rows
        return [(weight_bytes + per_token * c) / self.bandwidth * 1000 for c in self.contexts]

    # ------------------------------------------------------------------------- modes
    def run(self):
        a = self.args
        print(f"device: {describe(self.device)}; torch {torch.__version__}", flush=True)
        self.bandwidth = copy_bandwidth(self.device, self.clock, a.tiny)
        print(f"copy bandwidth: {self.bandwidth / 1e9:.0f} GB/s", flush=True)
        if a.micro:
            try:
                with torch.inference_mode():
                    self.micro_rows = micro(self.cfg, self.device, self.dtype, self.clock, self.bandwidth, a.tiny)
                for name, ms, gbs in self.micro_rows:
                    print(f"  {name}: {ms:.3f} ms, {gbs:.0f} GB/s", flush=True)
            except Exception:
                traceback.print_exc()
            self.reset_peak()
        t = time.perf_counter()
        self.model = build_model(self.cfg, self.device, self.dtype)
        weights = sum(p.numel() * p.element_size() for p in self.model.parameters())
        print(f"model built in {time.perf_counter() - t:.1f} s: {weights / GIB:.2f} GiB of weights", flush=True)
        self.kv_bytes = KVCache.estimate_bytes(self.cfg, 2, len(self.plan.cond_ids) + self.plan.layout.generated_tokens,
                                               self.dtype)
        self.weights_bytes = weights
        self.plain_forwards = self.plan.layout.gen_rows * self.plan.layout.w_lat - 1
        self.sjd_forwards = (self.plain_forwards + 1) / a.sjd_accept
        want = set(a.modes)
        with torch.inference_mode():
            attn, compiled = a.attention, False
            if "eager" in want:
                self.guard("eager", self.mode_plain, "eager", attn, False)
            if "graphs" in want:
                self.guard("graphs", self.mode_plain, "graphs", attn, True)
            if "compile" in want:
                compiled = self.guard("graphs+compile", self.mode_plain, "graphs+compile", attn, True, True)
            if "sjd" in want:
                self.guard("sjd16", self.mode_sjd, "sjd16 graphs" + ("+compile" if compiled else ""), attn, compiled)
                if a.sjd_graphs:
                    a.sjd_graphs = False
                    self.guard("sjd16 eager verify", self.mode_sjd,
                               "sjd16 graphs" + ("+compile" if compiled else "") + ", eager verification", attn, compiled)
                    a.sjd_graphs = True
            if "int8" in want and self.guard("int8 quantize", self.quantize):
                kernel = next(m.kernel for m in self.model.modules() if isinstance(m, Int8Linear))
                self.guard("int8 graphs", self.mode_plain, f"int8[{kernel}] graphs", attn, True)
                compiled = "compile" in want and self.guard(
                    "int8 graphs+compile", self.mode_plain, f"int8[{kernel}] graphs+compile", attn, True, True)
                if "sjd" in want:
                    self.guard("int8 sjd16", self.mode_sjd,
                               f"int8[{kernel}] sjd16 graphs" + ("+compile" if compiled else ""), attn, compiled)
        self.report()

    def guard(self, name, fn, *args) -> bool:
        """Run one mode; True when it worked. A failure is recorded and the next mode runs."""
        if self.budget_left() < 20:
            print(f"[skip] {name}: time budget spent", flush=True)
            self.rows_out.append(dict(mode=name, error="skipped: time budget"))
            return False
        try:
            fn(*args)
            return True
        except Exception as e:  # keep going: one failing mode must not hide the others
            traceback.print_exc()
            self.rows_out.append(dict(mode=name, error=f"{type(e).__name__}: {e}"[:200]))
            compile_layers(self.model, enable=False)
            return False
        finally:
            self.reset_peak()

    def mode_plain(self, mode, attention, graphs, compiled=False):
        self.model.set_attention_backend(attention)
        compile_layers(self.model, enable=compiled)
        runner = StepRunner(self.model, bucket=self.args.bucket) if graphs else None
        t = time.perf_counter()
        session = Session(self.model, self.plan, 1, True, forward=runner)
        session.prefill(self.rows)
        ms = [self.plain_ms(session, c) for c in self.contexts]
        setup = time.perf_counter() - t - sum(ms) * (self.args.steps + 3) / 1000
        del session
        check = self.check_small(runner, sjd=False)
        self.record(mode, ms, self.floor_ms(self.step_weight_bytes()), self.plain_forwards, check,
                    note=f"setup (capture/compile) {setup:.0f} s")

    def mode_sjd(self, mode, attention, compiled):
        self.model.set_attention_backend(attention)
        compile_layers(self.model, enable=compiled)
        runner = StepRunner(self.model, bucket=self.args.bucket)
        run = JacobiRun(SJDecoder(window=16, forward=runner, graphs=self.args.sjd_graphs), self.model, self.plan,
                        self.special, [0], self.opts)
        run.start()
        ms = [self.sjd_ms(run, c) for c in self.contexts]
        del run
        check = self.check_small(runner, sjd=True)
        self.record(mode, ms, self.floor_ms(self.step_weight_bytes()), self.sjd_forwards, check,
                    note=f"assumes {self.args.sjd_accept} codes/forward")

    def quantize(self):
        t = time.perf_counter()
        compile_layers(self.model, enable=False)
        quantize_int8_(self.model, backend="native")
        self.weights_tag = "int8"
        self.reset_peak()
        left = sum(p.numel() * p.element_size() for p in self.model.parameters())
        left += sum(b.numel() * b.element_size() for b in self.model.buffers())
        print(f"int8 quantized in {time.perf_counter() - t:.1f} s; kernels that work here: triton "
              f"{triton_works(self.device, self.dtype)}, int8pack {int8pack_works(self.device, self.dtype)}; "
              f"model now {left / GIB:.2f} GiB", flush=True)
        self.weights_bytes = left

    def step_weight_bytes(self) -> int:
        return linear_weight_bytes(self.model, head_rows=self.rows)

    # ------------------------------------------------------------------------- output
    def report(self):
        a = self.args
        print()
        print(f"Lumina-mGPT 2.0 decode, {'TINY smoke-test shapes' if a.tiny else '7B shapes'}, random weights, "
              f"{IMAGE}x{IMAGE} with CFG (2 streams), {describe(self.device)}, torch {torch.__version__}")
        print(f"copy bandwidth {self.bandwidth / 1e9:.0f} GB/s; weights {self.weights_bytes / GIB:.2f} GiB (last mode); "
              f"768x768 CFG KV cache {self.kv_bytes / GIB:.2f} GiB; plain forwards/image {self.plain_forwards}; "
              f"SJD forwards/image {self.sjd_forwards:.0f} (assumed {a.sjd_accept} codes/forward); "
              f"graph bucket {a.bucket}")
        ctx = " | ".join(f"ms @ KV {c}" for c in self.contexts)
        print(f"| mode | {ctx} | s / 768² image | floor s | x floor | image tok/s | peak GiB | greedy check | note |")
        print("|" + "---|" * (9 + len(self.contexts)))
        for r in self.rows_out:
            if "error" in r:
                print(f"| {r['mode']} | " + " | ".join("-" for _ in self.contexts)
                      + f" | failed: {r['error']} | | | | | | |")
                continue
            ms = " | ".join(f"{m:.2f}" for m in r["ms"])
            print(f"| {r['mode']} | {ms} | {r['s_per_image']:.1f} | {r['floor_s']:.1f} | {r['x_floor']:.2f} | "
                  f"{r['tok_s']:.0f} | {r['peak_gib']:.1f} | {r['check']:.3f} | {r['note']} |")
        print("greedy check (128x128 image, same weights and attention): plain modes = teacher-forced share of steps "
              "whose greedy code equals the eager decode's (1.000 = same tokens); SJD = its greedy codes vs plain "
              "greedy through the same runner, free-running (a bf16 near-tie flip makes the rest differ). "
              "x floor = measured / (bytes per step / copy bandwidth).")
        print(f"peak memory target: weights + KV + 2 GiB = {(self.weights_bytes + self.kv_bytes) / GIB + 2:.1f} GiB "
              f"(bf16 weights before int8: see the bf16 rows)")
        if self.micro_rows:
            print("| single op (7B shapes) | ms | GB/s of bytes read |" + "\n|---|---|---|")
            for name, ms, gbs in self.micro_rows:
                print(f"| {name} | {ms:.3f} | {gbs:.0f} |")
        print(f"total bench time {time.perf_counter() - self.t0:.0f} s")
        if a.json:
            with open(a.json, "w") as f:
                json.dump(dict(device=describe(self.device), torch=torch.__version__, bandwidth=self.bandwidth,
                               contexts=self.contexts, rows=self.rows_out, micro=self.micro_rows, args=vars(a)), f, indent=1, default=str)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="small model: a smoke test of this script (CPU is fine)")
    p.add_argument("--device", default=None, help="default: cuda if available")
    p.add_argument("--steps", type=int, default=100, help="timed steps per KV length")
    p.add_argument("--contexts", type=lambda s: [int(x) for x in s.split(",")], default=[200, 4700, 9300],
                   help="KV lengths (slots incl. the prompt) to time at")
    p.add_argument("--bucket", type=int, default=512, help="graph attention-length bucket")
    p.add_argument("--attention", default="sdpa", choices=["sdpa", "matmul"], help="attention backend")
    p.add_argument("--no-sjd-graphs", dest="sjd_graphs", action="store_false",
                   help="run SJD's verification math eagerly instead of as a CUDA graph")
    p.add_argument("--modes", type=lambda s: s.split(","), default=["eager", "graphs", "compile", "sjd", "int8"],
                   help="comma-separated subset of eager,graphs,compile,sjd,int8")
    p.add_argument("--sjd-accept", type=float, default=2.2, help="image codes per SJD forward for s/image")
    p.add_argument("--budget-s", type=float, default=360, help="skip remaining modes after this many seconds")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--no-micro", dest="micro", action="store_false", help="skip the single-op timings")
    a = p.parse_args(argv)
    a.device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --tiny (CPU smoke test) or on a GPU machine")
    if not a.tiny and not a.device.startswith("cuda"):
        sys.exit("the 7B shapes need a GPU (16 GB of weights + 9 GB of KV cache); use --tiny on CPU")
    if a.tiny and a.steps == 100:
        a.steps = 5
    if not a.device.startswith("cuda"):
        torch.set_num_threads(1)  # tiny ops: extra threads only add contention on a shared box
    Bench(a).run()


if __name__ == "__main__":
    main()
