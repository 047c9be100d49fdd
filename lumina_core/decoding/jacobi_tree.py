"""Speculative Jacobi decoding with a draft tree: several candidates for the next positions, still exact.

Half of a plain SJD window's forwards keep only one code: the first draft, made on a context that has since
changed, is rejected, and nothing after it can be checked. Here a window is a tree. Its first `levels`
positions branch: every node there has `widths[d]` children, the carried Jacobi draft first, then other
candidates; after the branching levels each leaf has a chain of carried drafts (the all-first path's chain
is the main one, `window - 1` drafts long like plain SJD's; the others are `branch` long). A tree attention
mask lets each node see only its ancestors (model.transformer.tree_mask), so every path is scored in one
forward as if it were alone.

Each branching level is decided by recursive rejection sampling over the children in order (SpecInfer,
SpecTr; Jeon et al. 2024 for drafts chosen adaptively): child j, drawn from q_j, is kept with probability
min(1, r(x_j) / q_j(x_j)), where r is what is left of the target p after the children before it were
rejected, r <- norm(max(0, r - q_j)); if none is kept the code is drawn from the last r. Each step is one
speculative-sampling step, whose output is exactly its target, so the kept code is exactly p's sample given
the path above it. The carried draft is drawn from its q; the other candidates are deterministic given what
is known before the forward (one-hot q): the parent's code (the code to the left), the code above, then the
carried q's likeliest codes, all distinct. After the levels the chosen leaf's chain is checked as plain SJD
does. Outputs of the main chain past another path were computed on another context: they never accept a
code, and serve only as the next drafts' q (any law known before the next forward is allowed). A kept
path's keys and values are moved to the slots right after the root, where the next window expects them.

Randomness stays keyed by (seed, position, stream): the other candidates' tests use their own stream, so an
image still depends only on its seed, never on its batch mates or the tree's shape.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import torch

from . import rng
from .jacobi import Chain, JacobiRun
from .logits import draw


@dataclass(frozen=True)
class DraftTree:
    """The shape of one window: `window - 1` drafts on the main path, candidates per branching level
    (`widths`, the carried draft counted), `branch` chain drafts after every other leaf."""
    window: int
    widths: tuple
    branch: int
    _built: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def levels(self) -> int:
        return len(self.widths)

    def nodes(self):
        """(parent, depth, alternative index or -1 for a carried draft) per node, in slot order: the root and the
        main path first (nodes 0..window-1, node d at depth d: keeping it moves nothing), then the rest level
        by level, then the other leaves' chains."""
        if "nodes" not in self._built:
            main = self.window  # nodes below this index are the root and the main path
            nodes = [(-1, 0, -1)] + [(d - 1, d, -1) for d in range(1, main)]
            frontier = [0]
            for d, width in enumerate(self.widths, start=1):
                nxt = []
                for parent in frontier:
                    if parent < main:          # the main path's carried child exists already
                        carried = d
                    else:
                        nodes.append((parent, d, -1))
                        carried = len(nodes) - 1
                    nxt.append(carried)
                    for j in range(width - 1):
                        nodes.append((parent, d, j))
                        nxt.append(len(nodes) - 1)
                frontier = nxt
            for leaf in frontier:
                parent = leaf
                for i in range(self.branch if leaf >= main else 0):
                    nodes.append((parent, self.levels + 1 + i, -1))
                    parent = len(nodes) - 1
            self._built["nodes"] = nodes
        return self._built["nodes"]

    @property
    def size(self) -> int:
        """Tokens per forward."""
        return len(self.nodes())

    def on(self, device) -> "DeviceTree":
        """The tree's index tensors on `device`, built once (the CUDA-graph step keys on this object)."""
        key = str(device)
        if key not in self._built:
            nodes = self.nodes()
            T = len(nodes)
            kmax = max(self.widths + (1,))
            children = [[] for _ in range(T)]
            for n, (parent, _, _) in enumerate(nodes):
                if parent >= 0:
                    children[parent].append(n)
            seen = [[False] * T for _ in range(T)]
            for n in range(T):
                a = n
                while a >= 0:
                    seen[n][a] = True
                    a = nodes[a][0]
            chain_len, chain_first = [0] * T, [0] * T  # a node's single-child chain below it: length, first node
            for n in reversed(range(T)):
                if len(children[n]) == 1:
                    chain_len[n] = 1 + chain_len[children[n][0]]
                    chain_first[n] = children[n][0]
            self._built[key] = DeviceTree(
                depth=torch.tensor([d for _, d, _ in nodes], device=device),
                ancestors=torch.tensor(seen, dtype=torch.bool, device=device),
                children=torch.tensor([c + [-1] * (kmax - len(c)) for c in children], device=device),
                chain_len=torch.tensor(chain_len, device=device),
                chain_first=torch.tensor(chain_first, device=device))
        return self._built[key]


