"""The parts of bench/gpu_check.py, one module each; the command itself (options, table, JSON, budget, exit
status) stays in bench/gpu_check.py.

    common.py       rows, shared constants and numerics: rounding limits, teacher-forced logits, code comparison
    context.py      CheckContext: what every part shares (device and shapes, the rows, each check's guard, the
                    model held between checks, step runners)
    correctness.py  part 1: kernels and the int8 KV cache against references; SJD and CUDA graphs vs plain greedy
    speed.py        part 2: ms per decode step and per SJD window against the bandwidth floor, s per image
    memory.py       part 3: the planner's rows built and run, peak memory against the planner's estimate
    comfyui.py      part 4: ComfyUI 0.33's dynamic-VRAM load, in a child process run by ComfyUI's own python
"""
