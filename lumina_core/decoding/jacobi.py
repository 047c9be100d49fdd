"""Speculative Jacobi decoding (SJD): several image tokens per forward, same distribution as plain sampling.

Each iteration feeds, per image, a window of L tokens: the last finalised token and L-1 drafts. One
batched-CFG forward gives the target distribution p at the L positions after it. Drafts are checked left
to right: draft x (drawn from q) is kept with probability min(1, p(x)/q(x)); at the first rejection the
position is resampled from norm(max(0, p - q)), which makes every kept token an exact sample of p
(Leviathan et al. / Chen et al. speculative sampling). If every draft is kept, the last output gives
one more exact sample. The KV entries of rejected drafts are simply not counted (the next window
overwrites them; until then the causal mask hides them). The window's other samples, drawn from p
computed on a partly wrong context, become the next drafts with that p as their q (the Jacobi update;
by default each is maximally coupled to the draft it replaces, so it changes only where p moved);
new positions start from a uniform random code, or with init="spatial" from the code one row above
(a deterministic guess, so q is one-hot there).

Row ends are structural: a window may cross them, their "draft" is the row-end token and is always
kept, and they consume no randomness. The final row end and the end-of-image token are never fed.

Batches: every image advances by its own accepted count; rows of the KV cache write at their own slots
(forward_step with per-row slots). A batch therefore costs max over images of their iteration
counts, and finished images ride along as padding until the slowest one ends. In exchange an image's
tokens depend only on its seed (every random draw is keyed by seed, token index and stream, rng.py),
never on its batch mates, so candidate i of a batch can be regenerated alone.

mode="upstream" reproduces upstream's port (not lossless): random drafts count as one-hot (accepted
with probability p(x)), and a rejected position is resampled from p re-truncated, not from the
residual. Combine with top_n_sigma=1 to match its sampling as well.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from . import rng
from ..errors import GenerationCancelled
from .logits import draw, guide, truncate
from .relaxed import code_groups, group_mass
from .sampler import Session, code_logprob, guidance_schedule, pick_codes

log = logging.getLogger(__name__)

@dataclass
class Chain:
    """One window's outputs seen as one chain of drafts per image: guided logits, scores and p at the
    positions after the last final token [B, L, V], the drafts tested there [B, L-1] and the laws they were
    drawn from [B, L-1, V]. cap: how many of them may be kept (int or [B]); past it the outputs were computed on
    another path's context. decided / decided_residual [B, D]: when several candidates competed for each of the
    first D positions (jacobi_tree), whether one was kept there, and the code drawn when none was."""
    guided: torch.Tensor
    scores: torch.Tensor
    p: torch.Tensor
    drafts: torch.Tensor
    q: torch.Tensor
    cap: object
    decided: torch.Tensor | None = None
    decided_residual: torch.Tensor | None = None


def _one_hot(codes: torch.Tensor, n: int) -> torch.Tensor:
    """float one-hot without F.one_hot's value check (a host sync, not allowed in a CUDA graph)."""
    return torch.zeros(*codes.shape, n, device=codes.device).scatter_(-1, codes.unsqueeze(-1), 1.0)


