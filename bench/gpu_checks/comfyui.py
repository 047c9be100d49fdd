"""Part 4 of the GPU check: ComfyUI 0.33's dynamic-VRAM load of the bundled demo model through the pack's
nodes. The main run starts a child process with the ComfyUI venv's python (bench/gpu_check.py --comfy-child),
so ComfyUI's modules, device and global state stay out of it; the child writes its rows as JSON. Without a
ComfyUI source tree: one "skipped" row (not a failure)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import traceback

import torch

from bench.gpu_checks.common import NA_CPU
from bench.gpu_checks.context import CheckContext
from bench.gpu_setup import ROOT

PART = "comfyui"
COMMAND = os.path.join(ROOT, "bench", "gpu_check.py")   # run by the child with --comfy-child
DEFAULT_COMFY_DIR = os.path.join(ROOT, ".comfy", "0.33.0", "comfyui")
DEMO_CHECKPOINT = "demo: lumina-mgpt2-shapes-demo"
DEMO_IMAGE_TOKENIZER = "demo: movqgan_shapes_demo.safetensors"
AIMDO_CHECK = "comfy-aimdo on the GPU: transformer on the classic patcher, MoVQGAN dynamic, pixels as classic"


# ----------------------------------------------------------------------------- the main run's side
def run(ctx: CheckContext):
    ctx.drop_model()
    comfy_dir = ctx.args.comfy_dir
    if not comfy_dir or not os.path.isfile(os.path.join(comfy_dir, "main.py")):
        where = f"at {comfy_dir}" if comfy_dir else "(--comfy-dir; scripts/setup.sh puts one in .comfy/0.33.0/)"
        return ctx.add(PART, "comfy", "ComfyUI dynamic-VRAM load", f"no ComfyUI source tree {where}",
                       status="skipped", verdict="skipped: ComfyUI not importable")
    python = ctx.args.comfy_python or comfy_python(comfy_dir)
    left = max(30.0, min(240.0, ctx.args.budget_s - ctx.elapsed()))
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rows.json")
        cmd = [python, COMMAND, "--comfy-child", "--device", str(ctx.device), "--comfy-dir", comfy_dir, "--json", out]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=left)
        rows = read_json(out) if os.path.isfile(out) else []
    for r in rows:
        ctx.add(**r)
    if done.returncode or not rows:
        ctx.add(PART, "comfy-child", "ComfyUI child process", f"exit {done.returncode}: "
                + done.stderr.strip().replace("\n", " ")[-300:], status="FAIL")


def comfy_python(comfy_dir: str) -> str:
    """The ComfyUI release's own venv (scripts/setup.sh puts it next to the source), else this python."""
    venv = os.path.join(os.path.dirname(os.path.abspath(comfy_dir)), "venv", "bin", "python")
    return venv if os.path.isfile(venv) else sys.executable


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


# ----------------------------------------------------------------------------- the child process
def child_main(args) -> int:
    """bench/gpu_check.py --comfy-child: run the checks inside ComfyUI and write their rows to --json."""
    device = torch.device(args.device)
    if device.type != "cuda":
        torch.set_num_threads(1)
    child = ComfyChild(device, args.comfy_dir)
    try:
        rows = child.run()
    except Exception as e:  # a check that raised: its row, then the rest of the report
        traceback.print_exc()
        child.add("comfy-error", "ComfyUI dynamic-VRAM load", f"{type(e).__name__}: {e}".replace("\n", " ")[:300],
                  status="FAIL", verdict="FAIL")
        rows = child.rows
    with open(args.json, "w") as f:
        json.dump(rows, f)
    return 0


