"""One command that trains the shapes demo from scratch and writes the shipped files:

    demo_model/movqgan_shapes_demo.safetensors          MoVQGAN image tokenizer (fp16)
    demo_model/lumina-mgpt2-shapes-demo/                transformer checkpoint folder (released layout)
        config.json  model.safetensors (fp16)  tokenizer.json  tokenizer_config.json
        generation_config.json (recommended sampling)  README.md (model card)  training_report.json
    demo_model/shapes-verifier-clip/                    best-of-N verifier: a transformers CLIP folder

    python -m demo.build_demo                    # the full recipe on CPU (2 threads), resumes if interrupted
    python -m demo.build_demo --device cuda      # the same recipe on a GPU, much faster
    python -m demo.build_demo --fresh            # forget the snapshots, train every stage from scratch
    python -m demo.build_demo --out /tmp/d --movqgan-steps 20 --decoder-steps 5 --transformer-steps 20 \
        --verifier-steps 20                      # smoke run

Every stage is seeded; data is generated on the fly from (seed, step), so a resumed stage sees the
same data as an uninterrupted one. Each stage writes a snapshot (weights, optimiser, step, losses)
to <out>/.build/ every --snapshot-every steps; run the same command again after an interruption and
it goes on from the last snapshot (stages already finished are loaded, not retrained).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from dataclasses import asdict

import torch

from lumina_core import MoVQGAN, TextTokenizer
from lumina_core.model.checkpoint_writer import save_tokenizer

from . import DEMO_MODEL_NAME, DEMO_MOVQGAN, DEMO_ROOT, DEMO_VERIFIER, GENERATION_CONFIG
from . import train_movqgan, train_transformer, train_verifier
from .shapes import COLOUR_NAMES, HELD_OUT, REGIONS, SHAPES
from .train_tokenizer import build_tokenizer

# Recommended sampling for the demo, picked from the accuracy-vs-guidance table in BENCHMARKS.md
# (python -m bench.shapes_eval): strong plain CFG hurts this small model (cfg 4: 8% overall), a cool
# temperature helps; cfg 1.5 / T 0.5 is as good as the best guidance_top_k rows and needs no extra option.
DEMO_SAMPLING = {"task": "t2i", "width": 64, "height": 64, "cfg": 1.5, "top_k": 0, "temperature": 0.5,
                 "top_p": 1.0, "guidance_top_k": 0}


# The tasks train_transformer trains; the sampler warns when asked for any other (lumina_core/decoding/trained_tasks.py).
DEMO_TASKS = ["t2i", "pair_canny", "control_canny"]


def write_generation_config(folder: str, sampling: dict = DEMO_SAMPLING, tasks: list[str] = DEMO_TASKS) -> None:
    with open(os.path.join(folder, GENERATION_CONFIG), "w", encoding="utf-8") as f:
        json.dump({**sampling, "tasks": tasks}, f, indent=1)


MODEL_CARD = """# Lumina-mGPT 2.0 shapes DEMO (not the real model)

A {params:.1f}M-parameter model of the **same classes and file layout** as Lumina-mGPT 2.0 (Chameleon-style
decoder + SBER-MoVQGAN image tokenizer, f=8), trained from scratch on procedural images of 1-3 flat shapes.
It exists so the ComfyUI pack can be tried and tested on a laptop CPU; it knows nothing but shapes.

- Images: 64x64 (t2i) and 64x128 dual panels (`pair_canny`: image above, Canny edge map below;
  `control_canny`: edge map above as the condition, image below).
- Vocabulary: shapes {shapes}; colours {colours}; regions {regions}; sizes small/large; relations
  "to the left of", "to the right of", "above", "below"; counts two/three. Example prompts:
  "a red circle on the left on a blue background", "a green square to the left of a yellow triangle",
  "three purple diamonds".
- Held out of training (never shown in any image, used to test composition), colour/shape/region:
  {held_out}.
- Recommended sampling (generation_config.json): {sampling}.

## Files
`config.json`, `model.safetensors` (fp16), `tokenizer.json` (byte-level BPE + Lumina special tokens under
their real names), `tokenizer_config.json`, and the MoVQGAN next to this folder:
`../movqgan_shapes_demo.safetensors` ({codes} codes).

## Training (reproducible: `python -m demo.build_demo`)
- MoVQGAN: {vq_steps} steps x {vq_batch} images, MSE + L1, EMA codebook with dead-code restarts, then
  {dec_steps} steps of the decoder alone on the frozen codes.
  Reconstruction on fresh shape images: {psnr:.1f} dB PSNR, {used}/{codes} codes used.
- Transformer: {tf_steps} steps x {tf_batch} sequences, 10% text dropout (for CFG), {dual:.0%} of steps on
  the dual-panel tasks; training loss over the last 100 steps {loss:.3f} (after {tf_done} steps).
