"""The token embedding table in host memory: one row gather per step on the CPU, moved to the device.

The 7B table is 171,385 x 4096 (1.4 GB in bf16) but a decoding step reads only a few rows of it, so
keeping it off the GPU costs a tiny copy per step and frees 1.4 GB for the KV cache. A host that
moves the whole model (ComfyUI loading it onto the GPU, `.to()`) leaves this table where it is.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class HostEmbedding(nn.Module):
    """nn.Embedding whose table stays in host memory; its output lands on the ids' device."""

    on_host = True

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.num_embeddings, self.embedding_dim = weight.shape
        # a buffer, not a parameter: a host's memory manager moves the parameters it finds to the GPU one by
        # one (ComfyUI's ModelPatcher does), which would undo the point of this layer
        self.register_buffer("weight", weight.detach().to("cpu"))

    def _apply(self, fn, recurse=True):
        # `.to(device)` / `.cuda()` of the whole model must not pull the table onto the GPU (that is its
        # point); dtype changes are skipped too: the gathered rows are cast to the compute dtype anyway
        return self

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(ids.to(self.weight.device), self.weight)
        return rows.to(ids.device, non_blocking=True)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, on the host"


def embeddings_on_host(model) -> bool:
    return bool(getattr(model.model.embed_tokens, "on_host", False))


def move_embeddings_to_host_(model) -> None:
    """Keep model.model.embed_tokens in host memory (in place). Tied embeddings (the head reads the whole
    table every step) cannot move: refused."""
    if model.config.tie_word_embeddings:
        raise ValueError("tied embeddings are the head's weights too; they cannot stay in host memory")
    if not embeddings_on_host(model):
        model.model.embed_tokens = HostEmbedding(model.model.embed_tokens.weight)


def move_embeddings_to_device_(model) -> None:
    """Undo move_embeddings_to_host_: an ordinary nn.Embedding on the model's device."""
    if embeddings_on_host(model):
        w = model.model.embed_tokens.weight
        emb = nn.Embedding(w.shape[0], w.shape[1], device="meta")
        emb.weight = nn.Parameter(w.to(model.device), requires_grad=False)
        model.model.embed_tokens = emb
