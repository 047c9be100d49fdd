"""CPU decode step: our loop vs a naive upstream-style loop, side by side in one run.

    python bench/cpu_decode.py              # ~1-2 minutes, ~4 GB of RAM
    python bench/cpu_decode.py --layers 1 --rounds 2 --steps 4

The model has the real vocabulary (171,385) and width (4096) but only a few layers, random bf16
weights. Both loops produce one CFG-guided image code per step at the same KV length:
- ours: the engine's plain sampler step (Session.step + pick_codes): static KV cache, conditional and
  unconditional streams batched in one forward, logits for the 16,384 image codes only;
- naive (as upstream's plain path): a dynamic cache grown by concatenation, a separate forward for
  the unconditional stream, full-vocabulary logits, then guidance, masking to image codes, top-k and
  torch.multinomial over the 171,385 entries.
The two are timed in alternating rounds so a busy shared machine slows both alike; the table shows
median seconds per step and the ratio.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lumina_core.decoding import rng  # noqa: E402
from lumina_core.model.config import LuminaConfig  # noqa: E402
from lumina_core.decoding.logits import SamplingOptions  # noqa: E402
from lumina_core.model.transformer import LuminaMGPT, apply_rope  # noqa: E402
from lumina_core.memory.quant import quantize_int8_  # noqa: E402
from lumina_core.decoding.sampler import Session, pick_codes  # noqa: E402
from lumina_core.layout import ImageLayout  # noqa: E402
from lumina_core.decoding.tasks import PromptPlan, get_task  # noqa: E402
from lumina_core.model.tokenizer import SpecialTokens  # noqa: E402

SPECIAL = SpecialTokens(bos=0, image_start=8197, image_end=8196, row_end=8799, separator=8706,
                        image_code_start=155000, num_image_codes=16384)
CFG, TOP_K = 4.0, 4096


def naive_forward(model, ids, past, start):
    """One upstream-style cached forward of one stream: the cache grows by torch.cat every step."""
    B, T = ids.shape
    positions = torch.arange(start, start + T)[None]
    x = model.embed(ids)
    cos, sin = model.rotary(positions, x.dtype)
    new_past = []
    for layer, kv in zip(model.model.layers, past):
        attn = layer.self_attn
        h = layer.input_layernorm(x)
        q = attn.q_norm(attn.q_proj(h).view(B, T, attn.num_heads, attn.head_dim)).transpose(1, 2)
        k = attn.k_norm(attn.k_proj(h).view(B, T, attn.num_kv_heads, attn.head_dim)).transpose(1, 2)
        v = attn.v_proj(h).view(B, T, attn.num_kv_heads, attn.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv is not None:
            k, v = torch.cat([kv[0], k], 2), torch.cat([kv[1], v], 2)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=kv is None)
        x = x + attn.o_proj(out.transpose(1, 2).reshape(B, T, -1))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
        new_past.append((k, v))
    return model.logits(model.model.norm(x[:, -1:]))[:, -1], new_past  # full vocabulary, float32


class Naive:
    """Two streams, each with its own dynamic cache; guidance and sampling over the full vocabulary."""

    def __init__(self, model, plan, context: int):
        self.model = model
        body = [SPECIAL.image_code_start] * (context - len(plan.cond_ids))
        self.cond, self.cond_past = naive_forward(model, torch.tensor([plan.cond_ids + body]),
                                                  [None] * len(model.model.layers), 0)
        self.uncond, self.uncond_past = naive_forward(model, torch.tensor([plan.uncond_ids + body]),
                                                      [None] * len(model.model.layers), 0)
        self.lens = [len(plan.cond_ids) + len(body), len(plan.uncond_ids) + len(body)]
        self.saved = (self.cond_past, self.uncond_past, list(self.lens))
        self.gen = torch.Generator().manual_seed(0)

    def rewind(self):
        self.cond_past, self.uncond_past, self.lens = self.saved[0], self.saved[1], list(self.saved[2])

    def step(self):
        scores = self.uncond + CFG * (self.cond - self.uncond)
        a, b = SPECIAL.image_rows
        scores[:, :a] = float("-inf")                                   # only image codes are allowed
        scores[:, b:] = float("-inf")
        kth = torch.topk(scores, TOP_K, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
        token = torch.multinomial(scores.softmax(-1), 1, generator=self.gen)
        self.cond, self.cond_past = naive_forward(self.model, token, self.cond_past, self.lens[0])
        self.uncond, self.uncond_past = naive_forward(self.model, token, self.uncond_past, self.lens[1])
        self.lens = [n + 1 for n in self.lens]


class Ours:
    """The engine's sampler step at a fixed KV length (Session.step + pick_codes, then roll back)."""

    def __init__(self, model, plan, context: int):
        self.session = Session(model, plan, 1, True)
        self.logits = self.session.prefill(SPECIAL.image_rows)
        self.context = context
        self.opts = SamplingOptions(cfg=CFG, top_k=TOP_K)
        self.seed = rng.seed_tensor([0])
        self.counter = torch.zeros(1, dtype=torch.long)

    def rewind(self):
        self.session.cache.length = self.context

    def step(self):
        codes, _ = pick_codes(self.logits, self.session, self.opts, CFG, self.seed, self.counter)
        tokens = (codes + SPECIAL.image_code_start)[:, None]
        self.logits = self.session.step(tokens, SPECIAL.image_rows)[:, -1]