class ComfyChild:
    """Part 4 inside ComfyUI (its own process: ComfyUI's modules, device and global state stay out of the main
    run). Loads the pack as ComfyUI does and the bundled demo model through the pack's nodes."""

    def __init__(self, device: torch.device, comfy_dir: str):
        self.device, self.comfy_dir = device, comfy_dir
        self.rows: list[dict] = []

    def add(self, id, check, result, limit="", status="pass", verdict=""):
        self.rows.append(dict(part=PART, id=id, check=check, result=result, limit=limit, status=status,
                              verdict=verdict))

    def check(self, id, check, result, ok: bool, limit=""):
        self.add(id, check, result, limit, status="pass" if ok else "FAIL", verdict="pass" if ok else "FAIL")

    def import_pack(self):
        import importlib.util
        sys.path.insert(0, self.comfy_dir)  # ComfyUI's top-level `nodes` before the repo's package of that name
        from comfy.cli_args import args
        args.cpu = self.device.type != "cuda"
        import folder_paths  # noqa: F401  (the pack registers its model folder there)
        spec = importlib.util.spec_from_file_location("lumina_pack", os.path.join(ROOT, "__init__.py"),
                                                      submodule_search_locations=[ROOT])
        module = importlib.util.module_from_spec(spec)
        sys.modules["lumina_pack"] = module
        spec.loader.exec_module(module)
        return module.nodes

    def sample(self, nodes, model, image_tokenizer=None):
        sampler = nodes.compat.node_with_hidden(nodes.sampler.Sampler, unique_id="1")
        return sampler.execute(model, prompt="a red circle on a blue background", task="t2i", width=64, height=64,
                               seed=3, cfg=1.5, top_k=1, temperature=1.0, batch_size=1,
                               image_tokenizer=image_tokenizer).args[0]

    def run(self) -> list[dict]:
        try:
            nodes = self.import_pack()
        except Exception as e:  # not importable by this python: a skip, not a failure
            self.add("comfy", "ComfyUI dynamic-VRAM load", f"{type(e).__name__}: {e}"[:300], status="skipped",
                     verdict="skipped: ComfyUI not importable")
            return self.rows
        compat = nodes.compat
        version = f"ComfyUI {compat.COMFYUI_VERSION} ({sys.executable})"
        if compat.DYNAMIC_PATCHER is None:
            self.add("comfy", "ComfyUI dynamic-VRAM load", f"{version} has no dynamic VRAM", status="skipped",
                     verdict="skipped: no dynamic VRAM in this ComfyUI")
            return self.rows
        self.add("comfy-host", "ComfyUI in-process", version, status="measured", verdict="loaded")
        self.dynamic_vram(nodes)
        return self.rows

    def dynamic_vram(self, nodes):
        import comfy.memory_management
        import comfy.model_management as mm
        import comfy.model_patcher
        import comfy.ops
        loaders, cuda = nodes.loaders, self.device.type == "cuda"
        classic = loaders.ModelLoader.execute(DEMO_CHECKPOINT, "auto", "sdpa").args[0]
        classic_vq = loaders.ImageTokenizerLoader.execute(DEMO_IMAGE_TOKENIZER).args[0]
        want = self.sample(nodes, classic, classic_vq)
        want_pixels = nodes.decode.Decode.execute(want, classic_vq, "output").args[0]
        weights = {n: p.detach().cpu() for n, p in classic.engine.named_parameters()}
        del classic, classic_vq
        mm.free_memory(10 * mm.get_total_memory(mm.get_torch_device()), mm.get_torch_device())

        if cuda:  # as ComfyUI 0.33 starts on NVIDIA: comfy-aimdo on this GPU, ModelPatcherDynamic the default
            import comfy_aimdo.control
            if not comfy_aimdo.control.init_devices([self.device.index or 0]):
                raise RuntimeError("comfy-aimdo did not initialise on this GPU")
            comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcherDynamic
        comfy.memory_management.aimdo_enabled = True
        probe = comfy.ops.disable_weight_init.Linear(4, 4, bias=False)
        self.check("comfy-lazy-layers", "dynamic VRAM: comfy.ops layers hold no weight until loaded",
                   f"Linear.weight is {'None' if probe.weight is None else 'allocated'}", probe.weight is None,
                   "None until loaded")
        model = loaders.ModelLoader.execute(DEMO_CHECKPOINT, "auto", "sdpa").args[0]
        vq = loaders.ImageTokenizerLoader.execute(DEMO_IMAGE_TOKENIZER).args[0]
        params = dict(model.engine.named_parameters())
        differ = [n for n, w in weights.items() if n not in params or not torch.equal(params[n].detach().cpu(), w)]
        self.check("comfy-weights", "dynamic VRAM: the loader fills every weight as the classic load",
                   f"{len(weights) - len(differ)}/{len(weights)} tensors equal"
                   + (f"; e.g. {differ[0]}" if differ else ""), not differ, "every tensor equal")
        got = self.sample(nodes, model, vq)
        same = int((got.codes == want.codes).sum())
        self.check("comfy-codes", "dynamic VRAM: greedy codes == classic load (demo model, 64x64)",
                   f"{same}/{want.codes.numel()} codes equal", torch.equal(got.codes, want.codes),
                   "identical (same weights, same kernels)")
        patchers = f"transformer {type(model.patcher).__name__}, MoVQGAN {type(vq.patcher).__name__}"
        if not cuda:
            return self.add("comfy-aimdo", AIMDO_CHECK, patchers, status="n/a", verdict=NA_CPU)
        pixels = nodes.decode.Decode.execute(got, vq, "output").args[0]
        err = float((pixels - want_pixels).abs().max())
        ok = (type(model.patcher) is comfy.model_patcher.ModelPatcher
              and isinstance(vq.patcher, comfy.model_patcher.ModelPatcherDynamic) and err <= 1e-3)
        self.check("comfy-aimdo", AIMDO_CHECK, f"{patchers}; max pixel diff {err:.2g}", ok,
                   "ModelPatcher / ModelPatcherDynamic; pixels within 1e-3 (the decoder's float rounding)")