- Verifier for best-of-N (`../{verifier}/`, a transformers CLIP folder): {verifier_line}
- Trained on {device} in {minutes:.1f} min (all stages, all runs). Quality tables: BENCHMARKS.md in the pack.
"""


def _verifier_line(v: dict | None) -> str:
    if not v:
        return "not trained yet (this is an early snapshot)."
    return (f"{v['params'] / 1e6:.1f}M parameters, {v['config']['steps']} steps x {v['config']['batch']} images, "
            f"contrastive with one hard negative caption per image; ranks the true caption above a hard "
            f"negative on {v['held_out_scenes']['true_caption_ranked_first']:.0%} of unseen scenes and "
            f"{v['held_out_triples']['true_caption_ranked_first']:.0%} of held-out-triple scenes.")


def write_model_card(folder: str, report: dict) -> None:
    held = ", ".join("/".join(t) for t in HELD_OUT)
    text = MODEL_CARD.format(
        params=report["transformer_params"] / 1e6, shapes=", ".join(SHAPES), colours=", ".join(COLOUR_NAMES),
        regions=", ".join(REGIONS), held_out=held, sampling=json.dumps(DEMO_SAMPLING),
        codes=report["movqgan"]["codebook"], vq_steps=report["movqgan_config"]["steps"],
        vq_batch=report["movqgan_config"]["batch"], dec_steps=report["movqgan_config"]["decoder_steps"], psnr=report["movqgan"]["psnr_mean"],
        used=report["movqgan"]["codes_used"], tf_steps=report["transformer_config"]["steps"],
        tf_batch=report["transformer_config"]["batch"], dual=report["transformer_config"]["dual_share"],
        loss=report["transformer_final_loss"], tf_done=report["transformer_steps_done"], device=report["device"], minutes=report["seconds"] / 60,
        verifier=DEMO_VERIFIER, verifier_line=_verifier_line(report.get("verifier")))
    with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as f:
        f.write(text)


def loss_curve(losses: list[float], points: int = 200) -> list[float]:
    """The loss curve averaged down to at most `points` values (kept in the report for the plot)."""
    if not losses:
        return []
    chunk = max(1, -(-len(losses) // points))
    return [sum(losses[i:i + chunk]) / len(losses[i:i + chunk]) for i in range(0, len(losses), chunk)]


def _report(device, seconds, seed, vq_cfg, vq_stats, tf_cfg, model, losses, curves, verifier=None) -> dict:
    tail = losses[-min(100, len(losses)):]
    return {
        "device": str(device), "seconds": sum(seconds.values()), "stage_seconds": seconds, "seed": seed,
        "movqgan_config": asdict(vq_cfg), "movqgan": vq_stats,
        "transformer_config": asdict(tf_cfg), "transformer_steps_done": len(losses),
        "transformer_params": sum(p.numel() for p in model.parameters()),
        "transformer_final_loss": sum(tail) / len(tail), "torch": torch.__version__,
        "verifier": verifier, "loss_curves": curves,
    }


def write_checkpoint(folder: str, model, report: dict) -> None:
    train_transformer.save(model, folder)
    write_generation_config(folder)
    with open(os.path.join(folder, "training_report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    write_model_card(folder, report)


STATE_DIR = ".build"   # snapshots of every stage, inside the output folder (not shipped)


def build(out_root: str = DEMO_ROOT, device: str = "cpu", movqgan_steps: int | None = None,
          transformer_steps: int | None = None, verifier_steps: int | None = None, seed: int = 0,
          reuse_movqgan: bool = False, snapshot_every: int = 200, fresh: bool = False, log=print,
          decoder_steps: int | None = None) -> dict:
    """Train every stage and write the shipped files, resuming from the snapshots in <out_root>/.build/.
    reuse_movqgan: keep the MoVQGAN already in out_root (retrain only tokenizer, transformer, verifier).
    fresh: delete the snapshots first. The checkpoint folder is also written at every transformer
    snapshot, so a usable early version exists while training goes on."""
    folder = os.path.join(out_root, DEMO_MODEL_NAME)
    movqgan_path = os.path.join(out_root, os.path.basename(DEMO_MOVQGAN))
    state = os.path.join(out_root, STATE_DIR)
    if fresh:
        shutil.rmtree(state, ignore_errors=True)
    os.makedirs(folder, exist_ok=True)
    seconds, curves = {}, {}

    vq_cfg = train_movqgan.MoVQGANTrainConfig(seed=seed)
    if movqgan_steps is not None:
        vq_cfg.steps = movqgan_steps
    if decoder_steps is not None:
        vq_cfg.decoder_steps = decoder_steps
    if reuse_movqgan:
        log(f"[1/4] MoVQGAN: reusing {movqgan_path}")
    else:
        log(f"[1/4] MoVQGAN: {vq_cfg}")
        movqgan, vq_losses, seconds["movqgan"] = train_movqgan.train(
            vq_cfg, device=device, log=log, state_path=os.path.join(state, "movqgan.pt"),
            snapshot_every=snapshot_every)
        curves["movqgan"] = loss_curve(vq_losses)
        train_movqgan.save(movqgan, movqgan_path)
        if vq_cfg.decoder_steps:  # from the saved fp16 weights, so the codes are the shipped ones
            movqgan, dec_losses, seconds["movqgan_decoder"] = train_movqgan.finetune_decoder(
                MoVQGAN.from_file(movqgan_path), vq_cfg, device, log,
                state_path=os.path.join(state, "movqgan_decoder.pt"), snapshot_every=snapshot_every)
            curves["movqgan_decoder"] = loss_curve(dec_losses)
            train_movqgan.save(movqgan, movqgan_path)
    # the fp16 file that ships: transformer training codes are exactly what users' encoder gives
    shipped_vq = MoVQGAN.from_file(movqgan_path)
    vq_stats = train_movqgan.reconstruction_stats(shipped_vq)
    log(f"      reconstruction: {vq_stats}")

    log("[2/4] tokenizer")
    save_tokenizer(folder, build_tokenizer(shipped_vq.num_codes, seed=seed))
    tokenizer = TextTokenizer.from_pretrained(folder)

    tf_cfg = train_transformer.TransformerTrainConfig(seed=seed)
    if transformer_steps is not None:
        tf_cfg.steps = transformer_steps
    log(f"[3/4] transformer: {tf_cfg}")

    def snapshot(model, losses):
        partial = {**curves, "transformer": loss_curve(losses)}
        write_checkpoint(folder, model, _report(device, seconds, seed, vq_cfg, vq_stats, tf_cfg, model, losses,
                                                partial))
        log(f"      checkpoint after {len(losses)} steps -> {folder}")

    model, losses, seconds["transformer"] = train_transformer.train(
        tf_cfg, tokenizer, shipped_vq, device=device, log=log, snapshot_every=snapshot_every,
        on_snapshot=snapshot, state_path=os.path.join(state, "transformer.pt"))
    curves["transformer"] = loss_curve(losses)

    v_cfg = train_verifier.VerifierTrainConfig(seed=seed)
    if verifier_steps is not None:
        v_cfg.steps = verifier_steps
    log(f"[4/4] verifier: {v_cfg}")
    verifier, processor, v_losses, seconds["verifier"] = train_verifier.train(
        v_cfg, shipped_vq, log=log, state_path=os.path.join(state, "verifier.pt"), snapshot_every=snapshot_every)
    curves["verifier"] = loss_curve(v_losses)
    verifier_folder = os.path.join(out_root, DEMO_VERIFIER)
    train_verifier.save(verifier, processor, verifier_folder)
    v_stats = {"config": asdict(v_cfg), "params": sum(p.numel() for p in verifier.parameters()),
               "final_loss": sum(v_losses[-100:]) / max(1, len(v_losses[-100:])),
               "held_out_scenes": train_verifier.ranking_accuracy(verifier_folder, movqgan=shipped_vq),
               "held_out_triples": train_verifier.ranking_accuracy(verifier_folder, held_out_only=True,
                                                                   movqgan=shipped_vq)}
    log(f"      verifier: {v_stats['held_out_scenes']} {v_stats['held_out_triples']}")

    report = _report(device, seconds, seed, vq_cfg, vq_stats, tf_cfg, model, losses, curves, v_stats)
    write_checkpoint(folder, model, report)
    log(f"done: {report['seconds'] / 60:.1f} min of training in all runs -> {out_root}")
    return report


def main(argv=None):
    p = argparse.ArgumentParser(description="Train the shapes demo and write demo_model/")
    p.add_argument("--out", default=DEMO_ROOT)
    p.add_argument("--device", default="cpu")
    p.add_argument("--movqgan-steps", type=int)
    p.add_argument("--decoder-steps", type=int, help="MoVQGAN decoder-only steps after the joint ones")
    p.add_argument("--transformer-steps", type=int)
    p.add_argument("--verifier-steps", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reuse-movqgan", action="store_true", help="keep the MoVQGAN in --out, retrain the rest")
    p.add_argument("--snapshot-every", type=int, default=200,
                   help="snapshot every stage (and write the checkpoint) every N steps; 0: only at the end")
    p.add_argument("--fresh", action="store_true", help="delete the snapshots in <out>/.build/ first")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    build(args.out, args.device, args.movqgan_steps, args.transformer_steps, args.verifier_steps, args.seed,
          args.reuse_movqgan, args.snapshot_every, args.fresh, decoder_steps=args.decoder_steps)


if __name__ == "__main__":
    main()