@lru_cache(maxsize=None)
def draft_tree(window: int, widths: tuple, branch: int) -> DraftTree:
    """One DraftTree object per shape, so its device tensors (and the CUDA graphs keyed on them) are reused."""
    return DraftTree(window, widths, branch)


@dataclass(eq=False)
class DeviceTree:
    """A tree's tensors on one device: depth [T] and ancestors [T, T] (what LuminaMGPT.forward_step(tree=)
    reads), children [T, k] (-1 padded; the carried draft first), and a leaf's chain below it: its length and
    first node (the chain's nodes are consecutive)."""
    depth: torch.Tensor
    ancestors: torch.Tensor
    children: torch.Tensor
    chain_len: torch.Tensor
    chain_first: torch.Tensor


def frontier_candidates(q1: torch.Tensor, x1: torch.Tensor, left: torch.Tensor, above: torch.Tensor,
                        count: int) -> torch.Tensor:
    """`count` distinct codes per image [B, count], none equal to the carried draft x1: the code to the left,
    the code above, then q1's most likely codes (-1 where there was none, e.g. no left neighbour)."""
    B = q1.shape[0]
    sources = torch.cat([left[:, None], above[:, None], q1.topk(min(count + 2, q1.shape[-1]), -1).indices], 1)
    picked = torch.full((B, count), -1, dtype=torch.long, device=q1.device)
    n = torch.zeros(B, dtype=torch.long, device=q1.device)
    for s in range(sources.shape[1]):
        cand = sources[:, s]
        fresh = (cand >= 0) & (cand != x1) & ~(picked == cand[:, None]).any(1) & (n < count)
        col = n.clamp(max=count - 1)[:, None]
        picked.scatter_(1, col, torch.where(fresh[:, None], cand[:, None], picked.gather(1, col)))
        n += fresh.long()
    return picked


def recursive_rejection(p: torch.Tensor, x1: torch.Tensor, q1: torch.Tensor, others: torch.Tensor,
                        u1: torch.Tensor, u_others: torch.Tensor, residual_noise: torch.Tensor | None):
    """Decide one position among candidates: x1 drawn from q1, then `others` [B, K-1] with one-hot laws (-1:
    no candidate). p [B, V] the target. Returns (index of the kept candidate [B] (0 = x1, K = none), the code
    drawn from what is left when none is kept [B]). residual_noise None: greedy (p is one-hot)."""
    B, K = x1.shape[0], others.shape[1] + 1
    chosen = torch.full((B,), K, dtype=torch.long, device=p.device)
    # x1 ~ q1: kept with probability min(1, p/q1); what is left is norm(max(0, p - q1))
    px, qx = p.gather(-1, x1[:, None])[:, 0], q1.gather(-1, x1[:, None])[:, 0]
    chosen = torch.where(u1 * qx < px, 0, chosen)
    r = (p - q1).clamp(min=0)
    r = torch.where(r.sum(-1, keepdim=True) <= 0, p, r)  # p == q1: nothing left to correct (x1 was kept)
    r = r / r.sum(-1, keepdim=True)
    for j in range(K - 1):
        x = others[:, j]
        valid = x >= 0
        rx = r.gather(-1, x.clamp(min=0)[:, None])[:, 0]
        chosen = torch.where((chosen == K) & valid & (u_others[:, j] < rx), j + 1, chosen)
        # one-hot law: what is left is r without x
        r = torch.where(valid[:, None], r.scatter(-1, x.clamp(min=0)[:, None], 0.0), r)
        r = r / r.sum(-1, keepdim=True).clamp(min=1e-30)
    if residual_noise is None:
        return chosen, p.argmax(-1)
    return chosen, draw(r.log(), residual_noise)


