"""The Lumina-mGPT 2.0 transformer: a Chameleon-style decoder (pre-norm RMSNorm, per-head QK LayerNorm,
1D RoPE, SwiGLU, untied lm_head), with parameter names equal to the released checkpoint's keys.

Linear and embedding layers are created through an injectable `operations` namespace (default
`torch.nn`), so a host such as ComfyUI can pass its own ops (weight casting, low-VRAM loading)
without this package importing the host.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import LuminaConfig
from ..memory.kv_cache import KVCache

ATTENTION_BACKENDS = ("sdpa", "flash_attn", "eager", "matmul")


def _on(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Small parameters (norms) follow the activations when a host keeps them elsewhere."""
    if t.device != like.device or t.dtype != like.dtype:
        return t.to(device=like.device, dtype=like.dtype)
    return t


class RMSNorm(nn.Module):
    """RMSNorm computed in float32 and cast back, as the reference does."""

    def __init__(self, dim: int, eps: float, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return _on(self.weight, x) * h.to(x.dtype)


class HeadLayerNorm(nn.Module):
    """LayerNorm over head_dim with gamma/beta stored for `groups` head groups.

    Upstream stores (model_parallel_size, head_dim) and repeats each row over its heads;
    transformers stores (num_heads, head_dim). Both are groups of consecutive heads.
    """

    def __init__(self, groups: int, num_heads: int, head_dim: int, eps: float, device=None, dtype=None):
        super().__init__()
        if num_heads % groups:
            raise ValueError(f"{groups} q/k-norm groups do not divide {num_heads} heads")
        self.groups, self.num_heads, self.eps = groups, num_heads, eps
        self.weight = nn.Parameter(torch.ones(groups, head_dim, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(groups, head_dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, T, heads, head_dim]
        h = F.layer_norm(x, x.shape[-1:], None, None, eps=self.eps)
        w, b = _on(self.weight, x), _on(self.bias, x)
        if self.groups not in (1, self.num_heads):
            rep = self.num_heads // self.groups
            w, b = w.repeat_interleave(rep, 0), b.repeat_interleave(rep, 0)
        return h * w + b


class RotaryTable(nn.Module):
    """cos/sin for every position up to max_position_embeddings, computed once in float32."""

    def __init__(self, head_dim: int, max_positions: int, theta: float, device=None):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        pos = torch.arange(max_positions, dtype=torch.float32)
        freqs = pos[:, None] * inv_freq[None, :]
        emb = torch.cat([freqs, freqs], dim=-1)
        self.register_buffer("cos", emb.cos().to(device), persistent=False)
        self.register_buffer("sin", emb.sin().to(device), persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype):
        """positions [B, T] -> cos, sin [B, 1, T, head_dim] in `dtype`."""
        return (self.cos[positions].unsqueeze(1).to(dtype), self.sin[positions].unsqueeze(1).to(dtype))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + _rotate_half(x) * sin


def _flash_attn_func():
    try:
        from flash_attn import flash_attn_func  # optional dependency, never required
    except ImportError:
        return None
    return flash_attn_func


_bmm_out_dtype_ok: dict = {}


def _bmm_f32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b with float32 output; on CUDA half inputs are read as they are (no float copy of the cache)."""
    if a.is_cuda and a.dtype in (torch.float16, torch.bfloat16):
        if _bmm_out_dtype_ok.get(a.device.type, True):
            try:
                return torch.bmm(a, b, out_dtype=torch.float32)
            except (TypeError, RuntimeError):  # this torch lacks bmm(out_dtype=)
                _bmm_out_dtype_ok[a.device.type] = False
        return torch.bmm(a, b).float()
    return torch.bmm(a.float(), b.float())


def matmul_attention(q, k, v, mask, head_dim: int):
    """Attention as two batched matmuls with a float32 softmax.

    For a few queries over a long cache this is a batched GEMV that streams K and V once; fused
    attention kernels parallelise such shapes only over batch x heads.
    """
    B, H, T, D = q.shape
    S = k.shape[-2]
    if mask is None:
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
    scores = _bmm_f32((q * (1.0 / math.sqrt(head_dim))).reshape(B * H, T, D), k.reshape(B * H, S, D).transpose(1, 2))
    probs = scores.view(B, H, T, S).masked_fill(~mask, float("-inf")).softmax(-1)
    out = torch.bmm(probs.to(v.dtype).view(B * H, T, S), v.reshape(B * H, S, D))
    return out.view(B, H, T, D)


class Attention(nn.Module):
    def __init__(self, cfg: LuminaConfig, operations, device=None, dtype=None):
        super().__init__()
        H, Hkv, D, C = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size
        self.num_heads, self.num_kv_heads, self.head_dim = H, Hkv, D
        kw = dict(bias=cfg.attention_bias, device=device, dtype=dtype)
        self.q_proj = operations.Linear(C, H * D, **kw)
        self.k_proj = operations.Linear(C, Hkv * D, **kw)
        self.v_proj = operations.Linear(C, Hkv * D, **kw)
        self.o_proj = operations.Linear(H * D, C, **kw)
        self.q_norm = HeadLayerNorm(cfg.q_norm_groups, H, D, cfg.qk_norm_eps, device=device, dtype=dtype)
        self.k_norm = HeadLayerNorm(cfg.k_norm_groups, Hkv, D, cfg.qk_norm_eps, device=device, dtype=dtype)
        self.backend = "sdpa"

    def forward(self, x, cos, sin, cache_kv=None, slots=None, kv_len=None, mask=None):
        B, T, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(B, T, self.num_heads, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache_kv is not None and not isinstance(cache_kv, tuple):  # a quantized cache layer (kv_cache.py)
            k, v = cache_kv.update(k, v, slots, kv_len)
        elif cache_kv is not None:
            k_buf, v_buf = cache_kv
            if slots.ndim == 1:
                k_buf.index_copy_(2, slots, k.to(k_buf.dtype))
                v_buf.index_copy_(2, slots, v.to(v_buf.dtype))
            else:  # every row writes at its own slots (per-image speculative windows)
                rows = torch.arange(B, device=slots.device)[:, None]
                k_buf[rows, :, slots] = k.transpose(1, 2).to(k_buf.dtype)
                v_buf[rows, :, slots] = v.transpose(1, 2).to(v_buf.dtype)
            k, v = k_buf[:, :, :kv_len], v_buf[:, :, :kv_len]
        out = self._attend(q, k, v, mask)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim))

    def _attend(self, q, k, v, mask):
        gqa = self.num_kv_heads != self.num_heads
        if self.backend == "flash_attn" and mask is None and q.is_cuda:
            fa = _flash_attn_func()
            if fa is not None and q.dtype in (torch.float16, torch.bfloat16):
                # flash-attn wants [B, T, heads, D]; it handles GQA and the causal mask itself.
                return fa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True).transpose(1, 2)
        if self.backend in ("eager", "matmul") and gqa:
            rep = self.num_heads // self.num_kv_heads
            k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        if self.backend == "matmul":
            return matmul_attention(q, k, v, mask, self.head_dim)
        if self.backend == "eager":
            scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(self.head_dim)
            if mask is None:
                T, S = q.shape[-2], k.shape[-2]
                mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
            scores = scores.masked_fill(~mask, float("-inf"))
            return (scores.softmax(-1) @ v.float()).to(q.dtype)
        if mask is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


class MLP(nn.Module):
    def __init__(self, cfg: LuminaConfig, operations, device=None, dtype=None):
        super().__init__()
        kw = dict(bias=cfg.mlp_bias, device=device, dtype=dtype)
        self.gate_proj = operations.Linear(cfg.hidden_size, cfg.intermediate_size, **kw)
        self.up_proj = operations.Linear(cfg.hidden_size, cfg.intermediate_size, **kw)
        self.down_proj = operations.Linear(cfg.intermediate_size, cfg.hidden_size, **kw)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LuminaConfig, operations, device=None, dtype=None):
        super().__init__()
        self.swin_norm = cfg.swin_norm
        self.self_attn = Attention(cfg, operations, device, dtype)
        self.mlp = MLP(cfg, operations, device, dtype)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, device, dtype)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, device, dtype)

    def forward(self, x, cos, sin, cache_kv=None, slots=None, kv_len=None, mask=None):
        if self.swin_norm:  # Chameleon's alternative: normalise the branch output instead of its input
            x = x + self.input_layernorm(self.self_attn(x, cos, sin, cache_kv, slots, kv_len, mask))
            return x + self.post_attention_layernorm(self.mlp(x))
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache_kv, slots, kv_len, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    """Holds the `model.*` keys of the checkpoint."""

    def __init__(self, cfg: LuminaConfig, operations, device=None, dtype=None):
        super().__init__()
        self.embed_tokens = operations.Embedding(cfg.vocab_size, cfg.hidden_size, device=device, dtype=dtype)
        self.layers = nn.ModuleList(DecoderLayer(cfg, operations, device, dtype)
                                    for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, device, dtype)


def decode_mask(starts: torch.Tensor, slots: torch.Tensor, kv_len: int) -> torch.Tensor:
    """Boolean attention mask [B, 1, T, kv_len] for queries written at `slots` ([T], or [B, T] per row).

    A query sees keys at or before its own slot that belong to its stream (slot >= starts[b]).
    A padding query sees itself, which keeps its (unused) output finite.
    """
    j = torch.arange(kv_len, device=slots.device)
    s = (slots if slots.ndim == 2 else slots[None, :])[..., None]    # [B or 1, T, 1]
    causal = j <= s                                                   # [B or 1, T, S]
    own = (j >= starts[:, None, None]) | (j == s)
    return (causal & own).unsqueeze(1)


def tree_mask(starts: torch.Tensor, slots: torch.Tensor, kv_len: int, ancestors: torch.Tensor) -> torch.Tensor:
    """Boolean attention mask [B, 1, T, kv_len] for a window of T tree nodes written at consecutive `slots`
    [B, T] (slots[b, 0] onwards): a node sees the stream's keys before the window and, inside it, only its
    ancestors and itself (`ancestors` [T, T], row t = the nodes t sees). Siblings and other branches stay
    invisible to each other, so one forward scores every branch as if it were alone."""
    j = torch.arange(kv_len, device=slots.device)
    first = slots[:, :1, None]                                        # [B, 1, 1] the window's first slot
    offset = (j - first).clamp(0, ancestors.shape[1] - 1)             # [B, 1, S] node index of a window slot
    inside = (j >= first) & (j < first + ancestors.shape[1])
    T = ancestors.shape[0]
    seen = ancestors[None].expand(slots.shape[0], -1, -1).gather(2, offset.expand(-1, T, -1))  # [B, T, S]
    sees = torch.where(inside, seen, j < first)
    own = j >= starts[:, None, None]
    return (sees & own).unsqueeze(1)


class LuminaMGPT(nn.Module):
    """Lumina-mGPT 2.0 decoder. `model(input_ids)` returns float32 logits of one causal forward."""

    def __init__(self, config: LuminaConfig, operations=None, device=None, dtype=None):
        super().__init__()
        operations = operations or nn
        self.config = config
        self.model = Backbone(config, operations, device, dtype)
        if config.tie_word_embeddings:
            self.lm_head = None
        else:
            self.lm_head = operations.Linear(config.hidden_size, config.vocab_size, bias=False,
                                             device=device, dtype=dtype)
        self.rotary = RotaryTable(config.head_dim, config.max_position_embeddings, config.rope_theta, device)
        self.tokenizer = None  # set by from_pretrained
        self.special = None

    # ----------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, path: str, dtype=torch.bfloat16, device="cpu", operations=None,
                        attention: str = "sdpa", quantization: str = "none") -> "LuminaMGPT":
        """quantization: "none", "int8" or "int4" (quantized while loading, one layer at a time); a folder
        written by save_quantized loads in its recorded format ("none"/"auto" or that format)."""
        from .checkpoint import load_transformer
        return load_transformer(cls, path, dtype=dtype, device=device, operations=operations, attention=attention,
                                quantization=quantization)

    def set_attention_backend(self, backend: str) -> None:
        if backend not in ATTENTION_BACKENDS:
            raise ValueError(f"attention must be one of {ATTENTION_BACKENDS}, got {backend!r}")
        if backend == "flash_attn" and _flash_attn_func() is None:
            raise ImportError("attention='flash_attn' needs the flash-attn package (pip install flash-attn); "
                              "use attention='sdpa', which needs nothing extra.")
        for layer in self.model.layers:
            layer.self_attn.backend = backend

    # ----------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        return self.model.norm.weight.device

    @property
    def compute_dtype(self) -> torch.dtype:
        w = self.model.layers[0].input_layernorm.weight if len(self.model.layers) else self.model.norm.weight
        return w.dtype

    def head_module(self):
        return self.model.embed_tokens if self.lm_head is None else self.lm_head

    # ----------------------------------------------------------------- forward
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        # the table may sit in host memory (placement.HostEmbedding): rows follow the ids' device
        return self.model.embed_tokens(input_ids).to(device=input_ids.device, dtype=self.compute_dtype)

    def logits(self, hidden: torch.Tensor, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """float32 logits over the whole vocabulary, or over token ids [rows[0], rows[1])."""
        head = self.head_module()
        if rows is None:
            if self.lm_head is None:
                return F.linear(hidden, _on(head.weight, hidden)).float()
            return head(hidden).float()
        if hasattr(head, "forward_rows"):
            return head.forward_rows(hidden, rows[0], rows[1]).float()
        w = head.weight[rows[0]:rows[1]]
        return F.linear(hidden, _on(w, hidden)).float()

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        B, T = input_ids.shape
        if positions is None:
            positions = torch.arange(T, device=input_ids.device).expand(B, T)
        x = self.embed(input_ids)
        cos, sin = self.rotary(positions, x.dtype)
        for layer in self.model.layers:
            x = layer(x, cos, sin)
        return self.logits(self.model.norm(x))

    def forward_step(self, tokens: torch.Tensor, cache: KVCache, slots: torch.Tensor, kv_len: int,
                     rows: tuple[int, int] | None = None, last_only: bool = False, tree=None) -> torch.Tensor:
        """Run `tokens` [B, T] written at cache `slots` ([T], or [B, T] when rows advance separately);
        attend over the first `kv_len` slots (slots past a row's own are masked, so a larger kv_len is exact).
        tree: the window is a token tree (jacobi_tree.DeviceTree: `depth` [T] and `ancestors` [T, T] on this
        device) written at consecutive per-row slots: node t sits at position slots[:, 0] + depth[t] and sees
        only its ancestors (tree_mask), so its output is exactly what its own branch alone would give.

        Returns float32 logits [B, T, n] (n = rows span, or the vocabulary); [B, 1, n] with last_only.
        Graph-friendly: no host sync, shapes depend only on (B, T, kv_len).
        """
        # SJD's padding drafts past the image end can sit past the rotary table: their outputs are never used
        # and nothing attends to them, so any in-range position will do
        if tree is None:
            at = slots if slots.ndim == 2 else slots[None, :]
            mask = decode_mask(cache.starts, slots, kv_len)
        else:
            at = slots[:, :1] + tree.depth[None, :]
            mask = tree_mask(cache.starts, slots, kv_len, tree.ancestors)
        positions = (at - cache.starts[:, None]).clamp_(min=0, max=self.rotary.cos.shape[0] - 1)
        x = self.embed(tokens)
        cos, sin = self.rotary(positions, x.dtype)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, cache.layer(i), slots, kv_len, mask)
        if last_only:
            x = x[:, -1:]
        return self.logits(self.model.norm(x), rows)
