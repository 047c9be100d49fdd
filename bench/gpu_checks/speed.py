"""Part 2 of the GPU check: speed. ms per decode step (CFG: 2 streams, 1 token) and per SJD window, for every
weights x KV-cache format at the --contexts KV lengths, against the bandwidth floor (linear weights incl. the
image-code head + the live KV of both streams, over the measured copy bandwidth), and seconds per image."""
from __future__ import annotations

import torch

from bench.gpu_checks.common import SAMPLED, WINDOW, size
from bench.gpu_checks.context import CheckContext
from bench.gpu_setup import IMAGE, integrate, make_plan, plain_step_ms, sjd_window_ms
from lumina_core.decoding.sampler import Session
from lumina_core.decoding.jacobi import JacobiRun
from lumina_core.decoding.sjd import SJDecoder
from lumina_core.memory.kv_cache import kv_cache_format
from lumina_core.memory.quant import linear_weight_bytes

PART = "speed"


def run(ctx: CheckContext):
    for weights in ("none", "int8", "int4"):
        model = ctx.model_for(weights)
        for cache in ("bf16", "int8"):
            ctx.guard(PART, f"step-{weights}-{cache}", check_name(ctx, "step", weights, cache),
                      time_plain, ctx, model, weights, cache, is_check=False)
            ctx.guard(PART, f"sjd-{weights}-{cache}", check_name(ctx, "sjd", weights, cache),
                      time_sjd, ctx, model, weights, cache, is_check=False)
        del model
    ctx.drop_model()


def check_name(ctx: CheckContext, kind, weights, cache) -> str:
    what = "decode step" if kind == "step" else f"SJD window {WINDOW}"
    return f"{what}, {ctx.weights_name(weights)} weights, {ctx.cache_name(cache)} cache"


def kv_bytes_per_token(cfg, fmt: str, dtype: torch.dtype, streams: int = 2) -> int:
    """Bytes of one token's keys and values over all layers and both CFG streams, as attention must read them
    (int8: one byte per value plus a float32 scale and zero per token and head)."""
    value = torch.tensor([], dtype=dtype).element_size() if fmt == "bf16" else 1
    extra = 0 if fmt == "bf16" else 2 * 4
    return 2 * cfg.num_hidden_layers * streams * cfg.num_key_value_heads * (cfg.head_dim * value + extra)


def image_setup(ctx: CheckContext):
    """The timed image's plan, its span of KV slots, and the --contexts lengths inside it."""
    plan = make_plan(ctx.special, IMAGE)
    start = len(plan.cond_ids)
    span = (start, start + plan.layout.generated_tokens)
    contexts = [c for c in ctx.args.contexts if c < span[1]]
    return plan, span, contexts


def floor_ms(ctx: CheckContext, model, cache, contexts) -> list[float]:
    weights = linear_weight_bytes(model, head_rows=ctx.special.image_rows)
    per_token = kv_bytes_per_token(ctx.cfg, cache, ctx.dtype)
    return [(weights + per_token * c) / ctx.bandwidth * 1000 for c in contexts]


def speed_row(ctx: CheckContext, id, check, model, cache, contexts, span, ms, forwards, how, note=""):
    floor = floor_ms(ctx, model, cache, contexts)
    mean_ms, mean_floor = integrate(contexts, ms, span), integrate(contexts, floor, span)
    at = " / ".join(f"{m:.2f}" for m in ms) + " ms @ KV " + " / ".join(str(c) for c in contexts)
    weights = linear_weight_bytes(model, head_rows=ctx.special.image_rows)
    ctx.add(PART, id, f"{check} ({how})", f"{at}; {forwards * mean_ms / 1000:.1f} s per {IMAGE}² image "
            f"({forwards:.0f} forwards{note})", "floor " + " / ".join(f"{f:.2f}" for f in floor) +
            f" ms ({size(weights)} weights + KV at {ctx.bandwidth / 1e9:.0f} GB/s)",
            verdict=f"x{mean_ms / mean_floor:.2f} floor")


def time_plain(ctx: CheckContext, model, weights, cache):
    plan, span, contexts = image_setup(ctx)
    runner = ctx.graph_runner(model)
    with kv_cache_format(model, cache):
        session = Session(model, plan, 1, True, forward=runner)
        session.prefill(ctx.special.image_rows)
        ms = [plain_step_ms(session, ctx.special, SAMPLED, c, ctx.clock, ctx.args.steps) for c in contexts]
    del session
    forwards = plan.layout.gen_rows * plan.layout.w_lat - 1
    speed_row(ctx, f"step-{weights}-{cache}", check_name(ctx, "step", weights, cache), model, cache,
              contexts, span, ms, forwards, "CUDA graphs" if runner.use_graphs else "eager")


def time_sjd(ctx: CheckContext, model, weights, cache):
    plan, span, contexts = image_setup(ctx)
    runner = ctx.graph_runner(model)
    with kv_cache_format(model, cache):
        run = JacobiRun(SJDecoder(window=WINDOW, forward=runner, graphs=True), model, plan, ctx.special, [0],
                        SAMPLED)
        run.start()
        ms = [sjd_window_ms(run, c, ctx.clock, max(5, ctx.args.steps // 4)) for c in contexts]
    how = "eager" if not runner.use_graphs else "CUDA graphs, verification " + (
        "graph" if run._graph is not None else "EAGER: its capture failed")
    del run
    forwards = plan.layout.gen_rows * plan.layout.w_lat / ctx.args.sjd_accept
    speed_row(ctx, f"sjd-{weights}-{cache}", check_name(ctx, "sjd", weights, cache), model, cache,
              contexts, span, ms, forwards, how,
              f" at an ASSUMED {ctx.args.sjd_accept} codes/forward: random weights make acceptance meaningless")
