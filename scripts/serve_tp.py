"""Generate one image from the command line with the transformer split over N ranks (tensor parallelism),
on one machine or several: launch with torchrun, which sets the env:// rendezvous variables.

One machine, two GPUs:
    torchrun --standalone --nproc-per-node 2 scripts/serve_tp.py --checkpoint models/lumina_mgpt/Lumina-mGPT-2.0 \
        --image-tokenizer models/lumina_mgpt/movqgan_270M.ckpt --prompt "a red fox in the snow" --out fox.png
Two machines with two GPUs each (run on both; node 0's address as the endpoint):
    torchrun --nnodes 2 --node-rank <0|1> --nproc-per-node 2 --rdzv-backend c10d --rdzv-endpoint host0:29500 \
        scripts/serve_tp.py ...
Every rank runs the same decoding loop and holds 1/N of the weights; rank 0 decodes the codes and writes
the PNG. --device cpu runs on gloo (for trying it out without GPUs).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from lumina_core import LuminaMGPT, MoVQGAN, SJDecoder, decode_images, generate  # noqa: E402
from lumina_core.parallel import tp  # noqa: E402
from lumina_core.image.prep import unit_bhwc_to_pil  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="the checkpoint folder (config.json, model*.safetensors, "
                                                       "tokenizer.json)")
    p.add_argument("--image-tokenizer", required=True, help="the MoVQGAN file (movqgan_270M.ckpt)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--out", default="out.png")
    p.add_argument("--width", type=int, default=768)
    p.add_argument("--height", type=int, default=768)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cfg", type=float, default=4.0)
    p.add_argument("--top-k", type=int, default=4096)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--sjd-window", type=int, default=0, help="speculative Jacobi decoding window (0: plain)")
    p.add_argument("--dtype", choices=list(DTYPES), default=None, help="default: bf16 on GPUs, fp32 on the CPU")
    p.add_argument("--quantization", choices=["none", "int8"], default="none")
    p.add_argument("--device", default=None, help="'cpu' for gloo on the CPU; default cuda:LOCAL_RANK")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    shard, device = tp.init_env_group(args.device)
    try:
        dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
        model = tp.load_sharded(LuminaMGPT, args.checkpoint, shard, dtype=dtype, device=device,
                                quantize=tp.quantizer(args.quantization, dtype, shard))
        decoder = SJDecoder(window=args.sjd_window) if args.sjd_window else None
        progress = None
        if shard.rank == 0:
            def progress(rows, total, _codes):
                print(f"\rrow {rows}/{total}", end="" if rows < total else "\n", flush=True)
        result = generate(model, args.prompt, args.width, args.height, seed=args.seed, cfg=args.cfg,
                          top_k=args.top_k, temperature=args.temperature, decoder=decoder, progress=progress)
        if shard.rank == 0:
            vq = MoVQGAN.from_file(args.image_tokenizer, device=device)
            image = decode_images(vq, result.panel_codes())
            unit_bhwc_to_pil(image)[0].save(args.out)
            st = result.stats
            print(f"{args.out}: {st.image_tokens} codes in {st.seconds:.1f} s on {shard.world} ranks "
                  f"({st.forwards} forwards)")
    finally:
        tp.leave_group()


if __name__ == "__main__":
    main()