class JacobiRun:
    """One SJD generation: start(), then iterate() until finished() (run() does it all).

    Body positions i = 0..N-1 follow the prompt (row ends included, the final row end excluded);
    `done[b]` of them are final for image b, all but the last one are in the cache (`fed[b]`).
    bench/gpu.py times iterate() at chosen context lengths by setting done/fed.
    """

    def __init__(self, cfg, model, plan, special, seeds, opts):
        self.cfg, self.model, self.special, self.opts = cfg, model, special, opts
        lay = self.layout = plan.layout
        dev = self.dev = model.device
        self.B, self.L, self.w = len(seeds), cfg.window, lay.w_lat
        self.T = self.tokens_per_forward()
        self.N = lay.gen_rows * (self.w + 1) - 1
        self.session = Session(model, plan, self.B, opts.uses_cfg, slack=self.T, forward=cfg.forward)
        self.seed_t = rng.seed_tensor(seeds, dev)
        self.code_rows = special.image_rows
        self.V = special.num_image_codes
        # per-position tables, padded by L so a window near the end can index past N
        i0 = lay.prefix_rows * (self.w + 1)
        absolute = torch.arange(i0, i0 + self.N + self.T, device=dev)
        row, col = absolute // (self.w + 1), absolute % (self.w + 1)
        self.structural = (col == self.w) | (absolute >= i0 + self.N)
        self.counter = row * self.w + col
        schedule = guidance_schedule(opts, lay)
        self.scale = schedule.at(absolute.clamp(max=lay.h_lat * (self.w + 1) - 1)) if schedule.values is not None \
            else opts.cfg
        # body tokens as ids; the condition rows above stay available for the spatial init
        prefix = plan.cond_ids[len(plan.cond_ids) - i0:] if i0 else []
        self.cond_row = (torch.tensor(prefix[-(self.w + 1):-1], device=dev) - special.image_code_start
                         if prefix else None)
        self.tokens = torch.full((self.B, self.N + self.T), special.row_end, dtype=torch.long, device=dev)
        self.groups = code_groups(model, cfg.relaxed) if getattr(cfg, "relaxed", 0) > 1 else None
        self.dtree = None

    def tokens_per_forward(self) -> int:
        """Tokens each window feeds: the last final token and window-1 drafts (a tree run feeds more)."""
        return self.L

    # ----------------------------------------------------------------- helpers
    def _at(self, table, pos):
        """Per-position table entries at body positions pos [B, k] (float scale passes through)."""
        return table[pos] if isinstance(table, torch.Tensor) else table

    def _scores(self, logits, pos):
        """Window logits [rows, L, V] -> guided [B, L, V] and truncated scores [B, L, V]."""
        cond, uncond = self.session.split(logits)
        guided = guide(cond, uncond, self._at(self.scale, pos), self.opts.guidance_top_k)
        return guided, truncate(guided, self.opts)

    def _init_drafts(self, pos, done):
        """Fresh drafts at positions pos [B, k]: (codes, q) with q [B, k, V] the law they were drawn from."""
        B, k = pos.shape
        u = rng.uniform(self.seed_t, self.counter[pos], 1, rng.STREAM_INIT)[..., 0]
        codes = (u * self.V).long().clamp_(max=self.V - 1)                 # uniform over the codes
        one_hot_q = self.cfg.mode == "upstream"  # upstream treats its random drafts as certain
        q = torch.full((B, k, self.V), 1.0 / self.V, device=self.dev)
        if self.cfg.init == "spatial":
            above = pos - (self.w + 1)
            known = (above >= 0) & (above < done[:, None])
            above_codes = self.tokens.gather(1, above.clamp(min=0)) - self.special.image_code_start
            if self.cond_row is not None:  # above the first generated row: the condition's last row
                from_prefix = (above < 0) & (above >= -(self.w + 1))
                above_codes = torch.where(from_prefix, self.cond_row[(above + self.w + 1).clamp(0, self.w - 1)],
                                          above_codes)
                known = known | from_prefix
            known = known & ~self.structural[pos] & ~self.structural[above.clamp(min=0)]
            codes = torch.where(known, above_codes.clamp(0, self.V - 1), codes)
            q = torch.where(known[..., None], _one_hot(codes, self.V), q)
        if one_hot_q:
            q = _one_hot(codes, self.V)
        return codes, q

    def _redraw(self, scores, pos, iteration, old, q_old):
        """Jacobi update: a new draft at every window position, distributed as its current p (which
        becomes its q). coupled: draws at the positions that had a draft (old, drawn from q_old) are
        maximally coupled to it - keep it with probability min(1, p/q_old), else draw from
        norm(max(0, p - q_old)) - so drafts stop changing once the context they depend on settles.
        Still exactly p given everything before the position: the old draft only ever influenced
        later positions (causal attention)."""
        p = scores.softmax(-1)
        if self.opts.greedy:
            return scores.argmax(-1), p
        stream = rng.STREAM_DRAFT + 3 * iteration[:, None]       # three fresh streams per window
        fresh = draw(scores, rng.gumbel(self.seed_t, self.counter[pos], self.V, stream))
        if not self.cfg.coupled or self.cfg.mode == "upstream":
            return fresh, p
        n = old.shape[1]
        at, p_at = pos[:, :n], p[:, :n]
        py, qy = p_at.gather(-1, old[..., None])[..., 0], q_old.gather(-1, old[..., None])[..., 0]
        keep = rng.uniform(self.seed_t, self.counter[at], 1, stream + 1)[..., 0] * qy < py
        resid = (p_at - q_old).clamp(min=0)
        resid = torch.where(resid.sum(-1, keepdim=True) <= 0, p_at, resid)
        moved = draw(resid.log(), rng.gumbel(self.seed_t, self.counter[at], self.V, stream + 2))
        return torch.cat([torch.where(keep, old, moved), fresh[:, n:]], 1), p

    def _accept(self, scores, p, drafts, q, pos):
        """Keep mask [B, L-1] for drafts at positions pos [B, L-1] against the window's p."""
        if self.opts.greedy:
            ok = drafts == scores.argmax(-1)
        else:
            if self.groups is not None:  # lossy: the draft's group of similar codes (relaxed.py)
                px, qx = group_mass(p, self.groups, drafts), group_mass(q, self.groups, drafts)
            else:
                px = p.gather(-1, drafts[..., None])[..., 0]
                qx = q.gather(-1, drafts[..., None])[..., 0]
            u = rng.uniform(self.seed_t, self.counter[pos], 1, rng.STREAM_ACCEPT)[..., 0]
            ok = u * qx < px          # u < p/q without dividing by a tiny q
        return ok | self.structural[pos]

    def _correct(self, scores, p, q, pos, rejected):
        """The token at the first unkept position: residual sample after a rejection, else a fresh
        sample of p (all drafts kept). scores/p/q: [B, V] at that position; pos: [B]."""
        if self.opts.greedy:
            return scores.argmax(-1)
        fresh = draw(scores, rng.gumbel(self.seed_t, self.counter[pos], self.V, rng.STREAM_SAMPLE))
        if self.cfg.mode == "upstream":
            resid_scores = truncate(p.log(), self.opts)
        else:
            resid = (p - q).clamp(min=0)
            empty = resid.sum(-1, keepdim=True) <= 0          # p == q: nothing to correct, sample p
            resid_scores = torch.where(empty, p, resid).log()
        resampled = draw(resid_scores, rng.gumbel(self.seed_t, self.counter[pos], self.V, rng.STREAM_RESIDUAL))
        return torch.where(rejected, resampled, fresh)

    def _window(self):
        """The next window's tokens and slots [rows, L]: the last final token, then the drafts; row b
        writes at base + fed[b] + 0..L-1."""
        sp = self.special
        draft_pos = self.done[:, None] + self.ar[:-1]
        draft_ids = torch.where(self.structural[draft_pos], sp.row_end, self.drafts + sp.image_code_start)
        tokens = torch.cat([self.tokens.gather(1, (self.done - 1)[:, None]), draft_ids], 1)
        slots = self.base + self.fed[:, None] + self.ar
        if self.session.use_cfg:
            tokens, slots = torch.cat([tokens, tokens]), torch.cat([slots, slots])
        return tokens, slots

    def _forward(self, tokens, slots):
        """One batched-CFG window forward."""
        s = self.session
        kv_len = self.base + int(self.fed_max) + self.T
        s.cache.length = kv_len
        s.stats.forwards += 1
        extra = {} if self.dtree is None else {"tree": self.dtree}  # a draft tree's window (jacobi_tree.py)
        return s.forward(tokens, s.cache, slots, kv_len=kv_len, rows=self.code_rows, **extra)

    # ----------------------------------------------------------------- loop
    def start(self) -> None:
        """Prefill, draw the first code from the prompt's logits (as the plain sampler does), make drafts."""
        B, dev = self.B, self.dev
        self.ar = torch.arange(self.L, device=dev)
        self.logprob = torch.zeros(B, device=dev)
        self.iters = torch.zeros(B, dtype=torch.long, device=dev)   # windows run per image
        logits = self.session.prefill(self.code_rows)
        self.base = self.session.cache.length
        counter0 = self.counter[torch.zeros(B, dtype=torch.long, device=dev)]
        first, lp = pick_codes(logits, self.session, self.opts, self._at(self.scale, 0), self.seed_t, counter0)
        self.tokens[:, 0] = first + self.special.image_code_start
        self.logprob += lp
        self.done = torch.ones(B, dtype=torch.long, device=dev)    # final positions per image
        self.fed = torch.zeros(B, dtype=torch.long, device=dev)    # of which in the cache (done - 1)
        self.drafts, self.q = self._init_drafts(self.done[:, None] + self.ar[:-1], self.done)
        self.done_host = [1] * B
        self.codes_per_forward = torch.zeros(self.T + 1, dtype=torch.long, device=dev)  # forwards by codes gained
        self.use_graph = self.cfg.graphs and dev.type == "cuda"
        self._graph, self._logits_buf = None, None

    def finished(self) -> bool:
        return min(self.done_host) >= self.N

    def iterate(self) -> None:
        """One window per image: forward, then verify, correct, roll forward and re-draft (_advance)."""
        self.fed_max = max(self.done_host) - 1
        logits = self._forward(*self._window())
        self._advance_step(logits)
        self.done_host = self.done.tolist()

    def _advance_step(self, logits) -> None:
        """_advance, replayed from a CUDA graph when enabled (captured on the second window: the first
        runs eagerly and warms everything up; the state tensors are updated in place, so the graph
        always reads and writes the live state)."""
        if not self.use_graph:
            return self._advance(logits)
        if self._graph is None and self._logits_buf is None:
            self._logits_buf = logits.clone()
            return self._advance(logits)
        try:
            if self._graph is None:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    self._advance(self._logits_buf)
                self._graph = graph
            self._logits_buf.copy_(logits)
            self._graph.replay()
        except RuntimeError as e:  # capture failed: stay eager for the rest of this generation
            log.warning("SJD verification graph disabled (%s); continuing eagerly", e)
            self.use_graph, self._graph = False, None
            self._advance(logits)

    def _advance(self, logits) -> None:
        self._settle(self._chain(logits))

    def _chain(self, logits) -> "Chain":
        """The window's outputs as one chain of drafts per image (a plain window is one already)."""
        out_pos = self.done[:, None] + self.ar
        guided, scores = self._scores(logits, out_pos)
        return Chain(guided, scores, scores.softmax(-1), self.drafts, self.q, cap=self.L - 1)

    def _settle(self, c: "Chain") -> None:
        """Accept along the chain, draw the token after the kept drafts, write them, and re-draft."""
        B, L, N, ar, sp = self.B, self.L, self.N, self.ar, self.special
        arB = torch.arange(B, device=self.dev)
        done, fed = self.done, self.fed
        active = done < N
        draft_pos = done[:, None] + ar[:-1]                                          # [B, L-1]
        draft_ids = torch.where(self.structural[draft_pos], sp.row_end, c.drafts + sp.image_code_start)
        out_pos = done[:, None] + ar                                                 # [B, L]
        guided, scores, p = c.guided, c.scores, c.p
        keep = self._accept(scores[:, :-1], p[:, :-1], c.drafts, c.q, draft_pos) & (draft_pos < N)
        if c.decided is not None:  # the first positions were decided among several candidates (jacobi_tree)
            D = c.decided.shape[1]
            keep[:, :D] = c.decided & (draft_pos[:, :D] < N)
        keep &= ar[:-1] < (c.cap if isinstance(c.cap, int) else c.cap[:, None])  # outputs past a branch are stale
        k = keep.long().cumprod(1).sum(1)                                            # kept drafts
        # the token after the kept drafts: residual sample after a rejection, a fresh one when the drafts ran out
        kq = torch.cat([c.q, c.q[:, :1]], 1)[arB, k]                                 # unused when k = cap
        new = self._correct(scores[arB, k], p[arB, k], kq, out_pos[arB, k], k < c.cap)
        if c.decided is not None:  # every candidate of that position was rejected: their joint residual's sample
            D = c.decided.shape[1]
            new = torch.where(k < D, c.decided_residual.gather(1, k.clamp(max=D - 1)[:, None])[:, 0], new)
        new_ids = torch.where(self.structural[out_pos[arB, k]], sp.row_end, new + sp.image_code_start)
        has_new = active & (done + k < N)
        # write the kept drafts and the new token; add their guided log-probs (their context is final)
        final = (ar <= k[:, None]) & (ar < (k + has_new.long())[:, None]) & active[:, None]
        window_ids = torch.where(ar == k[:, None], new_ids[:, None], torch.cat([draft_ids, new_ids[:, None]], 1))
        write_pos = torch.where(final, out_pos, self.tokens.shape[1] - 1)           # last column: scratch
        self.tokens.scatter_(1, write_pos, torch.where(final, window_ids, sp.row_end))
        is_code = final & ~self.structural[out_pos]
        code_ids = (window_ids - sp.image_code_start).clamp(0, self.V - 1)
        # where, not a product: a non-final slot may hold a code that guidance_top_k set to -inf (-inf * 0 = nan)
        self.logprob += torch.where(is_code, code_logprob(guided, code_ids), 0.0).sum(1)
        self.codes_per_forward.index_add_(0, is_code.sum(1), active.long())         # the histogram in the stats
        self._keep_cache(k, active)
        # advance (in place); the window's other samples become the next drafts (Jacobi update)
        fed.copy_(torch.where(active, fed + 1 + k, fed))
        self.iters += active.long()
        redrawn, p_now = self._redraw(scores, out_pos, self.iters, self.drafts, self.q)
        done.add_(torch.where(active, k + has_new.long(), 0))
        nxt = done[:, None] + ar[:-1]                                                # next draft positions
        src = nxt - out_pos[:, :1]                                                   # their window output index
        carried = src <= L - 1
        src = src.clamp(max=L - 1)
        fresh_codes, fresh_q = self._init_drafts(nxt.clamp(max=N + self.T - 1), done)
        self.drafts.copy_(torch.where(carried, redrawn.gather(1, src), fresh_codes))
        self.q.copy_(torch.where(carried[..., None], p_now.gather(1, src[..., None].expand(-1, -1, self.V)), fresh_q))

    def _keep_cache(self, kept: torch.Tensor, active: torch.Tensor) -> None:
        """The kept drafts' keys and values must sit right after the last final token's: in a plain window they
        do already (a tree moves a side branch's there)."""

    def run(self, progress, cancel):
        t0 = time.perf_counter()
        with torch.inference_mode():
            self.start()
            reported = 0
            while not self.finished():
                self.iterate()
                reported = self._report(progress, cancel, min(self.done_host), reported)
        stats = self.session.stats
        stats.image_tokens = self.layout.gen_rows * self.w
        stats.logprob = self.logprob
        stats.seconds = time.perf_counter() - t0
        stats.extra["image_forwards"] = self.iters.tolist()
        stats.extra["window"] = self.L
        stats.extra["tokens_per_forward"] = self.T
        hist = self.codes_per_forward.tolist()
        stats.extra["codes_per_forward_hist"] = hist[: max(i for i, n in enumerate(hist) if n or i == 0) + 1]
        return self._codes(), stats

    def _codes(self):
        body = self.tokens[:, : self.N + 1].clone()
        body[:, self.N] = self.special.row_end
        return body.view(self.B, self.layout.gen_rows, self.w + 1)[..., : self.w] - self.special.image_code_start

    def _report(self, progress, cancel, min_done, reported):
        rows = min(self.layout.gen_rows, (min_done + 1) // (self.w + 1))
        if rows == reported:
            return reported
        if progress is not None:
            progress(rows, self.layout.gen_rows, self._codes()[:, :rows])
        if cancel is not None and cancel():
            raise GenerationCancelled(f"stopped after {rows} of {self.layout.gen_rows} rows")
        return rows
