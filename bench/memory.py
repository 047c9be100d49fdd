"""Memory on consumer cards: the planner's table for the real 7B config, and measured peaks next to it.

    python bench/memory.py table                 # instant: 7B config at 768x768 with guidance, every plan
    python bench/memory.py cards                 # which plan each card size gets (the README table)
    python bench/memory.py measure               # ~5 min on 2 busy CPU cores: a small config, real generations
    python bench/memory.py load --layers 8       # host memory while quantizing at load (7B-shaped layers)

table / cards: the real 7B config is built on the meta device (nothing allocated) and the planner
(lumina_core/memory/planner.py) counts bytes per part. GiB = 2^30 bytes; the issue's targets are checked in
decimal GB (1e9), the stricter reading.

measure: a random model of a small config (saved as a real checkpoint folder, loaded with
from_pretrained) generates one image per plan, each in a fresh process; the peak resident memory of
that process above its baseline (VmHWM after resetting it through /proc/self/clear_refs, minus the
RSS before loading, after a warm-up run of the same plan at 32x32 that makes the libraries' code
pages resident and is then freed) is printed next to the planner's estimate for the same config, size and plan (CPU:
no GPU workspace, so workspace=0). Linux only.

load: a checkpoint with the 7B's tensor shapes and real key names but `--layers` decoder layers
(random bf16, 4 shards) is written to a temporary folder, then loaded in a fresh process with
quantization none / int8 / int4; a sampling thread records peak and final RSS split into anonymous
and file-backed memory (/proc/self/status RssAnon, RssFile).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from lumina_core.model.config import LuminaConfig  # noqa: E402
from lumina_core.memory.planner import GiB, PLAN_ORDER, Request, estimate, plan_memory, table  # noqa: E402

CARDS = (8, 12, 16, 24, 80)
SYSTEM_RESERVE = 0.75 * GiB   # driver, desktop and CUDA context (as tests/test_planner.py)
TARGETS = {("none", "int8"): 22e9, ("int8", "int8"): 14e9, ("int4", "int8"): 10.5e9}
NAMES = {"none": "bf16", "int8": "int8", "int4": "int4"}


def gib(n: int) -> str:
    return f"{n / GiB:6.2f}"


def print_table(width: int, height: int, batch: int, guidance: bool, window: int) -> None:
    cfg = LuminaConfig()
    with torch.device("meta"):  # the real module tree, built for free: the planner's counts are checked against it
        from lumina_core.model.transformer import LuminaMGPT
        meta = LuminaMGPT(cfg, device="meta", dtype=torch.bfloat16)
    params = sum(p.numel() for p in meta.parameters())
    req = Request(width, height, batch, guidance, window)
    print(f"7B config ({params / 1e9:.2f} B parameters, built on meta), {req.describe()}, SJD window {window}, "
          f"{req.slots()} KV slots x {req.rows} rows; GiB")
    print(f"| weights | KV cache | embeddings | weights | head | embeddings | KV | activations | total GiB | total GB | target |")
    print("|---|---|---|--:|--:|--:|--:|--:|--:|--:|---|")
    for p in table(cfg, req):
        target = TARGETS.get((p.weights, p.kv_cache)) if p.embeddings == "host" else None
        mark = "" if target is None else f"<= {target / 1e9:g} GB: {'yes' if p.total <= target else 'NO'}"
        print(f"| {NAMES[p.weights]} | {p.kv_cache} | {p.embeddings} | " + " | ".join(gib(p.parts[k]).strip() for k in
              ("weights", "head", "embeddings", "kv", "activations")) + f" | {p.total / GiB:.2f} | {p.total / 1e9:.2f} | {mark} |")


def print_cards(width: int, height: int) -> None:
    cfg = LuminaConfig()
    print(f"Which card, which setting ({width}x{height} with guidance, batch 1; free = card - 0.75 GiB, "
          "5% headroom):")
    print("| card | weights | KV cache | embeddings | needs | also fits |")
    print("|---|---|---|---|--:|---|")
    from lumina_core.errors import InputError
    for card in CARDS:
        free = int(card * GiB - SYSTEM_RESERVE)
        try:
            p = plan_memory(cfg, width, height, free)
            also = []
            for size in (512,):
                try:
                    q = plan_memory(cfg, size, size, free)
                    also.append(f"{size}x{size}: {NAMES[q.weights]} weights, {q.kv_cache} cache")
                except InputError:
                    pass
            print(f"| {card} GB | {NAMES[p.weights]} | {p.kv_cache} | {p.embeddings} | {p.total / GiB:.1f} GiB | "
                  f"{'; '.join(also)} |")
        except InputError as e:
            print(f"| {card} GB | - | - | - | - | {e} |")


# ----------------------------------------------------------------------------- measured peaks

def _rss_kib(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _small_folder(folder: str, args) -> None:
    from lumina_core.model.checkpoint_writer import add_lumina_tokens, save_checkpoint, train_text_tokenizer
    from lumina_core.model.transformer import LuminaMGPT
    tok = train_text_tokenizer(["a red circle on a blue background, two green squares"] * 8, vocab_size=300)
    add_lumina_tokens(tok, args.codes, max_grid_units=64)
    cfg = LuminaConfig(vocab_size=tok.get_vocab_size(with_added_tokens=True), hidden_size=args.hidden,
                       intermediate_size=args.hidden * 11 // 4 // 64 * 64, num_hidden_layers=args.layers,
                       num_attention_heads=args.hidden // 64, num_key_value_heads=args.hidden // 64,
                       max_position_embeddings=8192)
    torch.manual_seed(0)
    model = LuminaMGPT(cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.ndim == 2:
                p.normal_(0, p.shape[1] ** -0.5)
    save_checkpoint(folder, model, tok, shards=1)


def _measure_one(folder: str, weights: str, kv: str, size: int, dtype_name: str) -> None:
    """Child process: load + generate one image with a plan; print JSON with the peak above baseline."""
    from lumina_core import LuminaMGPT, generate
    from lumina_core.memory.kv_cache import kv_cache_format
    import ctypes
    import gc
    dtype = getattr(torch, dtype_name)
    # warm-up: a 32x32 image with the same plan first, so the libraries' code pages and one-off buffers
    # are resident before the baseline; then free it and hand the freed heap back to the system
    warm = LuminaMGPT.from_pretrained(folder, dtype=dtype, quantization=weights)
    with kv_cache_format(warm, kv):
        generate(warm, "a red circle on a blue background", 32, 32, seed=0, cfg=3.0, top_k=16)
    del warm
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    base = _rss_kib()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    t = time.perf_counter()
    model = LuminaMGPT.from_pretrained(folder, dtype=dtype, quantization=weights)
    with kv_cache_format(model, kv):
        res = generate(model, "a red circle on a blue background", size, size, seed=0, cfg=3.0, top_k=16)
    peak = _rss_kib("VmHWM")
    print(json.dumps({"peak": (peak - base) * 1024, "prompt": res.stats.prefill_tokens,
                      "seconds": time.perf_counter() - t}))


def measure(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "small")
        _small_folder(folder, args)
        from lumina_core.model.checkpoint import read_config
        cfg = read_config(folder)
        dtype = getattr(torch, args.dtype)
        print(f"small config: hidden {cfg.hidden_size}, MLP {cfg.intermediate_size}, {cfg.num_hidden_layers} layers, "
              f"vocab {cfg.vocab_size} ({args.codes} codes), {args.dtype} on the CPU; {args.size}x{args.size} with "
              f"guidance, batch 1; measured = peak RSS above the process's baseline while loading and generating")
        print("| weights | KV cache | planner estimate MiB | measured peak MiB | measured / estimate | seconds |")
        print("|---|---|--:|--:|--:|--:|")
        for weights, kv in (("none", "bf16"), ("none", "int8"), ("int8", "int8"), ("int4", "int8")):
            env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
            out = subprocess.run([sys.executable, __file__, "_child", folder, weights, kv, str(args.size), args.dtype],
                                 capture_output=True, text=True, env=env, timeout=1200)
            if out.returncode:
                print(f"| {weights} | {kv} | failed: {out.stderr[-300:]} |")
                continue
            got = json.loads(out.stdout.strip().splitlines()[-1])
            req = Request(args.size, args.size, prompt_tokens=got["prompt"])
            est = estimate(cfg, req, weights, kv, "device", dtype=dtype, num_image_codes=args.codes, workspace=0)
            kv_name = args.dtype.replace("float32", "fp32").replace("bfloat16", "bf16") if kv == "bf16" else "int8"
            w_name = args.dtype.replace("float32", "fp32").replace("bfloat16", "bf16") if weights == "none" else weights
            print(f"| {w_name} | {kv_name} | {est.total / 2**20:.0f} | {got['peak'] / 2**20:.0f} | "
                  f"{got['peak'] / est.total:.2f} | {got['seconds']:.0f} |", flush=True)


# ----------------------------------------------------------------------------- host memory at load

def _seven_b_shaped(folder: str, layers: int) -> None:
    """Random bf16 tensors with the 7B's shapes and key names, `layers` decoder layers, 4 shards (written
    one shard at a time, so building it needs one shard of memory)."""
    from safetensors.torch import save_file

    from lumina_core.model.checkpoint_writer import add_lumina_tokens, save_config, save_tokenizer, train_text_tokenizer
    cfg = LuminaConfig(num_hidden_layers=layers)
    tok = train_text_tokenizer(["a red circle"] * 4, vocab_size=300)
    vocab = add_lumina_tokens(tok, 16384)
    cfg.vocab_size = 171385  # the real vocabulary size (ids past the tokenizer's are simply unused here)
    save_config(folder, cfg, {k: v for k, v in vocab.items() if k.startswith("<")})
    save_tokenizer(folder, tok)
    with torch.device("meta"):
        from lumina_core.model.transformer import LuminaMGPT
        shapes = {n: tuple(p.shape) for n, p in LuminaMGPT(cfg, device="meta").named_parameters()}
    g = torch.Generator().manual_seed(0)
    keys = sorted(shapes)
    weight_map = {}
    for i in range(4):
        name = f"model-{i + 1:05d}-of-00004.safetensors"
        part = {}
        for k in keys[i::4]:
            s = shapes[k]
            part[k] = (torch.randn(s, generator=g) * 0.02).to(torch.bfloat16) if len(s) == 2 \
                else torch.ones(s, dtype=torch.bfloat16)
            weight_map[k] = name
        save_file(part, os.path.join(folder, name), metadata={"format": "pt"})
        del part
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)


def _load_one(folder: str, quantization: str) -> None:
    samples = {"anon": 0, "file": 0, "total": 0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            a, f = _rss_kib("RssAnon"), _rss_kib("RssFile")
            if a + f > samples["total"]:
                samples.update(anon=a, file=f, total=a + f)
            time.sleep(0.02)

    from lumina_core import LuminaMGPT
    base = _rss_kib()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t = time.perf_counter()
    model = LuminaMGPT.from_pretrained(folder, dtype=torch.bfloat16, quantization=quantization)
    seconds = time.perf_counter() - t
    stop.set()
    thread.join()
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    print(json.dumps({"base": base * 1024, "peak": samples["total"] * 1024, "peak_anon": samples["anon"] * 1024,
                      "peak_file": samples["file"] * 1024, "final_anon": _rss_kib("RssAnon") * 1024,
                      "final_file": _rss_kib("RssFile") * 1024, "size": size, "seconds": seconds}))


def load_bench(args) -> None:
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        folder = os.path.join(tmp, "7b-shaped")
        t = time.perf_counter()
        _seven_b_shaped(folder, args.layers)
        disk = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if f.endswith(".safetensors"))
        print(f"7B-shaped bf16 checkpoint, {args.layers} of 32 layers, 4 shards, {disk / GiB:.2f} GiB on disk "
              f"(written in {time.perf_counter() - t:.0f} s); RSS of a fresh process, GiB")
        print("| load as | model bytes | peak RSS | peak anon | peak file | final anon | final file | peak - model | s |")
        print("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
        for q in args.formats.split(","):
            out = subprocess.run([sys.executable, __file__, "_load", folder, q], capture_output=True, text=True,
                                 timeout=3600)
            if out.returncode:
                print(f"| {q} | failed: {out.stderr[-300:]} |")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {q} | {gib(r['size'])} | {gib(r['peak'])} | {gib(r['peak_anon'])} | {gib(r['peak_file'])} | "
                  f"{gib(r['final_anon'])} | {gib(r['final_file'])} | {gib(r['peak'] - r['size'])} | "
                  f"{r['seconds']:.0f} |", flush=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        return _measure_one(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6])
    if len(sys.argv) > 1 and sys.argv[1] == "_load":
        return _load_one(sys.argv[2], sys.argv[3])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["table", "cards", "measure", "load"])
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--height", type=int, default=768)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--no-guidance", action="store_true")
    ap.add_argument("--window", type=int, default=1, help="SJD window (1: plain decoding)")
    ap.add_argument("--size", type=int, default=256, help="measure: image size")
    ap.add_argument("--hidden", type=int, default=512, help="measure: width of the small config")
    ap.add_argument("--layers", type=int, default=None, help="measure: 4; load: 8 (of the 7B's 32)")
    ap.add_argument("--codes", type=int, default=16384, help="measure: image codes (the real 16,384)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--formats", default="none,int8,int4", help="load: quantizations to load with")
    ap.add_argument("--tmp", default=None, help="load: where to write the checkpoint (needs layers x 0.4 GiB + 2.8)")
    args = ap.parse_args()
    if args.what == "table":
        print_table(args.width, args.height, args.batch, not args.no_guidance, args.window)
    elif args.what == "cards":
        print_cards(args.width, args.height)
    elif args.what == "measure":
        args.layers = args.layers or 4
        measure(args)
    else:
        args.layers = args.layers or 8
        load_bench(args)


if __name__ == "__main__":
    main()
