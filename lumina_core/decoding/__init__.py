"""Prompt to codes: task templates and prompt layouts, the logits pipeline and the seeded random numbers, the
plain sampler, speculative Jacobi decoding, the fast (CUDA-graph) step, best-of-N with its scorers, the
thread choice, and `generate`, the entry that ties them together.

Floor 4: may import model/, memory/ and image/ (and errors, layout), never parallel/ or request.
"""
