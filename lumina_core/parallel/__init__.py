"""Several devices: tensor-parallel shards of the model and their collectives (tp.py), and the worker group a
single-process host such as ComfyUI holds (workers.py: the parent's handle; worker.py: each process's loop).

Floor 5: may import every room below (decoding/, model/, memory/, image/), never lumina_core.request.
"""
