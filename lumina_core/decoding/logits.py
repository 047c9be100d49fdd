"""Sampling options and the logits pipeline: guidance, truncation, temperature, categorical draw.

Order (as upstream's processors and transformers' warpers): CFG -> top-k -> top-n-sigma ->
temperature -> top-p -> draw. All of it runs on image-code logits only; structural tokens
(row end, end of image) are placed by the sampler, never sampled.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from ..errors import InputError

NEG_INF = float("-inf")
CFG_MODES = ("plain", "upstream")


@dataclass(frozen=True)
class SamplingOptions:
    cfg: float = 4.0             # guidance scale; 1 disables the unconditional stream entirely
    top_k: int = 4096            # 0 = no top-k
    top_p: float = 1.0           # 1 = no nucleus truncation
    temperature: float = 1.0     # 0 = greedy
    top_n_sigma: float = 0.0     # 0 = off; upstream's SJD path uses 1
    cfg_mode: str = "plain"      # "upstream": reproduce upstream's max(4, decaying) guidance schedule
    guidance_top_k: int = 0      # >0: guidance only re-ranks the conditional top-k (off = upstream behaviour)

    def validated(self) -> "SamplingOptions":
        for name in ("cfg", "top_p", "temperature", "top_n_sigma"):  # NaN passes every comparison below
            if not math.isfinite(getattr(self, name)):
                raise InputError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.cfg_mode not in CFG_MODES:
            raise InputError(f"cfg_mode must be one of {CFG_MODES}, got {self.cfg_mode!r}")
        if self.cfg < 0:
            raise InputError(f"cfg must be >= 0 (1 = no guidance), got {self.cfg}")
        if self.top_k < 0:
            raise InputError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.temperature < 0:
            raise InputError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_n_sigma < 0:
            raise InputError(f"top_n_sigma must be >= 0 (0 = off), got {self.top_n_sigma}")
        if self.guidance_top_k < 0:
            raise InputError(f"guidance_top_k must be >= 0, got {self.guidance_top_k}")
        return self

    @property
    def greedy(self) -> bool:
        return self.top_k == 1 or self.temperature == 0

    @property
    def uses_cfg(self) -> bool:
        return self.cfg != 1.0

    def with_(self, **kw) -> "SamplingOptions":
        return replace(self, **kw)


class GuidanceSchedule:
    """Guidance scale per body position (token index after the grid tokens, row ends included)."""

    def __init__(self, opts: SamplingOptions, h_grid: int, w_grid: int, total_body: int):
        self.opts = opts
        self.values = None
        if opts.cfg_mode == "upstream" and opts.uses_cfg:
            # Upstream mutates its scale every step: g = max(4, g * (1 - n / (2*h_grid * 2*w_grid))),
            # n = tokens after the image start (grid tokens included). So 1 < cfg < 4 becomes 4 at once.
            denom = (2 * h_grid) * (2 * w_grid)
            g, vals = opts.cfg, []
            for i in range(total_body):
                g = max(4.0, g * (1 - (i + 2) / denom))
                vals.append(g)
            self.values = torch.tensor(vals, dtype=torch.float32)

    def at(self, body_index):
        """Scale for one body index (int) or several (LongTensor)."""
        if self.values is None:
            return self.opts.cfg
        if isinstance(body_index, int):
            return float(self.values[body_index])
        return self.values.to(body_index.device)[body_index]


def guide(cond: torch.Tensor, uncond: torch.Tensor | None, scale, guidance_top_k: int = 0) -> torch.Tensor:
    """Classifier-free guidance on raw logits: u + g * (c - u)."""
    if uncond is None:
        return cond
    if isinstance(scale, torch.Tensor):
        scale = scale.view(*scale.shape, *([1] * (cond.ndim - scale.ndim)))
    out = uncond + scale * (cond - uncond)
    if guidance_top_k:
        keep = _topk_keep(cond, guidance_top_k)
        out = out.masked_fill(~keep, NEG_INF)
    return out


def _topk_keep(logits: torch.Tensor, k: int) -> torch.Tensor:
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits >= kth  # ties at the threshold are kept, as transformers does


def truncate(logits: torch.Tensor, opts: SamplingOptions) -> torch.Tensor:
    """Apply top-k, top-n-sigma, temperature and top-p; removed entries become -inf."""
    if opts.top_k and opts.top_k < logits.shape[-1]:
        logits = logits.masked_fill(~_topk_keep(logits, opts.top_k), NEG_INF)
    if opts.top_n_sigma:
        finite = torch.isfinite(logits)
        count = finite.sum(-1, keepdim=True).clamp(min=2)
        vals = torch.where(finite, logits, torch.zeros_like(logits))
        mean = vals.sum(-1, keepdim=True) / count
        var = torch.where(finite, (logits - mean) ** 2, torch.zeros_like(logits)).sum(-1, keepdim=True) / (count - 1)
        top = logits.max(-1, keepdim=True).values
        logits = logits.masked_fill(logits < top - opts.top_n_sigma * var.sqrt(), NEG_INF)
    if opts.temperature and opts.temperature != 1.0:
        logits = logits / opts.temperature
    if opts.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        remove_sorted = cum <= (1 - opts.top_p)
        remove_sorted[..., -1] = False
        remove = remove_sorted.scatter(-1, order, remove_sorted)
        logits = logits.masked_fill(remove, NEG_INF)
    return logits


def draw(logits: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
    """Categorical sample by Gumbel-max (`noise` = Gumbel noise of the same shape); greedy if noise is None."""
    if noise is None:
        return logits.argmax(-1)
    return (logits + noise).argmax(-1)
