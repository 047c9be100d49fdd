"""A fast cached-step function: bucketed attention length plus CUDA graphs (gpt-fast style).

`StepRunner(model)` has the signature of `LuminaMGPT.forward_step`, so it plugs into the samplers:
`sample_plain(..., forward=runner)`, `Session(..., forward=runner)`, `SJDecoder(forward=runner)`,
or `generate(..., decoder=FastPlain(runner))`.

kv_len is rounded up to a multiple of `bucket`: exact, because slots past a row's own are masked,
and it means one captured graph per (rows, tokens per step, bucket, head rows). Attending over the
bucket instead of the whole cache keeps the KV bytes read near what is needed. On CUDA every shape
is captured once into a CUDA graph with static input buffers (tokens, slots; the cache tensors and
`starts` are used in place) and then replayed: one launch per step instead of ~15 per layer. All
graphs share one memory pool. Elsewhere (or graphs=False) the same bucketed call runs eagerly,
which is what the CPU tests check against the plain path. compile=True additionally compiles the
model's decoder layers in place (`compile_layers`), which fuses the small elementwise kernels.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .logits import SamplingOptions
from .sampler import CancelFn, ProgressFn, sample_plain


class StepRunner:
    def __init__(self, model, bucket: int = 512, graphs: bool | None = None, compile: bool = False):
        if bucket < 1:
            raise ValueError(f"bucket must be >= 1, got {bucket}")
        self.model, self.bucket = model, bucket
        # a host-memory embedding table (placement.py) gathers on the CPU: not capturable in a CUDA graph
        cuda = model.device.type == "cuda" and not getattr(model.model.embed_tokens, "on_host", False)
        if graphs and not cuda:
            raise ValueError("CUDA graphs need the whole model on a CUDA device (embeddings included); "
                             "use graphs=False (or None) elsewhere")
        self.use_graphs = cuda if graphs is None else graphs
        self.step = model.forward_step
        if compile:
            compile_layers(model)
        self._graphs: dict = {}
        self._cache_id = None
        self._pool = None
        self.captures = 0

    def reset(self) -> None:
        """Drop captured graphs (they hold the addresses of one cache) and their memory pool."""
        self._graphs.clear()
        self._cache_id = None
        self._pool = None  # a pool whose graphs are gone cannot take new captures

    def kv_bucket(self, kv_len: int, max_len: int) -> int:
        return min(max_len, -(-kv_len // self.bucket) * self.bucket)

    def __call__(self, tokens: torch.Tensor, cache, slots: torch.Tensor, kv_len: int,
                 rows: tuple[int, int] | None = None, last_only: bool = False, tree=None) -> torch.Tensor:
        kv = self.kv_bucket(kv_len, cache.max_len)
        if not self.use_graphs:
            return self.step(tokens, cache, slots, kv, rows, last_only, tree=tree)
        # a graph holds the addresses of the cache and of the weights: recapture when either moves
        # (a new generation's cache; a host that offloads or reloads weights, e.g. ComfyUI low-VRAM)
        cache_id = (tuple(t.data_ptr() for t in cache.tensors()) + (cache.starts.data_ptr(), tuple(cache.k[0].shape))
                    + tuple(t.data_ptr() for t in self.model.parameters())
                    + tuple(t.data_ptr() for t in self.model.buffers()))
        if cache_id != self._cache_id:
            self.reset()
            self._cache_id = cache_id
        key = (tuple(tokens.shape), tuple(slots.shape), kv, rows, last_only, tree)  # a tree's tensors are constants
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._graphs[key] = self._capture(tokens, cache, slots, kv, rows, last_only, tree)
        graph, tok_buf, slot_buf, out = entry
        tok_buf.copy_(tokens)
        slot_buf.copy_(slots)
        graph.replay()
        return out.clone()

    def _capture(self, tokens, cache, slots, kv, rows, last_only, tree=None):
        tok_buf, slot_buf = tokens.clone(), slots.clone()
        # warm up on a side stream (lazy cuBLAS/attention setup must not happen during capture); the
        # step writes the same keys/values at the same slots each time, so running it twice is harmless
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self.step(tok_buf, cache, slot_buf, kv, rows, last_only, tree=tree)
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = self.step(tok_buf, cache, slot_buf, kv, rows, last_only, tree=tree)
        self.captures += 1
        return graph, tok_buf, slot_buf, out


def compile_layers(model, enable: bool = True) -> None:
    """Regional compilation, in place: each decoder layer runs through torch.compile (dynamic shapes, so
    one compilation serves every batch, window and attention length; the 32 layers share it). It fuses
    the ~40 small kernels per layer (norms, rotary, gating) that otherwise cost ~2 us each per step.
    enable=False puts the layers back to eager."""
    import torch._dynamo
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    for layer in model.model.layers:
        if enable:
            layer.compile(dynamic=True)
        else:
            layer._compiled_call_impl = None


@dataclass(frozen=True)
class FastPlain:
    """Plain decoding through a StepRunner: `generate(..., decoder=FastPlain(StepRunner(model)))`."""
    runner: StepRunner

    def sample(self, model, plan, special, seeds: list[int], opts: SamplingOptions,
               progress: ProgressFn | None = None, cancel: CancelFn | None = None):
        return sample_plain(model, plan, special, seeds, opts, progress, cancel, forward=self.runner)
