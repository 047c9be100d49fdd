"""Decode step time: one process vs a tensor-parallel group of 2 ranks (tp.py, gloo on the CPU), side by side.

    python bench/tp_step.py                       # ~1-2 minutes, ~6 GB of RAM
    python bench/tp_step.py --layers 1 --steps 5 --rounds 1

The model has the real width (4096, 32 heads, MLP 11,008) and a few layers, random fp32 weights, and a
short vocabulary: the 16,384 image-code rows plus 1,024 others (the released 171,385-row embedding and
head would add 5.6 GB per process without changing the step, which reads only the image-code rows).
A step is the plain sampler's cached CFG step: 2 streams, 1 token, logits over the image codes, at a KV
length of --context. Configurations, timed in alternating rounds so a busy machine slows them alike:
- 1 process with --threads threads (the single-device engine),
- 1 process with 1 thread,
- 2 ranks with 1 thread each (gloo: one all-reduce after attention and after the MLP of every layer, one
  all-gather of the code logits).
On a CPU both ranks share one memory bus, so this shows what the collectives cost, not the speed-up of
two GPUs that each read half the weights from their own memory (NCCL over NVLink).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from lumina_core.parallel import tp  # noqa: E402
from lumina_core.model.config import LuminaConfig  # noqa: E402
from lumina_core.memory.kv_cache import KVCache  # noqa: E402
from lumina_core.model.transformer import LuminaMGPT  # noqa: E402

CODES, TEXT = 16384, 1024
CODE_ROWS = (TEXT, TEXT + CODES)


def build(layers: int) -> LuminaMGPT:
    cfg = LuminaConfig(vocab_size=TEXT + CODES, hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers,
                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = LuminaMGPT(cfg, dtype=torch.float32)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model.rotary = type(model.rotary)(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta, "cpu")
    return model.eval().requires_grad_(False)


def time_steps(model, context: int, steps: int, barrier=None) -> list[float]:
    """Seconds per cached CFG step at KV length `context` (the cache holds zeros: the work is the same)."""
    cache = KVCache.for_model(model, 2, context + steps + 8)
    cache.length = context
    tokens = torch.full((2, 1), CODE_ROWS[0] + 5, dtype=torch.long)
    times = []
    with torch.inference_mode():
        for i in range(steps + 1):
            if barrier is not None:
                barrier()
            t0 = time.perf_counter()
            logits = model.forward_step(tokens, cache, cache.slots(1), kv_len=cache.length + 1, rows=CODE_ROWS,
                                        last_only=True)
            tokens = (logits[:, -1].argmax(-1, keepdim=True) + CODE_ROWS[0])
            cache.length += 1
            if i:  # the first step warms up
                times.append(time.perf_counter() - t0)
    return times


def rank_main(rank, world, port, layers, context, commands, results):
    torch.set_num_threads(1)
    shard = tp.init_group(rank, world, port)
    model = tp.shard_(build(layers), shard, code_rows=CODE_ROWS)
    results.put(("ready", rank))
    while True:
        cmd = commands[rank].get()
        if cmd is None:
            break
        times = time_steps(model, context, cmd, barrier=torch.distributed.barrier)
        if rank == 0:
            results.put(("times", times))
    tp.leave_group()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args(argv)
    world = 2
    ctx = mp.get_context("spawn")
    commands = [ctx.Queue() for _ in range(world)]
    results = ctx.Queue()
    meeting = tp.Rendezvous()  # held by this process for the ranks' lifetime
    port = meeting.port
    procs = [ctx.Process(target=rank_main, args=(r, world, port, args.layers, args.context, commands, results),
                         daemon=True) for r in range(world)]
    for proc in procs:
        proc.start()
    single = build(args.layers)
    for _ in range(world):
        results.get(timeout=600)
    rows = {f"1 process x {args.threads} threads": [], "1 process x 1 thread": [], "2 ranks x 1 thread (gloo)": []}
    try:
        for _ in range(args.rounds):
            torch.set_num_threads(args.threads)
            rows[f"1 process x {args.threads} threads"] += time_steps(single, args.context, args.steps)
            torch.set_num_threads(1)
            rows["1 process x 1 thread"] += time_steps(single, args.context, args.steps)
            for q in commands:
                q.put(args.steps)
            kind, times = results.get(timeout=600)
            rows["2 ranks x 1 thread (gloo)"] += times
    finally:
        for q in commands:
            q.put(None)
        for proc in procs:
            proc.join(30)
    base = statistics.median(rows[f"1 process x {args.threads} threads"])
    weights = sum(t.numel() * t.element_size() for n, t in single.named_parameters() if "embed" not in n) / 2**30
    print(f"decode step, width 4096, {args.layers} layers, fp32, KV length {args.context}, CFG (2 streams); "
          f"{weights:.2f} GiB of weights read per step in one process, half per rank")
    print(f"{'configuration':<28} {'median ms/step':>15} {'vs first row':>13}")
    for name, times in rows.items():
        med = statistics.median(times)
        print(f"{name:<28} {1000 * med:>15.1f} {base / med:>12.2f}x")


if __name__ == "__main__":
    main()