class TreeJacobiRun(JacobiRun):
    """SJD whose windows are DraftTree-shaped (see the module docstring)."""

    def __init__(self, cfg, model, plan, special, seeds, opts):
        self.tree = cfg.tree
        super().__init__(cfg, model, plan, special, seeds, opts)
        self.dtree = self.tree.on(self.dev)
        self.node_tokens = torch.zeros(self.B, self.tree.size, dtype=torch.long, device=self.dev)
        # alternatives per branching node: (node, its alternative children) as index tensors, built here and not
        # per window (a tensor made from a list inside the verification graph would copy while it is captured)
        nodes = self.tree.nodes()
        self.sibling_groups = []
        for parent in sorted({p for p, _, j in nodes if j >= 0}):
            alts = [n for n, (p, _, j) in enumerate(nodes) if p == parent and j >= 0]
            carried = next(n for n, (p, _, j) in enumerate(nodes) if p == parent and j < 0)
            self.sibling_groups.append((parent, nodes[carried][1], torch.tensor(alts, device=self.dev)))
        self.carried_nodes = torch.tensor([n for n, (_, _, j) in enumerate(nodes) if j < 0 and n > 0],
                                          device=self.dev)

    def tokens_per_forward(self) -> int:
        return self.tree.size

    def start(self) -> None:
        super().start()
        self._plan_tree()

    # ----------------------------------------------------------------- drafting
    def _code(self, pos):
        """The final code at body positions pos [B] (-1 for row ends and positions before the image)."""
        sp, w = self.special, self.w
        rows = torch.arange(self.B, device=self.dev)
        ok = (pos >= 0) & ~self.structural[pos.clamp(min=0)]
        code = torch.where(ok, self.tokens[rows, pos.clamp(min=0)] - sp.image_code_start, -1)
        if self.cond_row is not None:  # above the first generated row: the condition's (or kept image's) last row
            from_prefix = (pos < 0) & (pos >= -(w + 1)) & (pos != -1)
            code = torch.where(from_prefix, self.cond_row[(pos + w + 1).clamp(0, w - 1)], code)
        return code

    def _plan_tree(self) -> None:
        """Every node's token for the next window: carried drafts at their depth, and at the branching levels
        the other candidates of each parent (from its code, the code above and the carried q)."""
        done = self.done
        depth = self.dtree.depth
        carried = self.carried_nodes
        self.node_tokens[:, carried] = self.drafts[:, depth[carried] - 1]
        for parent, d, alts in self.sibling_groups:
            pos = done + d - 1
            parent_code = self._code(done - 1) if parent == 0 else self.node_tokens[:, parent]
            at_row_end = self.structural[pos]
            picked = frontier_candidates(self.q[:, d - 1], self.drafts[:, d - 1],
                                         torch.where(at_row_end, -1, parent_code),
                                         self._code(pos - (self.w + 1)), len(alts))
            self.node_tokens[:, alts] = torch.where(at_row_end[:, None], -1, picked)

    def _window(self):
        tokens, slots = super()._window()       # the root + main path, [rows, window]
        sp = self.special
        depth = self.dtree.depth[self.tree.window:]
        pos = self.done[:, None] + depth - 1
        extra = torch.where(self.structural[pos] | (self.node_tokens[:, self.tree.window:] < 0), sp.row_end,
                            self.node_tokens[:, self.tree.window:] + sp.image_code_start)
        if self.session.use_cfg:
            extra = torch.cat([extra, extra])
        slots = slots[:, :1] + torch.arange(self.tree.size, device=self.dev)
        return torch.cat([tokens, extra], 1), slots

    # ----------------------------------------------------------------- verification
    def _output(self, logits, node):
        """Logits [rows, 1, V] of each image's node [B] (its cond and uncond streams)."""
        rows = torch.cat([node, node]) if self.session.use_cfg else node
        return logits.gather(1, rows[:, None, None].expand(-1, 1, logits.shape[-1]))

    def _chain(self, logits) -> Chain:
        t, L, done = self.tree, self.L, self.done
        children = self.dtree.children
        node = torch.zeros(self.B, dtype=torch.long, device=self.dev)   # the root
        path, kept, residual = [], [], []
        for d, width in enumerate(t.widths, start=1):
            pos = done + d - 1
            _, scores = self._scores(self._output(logits, node), pos[:, None])
            kids = children[node][:, :width]                                  # carried draft first
            others = torch.where(self.structural[pos][:, None], -1, self.node_tokens.gather(1, kids[:, 1:]))
            counter = self.counter[pos]
            u1 = rng.uniform(self.seed_t, counter, 1, rng.STREAM_ACCEPT)[..., 0]
            u_others = rng.uniform(self.seed_t, counter, width - 1, rng.STREAM_CANDIDATE)
            noise = None if self.opts.greedy else rng.gumbel(self.seed_t, counter, self.V, rng.STREAM_RESIDUAL)
            chosen, drawn = recursive_rejection(scores.softmax(-1)[:, 0], self.node_tokens.gather(1, kids[:, :1])[:, 0],
                                                self.q[:, d - 1], others, u1, u_others, noise)
            chosen = torch.where(self.structural[pos], 0, chosen)            # a row end is certain
            ok = chosen < width
            node = torch.where(ok, kids.gather(1, chosen.clamp(max=width - 1)[:, None])[:, 0], node)
            path.append(node)
            kept.append(ok)
            residual.append(drawn)
        # the chain view: the root and the chosen nodes, then the leaf's chain, then (stale, for re-drafting
        # only) the main path's outputs at the deeper positions
        ar = torch.arange(L, device=self.dev)
        leaf = node
        m = ar - t.levels                                                     # depth below the leaf
        chain = self.dtree.chain_first[leaf][:, None] + m - 1                # a leaf's chain nodes are consecutive
        on_chain = (m >= 1) & (m <= self.dtree.chain_len[leaf][:, None])
        reached = torch.stack(kept, 1).long().cumprod(1).bool()              # the path holds up to there
        chosen = torch.where(reached, torch.stack(path, 1), torch.arange(1, t.levels + 1, device=self.dev))
        levels = torch.cat([torch.zeros_like(leaf)[:, None], chosen], 1).gather(1, ar.clamp(max=t.levels).expand(self.B, -1))
        out_nodes = torch.where(m <= 0, levels, torch.where(on_chain, chain, ar))
        self.out_nodes = out_nodes
        rows = torch.cat([out_nodes, out_nodes]) if self.session.use_cfg else out_nodes
        chain_logits = logits.gather(1, rows[..., None].expand(-1, -1, logits.shape[-1]))
        guided, scores = self._scores(chain_logits, done[:, None] + ar)
        drafts = torch.cat([self.node_tokens.gather(1, out_nodes[:, 1:t.levels + 1]).clamp(min=0),
                            self.drafts[:, t.levels:]], 1)
        cap = t.levels + self.dtree.chain_len[leaf]
        return Chain(guided, scores, scores.softmax(-1), drafts, self.q, cap=cap,
                     decided=torch.stack(kept, 1), decided_residual=torch.stack(residual, 1))

    def _keep_cache(self, kept: torch.Tensor, active: torch.Tensor) -> None:
        """The kept path's keys and values go right after the root (the main path is there already)."""
        i = torch.arange(self.L - 1, device=self.dev)
        root = (self.base + self.fed)[:, None]
        dst = root + 1 + i
        src = torch.where(active[:, None] & (i < kept[:, None]), root + self.out_nodes[:, 1:], dst)
        if self.session.use_cfg:
            src, dst = torch.cat([src, src]), torch.cat([dst, dst])
        rows = torch.arange(src.shape[0], device=self.dev)[:, None]
        for buf in self.session.cache.tensors():
            buf[rows, :, dst] = buf[rows, :, src]

    def _settle(self, c: Chain) -> None:
        super()._settle(c)
        self._plan_tree()
