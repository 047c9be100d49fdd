"""Speculative Jacobi decoding (SJD): several image codes per forward, the same distribution as plain sampling.

The decoder's settings and its entry point; the run itself is jacobi.py (a chain of drafts per window, as
upstream) or jacobi_tree.py (several candidates for the next position, each with its own chain: fewer
forwards, still exact).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import InputError
from ..memory.quant import weight_format
from .jacobi import JacobiRun
from .jacobi_tree import DraftTree, TreeJacobiRun, draft_tree
from .logits import SamplingOptions
from .sampler import CancelFn, ProgressFn
from .tasks import PromptPlan
from .window_rule import TREES, auto_tree, token_budget

INITS = ("random", "spatial")
MODES = ("exact", "upstream")


@dataclass(frozen=True)
class SJDecoder:
    """Decoding strategy for `generate(..., decoder=SJDecoder())`.

    window: drafts on the main chain + 1 (the last final token); 16 as upstream. "auto" (the default): the
    whole shape (window, candidates, levels, branch) from the device's rule (window_rule.py): as many tokens
    per forward as ride along with the weight read for free.
    init: "random" (uniform codes) or "spatial" (the code one row above when it is known) for new drafts.
    mode: "exact" (lossless) or "upstream" (upstream's acceptance/resampling, not lossless; chain only).
    forward: optional cached-step function (a fast.py runner); default model.forward_step.
    coupled: re-draft by maximal coupling with the previous draft (lossless, cf. MC-SJD/SCD; ~15% more
    codes per forward than independent re-drafts on the test models) instead of independently.
    graphs: on CUDA, replay the verification math (guidance, acceptance, residual and re-draws: ~100
    small kernels per window) as one CUDA graph; falls back to eager if capture fails.
    candidates, levels: codes tried at each of the next `levels` positions in every window (1: plain SJD): the
    carried draft, then the code to the left, the code above and the carried draft's likeliest alternatives;
    a draft tree (jacobi_tree.py) whose other leaves have `branch` chain drafts after them. A forward then
    feeds `tokens_per_forward` tokens.
    relaxed: LOSSY when > 1: keep a draft when the model gives enough probability to its group of `relaxed`
    similar codes (relaxed.py, after GSD); fewer forwards, but the images are no longer plain sampling's.
    """
    window: int | str = "auto"
    init: str = "random"
    mode: str = "exact"
    forward: object = None
    graphs: bool = False
    coupled: bool = True
    candidates: int = 1
    branch: int = 0
    levels: int = 1
    relaxed: int = 0

    def __post_init__(self):
        if self.init not in INITS:
            raise InputError(f"SJD init must be one of {INITS}, got {self.init!r}")
        if self.mode not in MODES:
            raise InputError(f"SJD mode must be one of {MODES}, got {self.mode!r}")
        if self.relaxed < 0 or self.relaxed == 1:
            raise InputError(f"SJD relaxed must be 0 (exact) or a group size >= 2, got {self.relaxed}")
        if self.candidates < 1:
            raise InputError(f"SJD candidates must be >= 1, got {self.candidates}")
        if self.candidates > 1 and self.mode == "upstream":
            raise InputError("SJD candidates > 1 needs mode 'exact' (upstream's rule has no residual to recurse on)")
        if self.window == "auto":  # the shape comes from the device's rule
            return
        if not isinstance(self.window, int) or isinstance(self.window, bool) or self.window < 2:
            raise InputError(f"SJD window must be 'auto' or >= 2 (1 known token + drafts), got {self.window!r}")
        if self.candidates == 1:  # a plain chain: branch and levels shape a tree only
            return
        if self.window < 3:
            raise InputError(f"an SJD draft tree needs window >= 3 (the known code, a guess, and the codes after "
                             f"it), got window {self.window}: raise the window or set draft_tree to off")
        if not 0 <= self.branch <= self.window - 2:
            raise InputError(f"SJD branch must be between 0 and window - 2 = {self.window - 2}, got {self.branch}")
        if not 1 <= self.levels <= self.window - 2:
            raise InputError(f"SJD levels must be between 1 and window - 2 = {self.window - 2}, got {self.levels}")

    @property
    def tree(self) -> DraftTree | None:
        return draft_tree(self.window, (self.candidates,) * self.levels, self.branch) if self.candidates > 1 else None

    @property
    def tokens_per_forward(self) -> int:
        """Tokens each forward feeds (the most any shape "auto" may pick, before it is resolved)."""
        if self.window == "auto":
            return TREES[-1][0]
        return self.tree.size if self.tree is not None else self.window

    def resolved(self, model, opts: SamplingOptions) -> "SJDecoder":
        """This decoder with window="auto" replaced by the shape the rule picks for `model`'s device."""
        if self.window != "auto":
            return self
        if self.mode == "upstream":  # upstream's rule is a plain chain, as upstream ran it
            return replace(self, window=16, candidates=1)
        budget = token_budget(model.device, weight_format(model), 2 if opts.uses_cfg else 1)
        return replace(self, **{"candidates": 1, "levels": 1, "branch": 0, **auto_tree(budget)})

    def sample(self, model, plan: PromptPlan, special, seeds: list[int], opts: SamplingOptions,
               progress: ProgressFn | None = None, cancel: CancelFn | None = None):
        opts = opts.validated()
        cfg = self.resolved(model, opts)
        run = TreeJacobiRun if cfg.candidates > 1 else JacobiRun
        return run(cfg, model, plan, special, seeds, opts).run(progress, cancel)
