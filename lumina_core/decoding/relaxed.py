"""Relaxed acceptance for SJD (LOSSY, off by default): a draft counts as right when the model gives enough
probability to its neighbourhood of similar codes, not to the code itself (after GSD, Grouped Speculative
Decoding, ICCV 2025, which groups codes by the image tokenizer's codebook; here the groups come from the
transformer's own embeddings of the codes, which every checkpoint has). A kept draft may be a code the model
found unlikely, so the images are no longer distributed as plain sampling's: fewer forwards, other images.

A draft x with group G(x) (x and its `group - 1` nearest codes by cosine similarity) is kept when
u * q(G(x)) < p(G(x)); a rejection resamples from norm(max(0, p - q)) as exact SJD does.
"""
from __future__ import annotations

import torch

CHUNK = 2048  # rows of the code-by-code similarity at a time: 16384 codes would be a 1 GiB matrix at once


@torch.no_grad()
def code_groups(model, group: int) -> torch.Tensor:
    """[n_codes, group] the codes nearest to each code (itself first), from the model's embeddings of the
    image codes; computed once per model and group size."""
    cache = model.__dict__.setdefault("_code_groups", {})
    if group not in cache:
        start, end = model.tokenizer.special.image_rows
        emb = model.model.embed_tokens.weight[start:end].float()
        emb = emb / emb.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        rows = []
        for a in range(0, emb.shape[0], CHUNK):
            sim = emb[a:a + CHUNK] @ emb.T
            sim[torch.arange(sim.shape[0]), torch.arange(a, a + sim.shape[0])] = float("inf")  # itself first
            rows.append(sim.topk(group, -1).indices)
        cache[group] = torch.cat(rows).to(model.device)
    return cache[group]


def group_mass(dist: torch.Tensor, groups: torch.Tensor, drafts: torch.Tensor) -> torch.Tensor:
    """dist [..., V] summed over each draft's group: [...]."""
    return dist.gather(-1, groups[drafts]).sum(-1)
