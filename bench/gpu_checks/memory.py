"""Part 3 of the GPU check: memory. Each planner row (lumina_core.memory.planner) in MEMORY_ROWS that fits the
card is built and run (the prefill and the first row of a 768x768 image, with the KV cache allocated for the
whole image up front), and torch.cuda.max_memory_allocated is checked against the planner's estimate."""
from __future__ import annotations

import gc

import torch

from bench.gpu_checks.common import SAMPLED, size
from bench.gpu_checks.context import CheckContext
from bench.gpu_setup import GIB, IMAGE, make_plan
from lumina_core.decoding import rng
from lumina_core.decoding.sampler import Session, pick_codes
from lumina_core.memory.kv_cache import kv_cache_format
from lumina_core.memory.placement import move_embeddings_to_host_
from lumina_core.memory.planner import DEFAULT_WORKSPACE, Request, estimate

PART = "memory"
# (weights, KV cache, embeddings) rows of the planner's table that this part builds
MEMORY_ROWS = (("none", "bf16", "device"), ("none", "int8", "host"), ("int8", "int8", "host"), ("int4", "int8", "host"))


def run(ctx: CheckContext):
    ctx.drop_model()
    for weights, cache, embeddings in MEMORY_ROWS:
        ctx.guard(PART, f"memory-{weights}-{cache}-{embeddings}", check_name(ctx, weights, cache, embeddings),
                  measure_memory, ctx, weights, cache, embeddings)
        ctx.drop_model()


def check_name(ctx: CheckContext, weights, cache, embeddings) -> str:
    return (f"peak memory, {ctx.weights_name(weights)} weights, {ctx.cache_name(cache)} cache, embeddings on "
            f"{embeddings}")


def measure_memory(ctx: CheckContext, weights, cache, embeddings):
    plan = make_plan(ctx.special, IMAGE)
    request = Request(IMAGE, IMAGE, prompt_tokens=len(plan.cond_ids))
    planned = estimate(ctx.cfg, request, weights, cache, embeddings, dtype=ctx.dtype,
                       num_image_codes=ctx.special.num_image_codes,
                       workspace=DEFAULT_WORKSPACE if ctx.cuda else 0).total
    id = f"memory-{weights}-{cache}-{embeddings}"
    check = check_name(ctx, weights, cache, embeddings)
    limit = f"planner {size(planned)}: the measured peak must not exceed it"
    if ctx.cuda and planned > torch.cuda.mem_get_info(ctx.device)[0]:
        free = torch.cuda.mem_get_info(ctx.device)[0]
        return ctx.add(PART, id, check, f"does not fit: {free / GIB:.1f} GiB free", limit,
                       status="skipped", verdict="skipped: does not fit this card")
    ctx.model = model = ctx.fresh_model(weights)
    if embeddings == "host":
        move_embeddings_to_host_(model)
    gc.collect()
    if ctx.cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(ctx.device)
    steps = plan.layout.w_lat
    with kv_cache_format(model, cache):
        decode_prefix(model, plan, ctx.special, SAMPLED, steps)
    ran = f"prefill + {steps} steps of a {IMAGE}² image, eager"
    if not ctx.cuda:
        return ctx.add(PART, id, check, f"ran {ran}; peak n/a", limit, status="n/a")
    ctx.clock.sync()
    peak = torch.cuda.max_memory_allocated(ctx.device)
    reserved = torch.cuda.max_memory_reserved(ctx.device)
    ctx.add_check(PART, id, check, f"{peak / GIB:.2f} GiB allocated = {peak / planned:.2f} x planner "
                  f"(reserved {reserved / GIB:.2f} GiB); {ran}", limit, peak <= planned)


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
