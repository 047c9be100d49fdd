"""Shapes-eval rows for the memory plans on the demo model: int8 / int4 weights and the int8 KV cache.

    python -m bench.quant_quality --n 200 --cfg 1.5 --temperature 0.5 --threads 1

Registers shapes_eval methods that run the same prompts and seeds through a quantized copy of the
demo model (quantized once) or with the int8 cache, next to "plain" (the float model and cache).
Everything else (prompts, seeds, judge, table) is bench/shapes_eval.py's.
"""
from __future__ import annotations

import copy
import sys

from bench import shapes_eval
from lumina_core import generate
from lumina_core.memory.kv_cache import kv_cache_format
from lumina_core.memory.quant import quantize_int4_, quantize_int8_

PLANS = {"int8_weights": ("int8", None), "int4_weights": ("int4", None), "int8_cache": (None, "int8"),
         "int4_weights_int8_cache": ("int4", "int8")}
_copies: dict = {}


def _variant(model, weights):
    if weights is None:
        return model
    key = (id(model), weights)
    if key not in _copies:
        q = copy.deepcopy(model)
        _copies[key] = quantize_int8_(q, backend="native") if weights == "int8" else quantize_int4_(q)
    return _copies[key]


def _method(weights, kv):
    def run(model, prompt, *, task, width, height, seeds, sampling, condition_codes=None):
        m = _variant(model, weights)
        with kv_cache_format(m, kv):
            return generate(m, prompt, width, height, task=task, seeds=seeds, sampling=sampling,
                            condition_codes=condition_codes)
    return run


for name, (w, kv) in PLANS.items():
    shapes_eval.register_method(name, _method(w, kv))


if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--method" not in argv:
        argv += ["--method", "plain", *PLANS]
    shapes_eval.main(argv)
