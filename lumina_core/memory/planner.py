"""Memory planner: which weight format, KV-cache format and embedding placement fit a device.

From the config, the image size, batch, guidance, SJD window and the device's free bytes, `plan_memory`
returns the plan with the least quality loss that fits, with its bytes per part, or an InputError
that says what does fit. Nothing is allocated: the counts come from the config (the real 7B config
works on any machine) and mirror what the engine allocates:

- weights: the transformer body's linear layers in the chosen format (quant.py), plus norms and the
  rotary table; head: the lm_head (int8 in the int4 plan: quantize_int4_'s default);
- embeddings: the token table in the compute dtype on the device, or 0 there with "host" (placement.py);
- kv: the KV cache of every stream (kv_cache.py; int8 includes scales, zeros and the read buffers);
- activations: the larger of the prefill chunk's and a decoding step's working set, the code
  logits, the largest dequantised layer (the portable quantized kernels rebuild one layer at a time)
  and a fixed workspace (cuBLAS, allocator rounding; 0 on the CPU).

Quality order (least loss first): bf16 weights before int8 before int4; for each, the bf16 cache
before the int8 cache; for each, embeddings on the device before the host (which loses nothing but
a tiny copy per step).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import InputError
from .kv_cache import KVCache
from .quant import INT4_GROUP, int4_group_size
from ..layout import SIZE_MULTIPLE, ImageLayout

GiB = 1 << 30
DEFAULT_PROMPT_TOKENS = 256   # the t2i template plus a long prompt; real prompts are ~60-200 tokens
DEFAULT_WORKSPACE = 256 << 20
DEFAULT_IMAGE_CODES = 16384
DEFAULT_HEADROOM = 0.05       # of the free bytes, left for allocator fragmentation and rounding
PLAN_ORDER = [(w, kv, emb) for w in ("none", "int8", "int4") for kv in ("bf16", "int8") for emb in ("device", "host")]
PARTS = ("weights", "head", "embeddings", "kv", "activations")


@dataclass(frozen=True)
class Request:
    width: int = 768
    height: int = 768
    batch: int = 1
    guidance: bool = True
    window: int = 1               # SJD window (1: plain decoding)
    prompt_tokens: int = DEFAULT_PROMPT_TOKENS
    prefill_chunk: int = 1024

    @property
    def rows(self) -> int:
        return self.batch * (2 if self.guidance else 1)

    def slots(self) -> int:
        """KV slots the sampler allocates (sampler.Session: prompt + generated + SJD slack, in 64s)."""
        slack = self.window if self.window > 1 else 0
        return -(-(self.prompt_tokens + ImageLayout(self.width, self.height).generated_tokens + slack) // 64) * 64

    def describe(self) -> str:
        extra = (" with guidance" if self.guidance else "") + (f", batch {self.batch}" if self.batch > 1 else "")
        return f"{self.width}x{self.height}{extra}"


@dataclass(frozen=True)
class Plan:
    weights: str                  # none | int8 | int4
    kv_cache: str                 # bf16 | int8
    embeddings: str               # device | host
    parts: dict = field(default_factory=dict)   # part -> bytes on the device
    host_bytes: int = 0           # bytes kept in host memory instead (the embedding table)
    free_bytes: int | None = None

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        w = {"none": "bf16 weights", "int8": "int8 weights", "int4": "int4 weights"}[self.weights]
        kv = "the bf16 cache" if self.kv_cache == "bf16" else "the int8 cache"
        emb = ", embeddings on the CPU" if self.embeddings == "host" else ""
        return f"{w} and {kv}{emb}"

    def summary(self) -> str:
        free = f" of {self.free_bytes / GiB:.1f} GiB free" if self.free_bytes is not None else ""
        parts = ", ".join(f"{k} {v / GiB:.2f}" for k, v in self.parts.items())
        return f"{self.describe()}: {self.total / GiB:.1f} GiB{free} ({parts} GiB)"


def _body_linears(cfg) -> list[tuple[int, int]]:
    """(out, in) of every linear layer of the body."""
    H, Hkv, D, C, inter = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size,
                           cfg.intermediate_size)
    per_layer = [(H * D, C), (Hkv * D, C), (Hkv * D, C), (C, H * D), (inter, C), (inter, C), (C, inter)]
    return per_layer * cfg.num_hidden_layers


def linear_bytes(out_f: int, in_f: int, fmt: str, element: int) -> int:
    if fmt == "none":
        return out_f * in_f * element
    if fmt == "int8":
        return out_f * in_f + out_f * element
    g = int4_group_size(in_f, INT4_GROUP)
    return out_f * in_f // 2 + 2 * out_f * (in_f // g) * element


def estimate(cfg, request: Request, weights: str, kv_cache: str, embeddings: str, dtype=torch.bfloat16,
             num_image_codes: int = DEFAULT_IMAGE_CODES, workspace: int = DEFAULT_WORKSPACE) -> Plan:
    e = torch.tensor([], dtype=dtype).element_size()
    C, inter, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    body = sum(linear_bytes(o, i, weights, e) for o, i in _body_linears(cfg))
    groups = cfg.q_norm_groups + cfg.k_norm_groups
    small = (cfg.num_hidden_layers * (2 * C + 2 * groups * cfg.head_dim) + C) * e
    rotary = 2 * cfg.max_position_embeddings * cfg.head_dim * 4
    head_fmt = "int8" if weights == "int4" else weights
    head = 0 if cfg.tie_word_embeddings else linear_bytes(V, C, head_fmt, e)
    table = V * C * e
    slots = request.slots()
    kv = KVCache.estimate_bytes(cfg, request.rows, slots, dtype, kv_cache)
    # working sets: per token a layer holds x, q, k, v, attention out (~6 C) and the MLP's 3 x inter
    streams = 2 if request.guidance else 1
    chunk = min(request.prompt_tokens, request.prefill_chunk)
    prefill = streams * chunk * (6 * C + 3 * inter) * e + streams * cfg.num_attention_heads * chunk * chunk * 4
    step_tokens = request.rows * request.window
    decode = step_tokens * (6 * C + 3 * inter) * e + step_tokens * cfg.num_attention_heads * slots * 4
    logits = 4 * step_tokens * num_image_codes * 4
    if weights == "none":
        dequant = 0
    else:  # the portable kernels rebuild one layer (or the head's code rows) in the compute dtype
        widest = max(max(o * i for o, i in _body_linears(cfg)) if weights == "int4" else 0, num_image_codes * C)
        dequant = widest * (e + (2 if weights == "int4" else 0))
    parts = {"weights": body + small + rotary, "head": head, "embeddings": table if embeddings == "device" else 0,
             "kv": kv, "activations": max(prefill, decode) + logits + dequant + workspace}
    return Plan(weights, kv_cache, embeddings, parts, host_bytes=table if embeddings == "host" else 0)


def _candidates(weights=None, kv_cache=None, embeddings=None):
    return [p for p in PLAN_ORDER if weights in (None, "auto", p[0]) and kv_cache in (None, "auto", p[1])
            and embeddings in (None, "auto", p[2])]


def smaller_sizes(width: int, height: int):
    """Sizes to suggest when a request does not fit: the same aspect, down to 256 px on the short side."""
    seen = set()
    for f in (5 / 6, 2 / 3, 1 / 2, 1 / 3):
        w = max(SIZE_MULTIPLE, int(width * f) // SIZE_MULTIPLE * SIZE_MULTIPLE)
        h = max(SIZE_MULTIPLE, int(height * f) // SIZE_MULTIPLE * SIZE_MULTIPLE)
        if (w, h) not in seen and (w, h) != (width, height):
            seen.add((w, h))
            yield w, h


def best_plan(cfg, request: Request, free_bytes: int, weights=None, kv_cache=None, embeddings=None,
              **kw) -> Plan | None:
    """The first plan in quality order that fits `free_bytes` (within the given constraints), or None."""
    for w, kv, emb in _candidates(weights, kv_cache, embeddings):
        plan = estimate(cfg, request, w, kv, emb, **kw)
        if plan.total <= free_bytes:
            return Plan(plan.weights, plan.kv_cache, plan.embeddings, plan.parts, plan.host_bytes, free_bytes)
    return None


def plan_memory(cfg, width: int = 768, height: int = 768, free_bytes: int = 24 * GiB, *, batch: int = 1,
                guidance: bool = True, window: int = 1, weights: str | None = None, kv_cache: str | None = None,
                embeddings: str | None = None, dtype=torch.bfloat16, prompt_tokens: int = DEFAULT_PROMPT_TOKENS,
                num_image_codes: int = DEFAULT_IMAGE_CODES, workspace: int = DEFAULT_WORKSPACE,
                headroom: float = DEFAULT_HEADROOM) -> Plan:
    """The plan with the least quality loss that fits in `free_bytes` less `headroom` (a fraction kept
    for fragmentation), or InputError naming what fits.

    weights / kv_cache / embeddings: None or "auto" to let the planner choose, or a fixed choice
    ("none"/"int8"/"int4", "bf16"/"int8", "device"/"host") that the plan must keep."""
    request = Request(width, height, batch, guidance, window, prompt_tokens)
    tokens = prompt_tokens + ImageLayout(width, height).generated_tokens
    if tokens > cfg.max_position_embeddings:
        raise InputError(f"{width}x{height} needs ~{tokens} positions, more than this model's "
                         f"{cfg.max_position_embeddings}: choose a smaller size.")
    kw = dict(dtype=dtype, num_image_codes=num_image_codes, workspace=workspace)
    reported_free = free_bytes
    free_bytes = int(free_bytes * (1 - headroom))
    plan = best_plan(cfg, request, free_bytes, weights, kv_cache, embeddings, **kw)
    if plan is not None:
        return Plan(plan.weights, plan.kv_cache, plan.embeddings, plan.parts, plan.host_bytes, reported_free)
    candidates = _candidates(weights, kv_cache, embeddings)
    if not candidates:
        raise InputError(f"no plan has weights={weights!r}, kv_cache={kv_cache!r}, embeddings={embeddings!r}")
    smallest = estimate(cfg, request, *candidates[-1], **kw)
    asked = (f"{request.describe()}: {'even ' if len(candidates) == len(PLAN_ORDER) else ''}{smallest.describe()} "
             f"need {smallest.total / GiB:.1f} GiB but {reported_free / GiB:.1f} GiB are free")
    anything = best_plan(cfg, request, free_bytes, **kw)
    if anything is not None:  # the fixed choices are what does not fit
        raise InputError(f"{asked}; at {width}x{height} this card needs {anything.describe()} "
                         f"({anything.total / GiB:.1f} GiB): choose those, or auto.")
    for w, h in smaller_sizes(width, height):
        smaller = Request(w, h, batch, guidance, window, prompt_tokens)
        fits = best_plan(cfg, smaller, free_bytes, weights, kv_cache, embeddings, **kw) \
            or best_plan(cfg, smaller, free_bytes, **kw)
        if fits is not None:
            raise InputError(f"{asked}; at {w}x{h} {fits.describe()} fit ({fits.total / GiB:.1f} GiB).")
    raise InputError(f"{asked}, and nothing fits even at a third of this size: free memory on the device "
                     "(close other programs or models) or use a smaller batch.")


def table(cfg, request: Request, **kw) -> list[Plan]:
    """Every plan for a request (for the benchmark and the README's card table)."""
    return [estimate(cfg, request, w, kv, emb, **kw) for w, kv, emb in PLAN_ORDER]


def kv_cache_for(model, width: int, height: int, free_bytes: int, *, batch: int = 1, guidance: bool = True,
                 window: int = 1, prompt_tokens: int = DEFAULT_PROMPT_TOKENS) -> tuple[str, str]:
    """The KV-cache format for one generation with a loaded model ("bf16" or "int8") and a line saying why.

    The model's weight format and embedding placement are fixed by now; free_bytes counts the device's
    free memory plus what the model already holds there. When nothing fits the int8 cache is the
    smaller one; the line then carries the planner's advice."""
    from .placement import embeddings_on_host
    from .quant import weight_format
    special = getattr(getattr(model, "tokenizer", None), "special", None)
    codes = special.num_image_codes if special is not None else DEFAULT_IMAGE_CODES
    try:
        plan = plan_memory(model.config, width, height, free_bytes, batch=batch, guidance=guidance, window=window,
                           weights=weight_format(model), embeddings="host" if embeddings_on_host(model) else "device",
                           dtype=model.compute_dtype, prompt_tokens=prompt_tokens, num_image_codes=codes)
    except InputError as e:
        return "int8", f"{e} Using the int8 cache anyway; the host may keep part of the model in system memory."
    return plan.kv_cache, f"memory plan: {plan.summary()}"


def plan_for_loading(cfg, free_bytes: int, quantization: str = "auto", dtype=torch.bfloat16,
                     width: int = 768, height: int = 768) -> tuple[Plan, str]:
    """The loader's plan for the model's native size (768x768 with guidance, batch 1): weights and embedding
    placement for `quantization` "auto" (or the fixed choice), with a line to log. When nothing fits,
    the smallest plan and the planner's advice."""
    fixed = None if quantization == "auto" else quantization
    try:
        plan = plan_memory(cfg, width, height, free_bytes, weights=fixed, dtype=dtype)
        return plan, f"memory plan for {width}x{height} with guidance: {plan.summary()}"
    except InputError as e:
        smallest = estimate(cfg, Request(width, height), fixed or "int4", "int8", "host", dtype=dtype)
        return smallest, f"{e} Loading with {smallest.describe()}."