def make_plan(prompt_tokens: int = 150) -> PromptPlan:
    head = [SPECIAL.image_start, 8824, 8824]
    cond = [SPECIAL.bos] + list(range(100, 100 + prompt_tokens - 5)) + [SPECIAL.separator] + head
    return PromptPlan(get_task("t2i"), ImageLayout(768, 768), cond, head, "benchmark prompt")


def timed(loop, steps: int) -> float:
    loop.rewind()
    t = time.perf_counter()
    for _ in range(steps):
        loop.step()
    return (time.perf_counter() - t) / steps


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--context", type=int, default=1024, help="KV length (prompt + image tokens) to step at")
    p.add_argument("--steps", type=int, default=6, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (medians are reported)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--no-int8", dest="int8", action="store_false", help="skip the int8 row")
    a = p.parse_args(argv)
    dtype = getattr(torch, a.dtype)
    cfg = LuminaConfig(num_hidden_layers=a.layers)  # real vocabulary and width
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = LuminaMGPT(cfg, dtype=dtype).eval().requires_grad_(False)
    with torch.no_grad():
        model.lm_head.weight.mul_(20)  # peaked logits, as a trained model has
    plan = make_plan()
    print(f"model: {a.layers} layers, width {cfg.hidden_size}, vocabulary {cfg.vocab_size}, {a.dtype}; "
          f"built in {time.perf_counter() - t0:.0f} s; {torch.get_num_threads()} threads; "
          f"KV length {a.context}; load average {os.getloadavg()[0]:.1f}", flush=True)
    rows = {}
    with torch.inference_mode():
        loops = {"ours (static cache, batched CFG, image-code head)": Ours(model, plan, a.context),
                 "naive (dynamic cache, separate uncond forward, full vocabulary)": Naive(model, plan, a.context)}
        for loop in loops.values():
            timed(loop, 1)  # warm-up
        for r in range(a.rounds):
            for name, loop in loops.items():
                rows.setdefault(name, []).append(timed(loop, a.steps))
            print(f"round {r + 1}: " + ", ".join(f"{v[-1]:.3f} s" for v in rows.values()), flush=True)
        if a.int8:
            del loops
            quantize_int8_(model, backend="native")
            int8 = Ours(model, plan, a.context)
            timed(int8, 1)
            rows["ours, int8 weights"] = [timed(int8, a.steps) for _ in range(a.rounds)]
    names = list(rows)
    ours, naive = statistics.median(rows[names[0]]), statistics.median(rows[names[1]])
    print()
    print(f"| loop | s / step (median of {a.rounds}x{a.steps}) | steps / s | vs naive |")
    print("|---|---|---|---|")
    for name, vals in rows.items():
        med = statistics.median(vals)
        print(f"| {name} | {med:.3f} | {1 / med:.2f} | {naive / med:.2f}x |")
    print(f"\nratio naive / ours: {naive / ours:.2f}x (target >= 2.5x); total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
