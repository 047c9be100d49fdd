"""Train the demo's Lumina-mGPT transformer (the engine's LuminaMGPT class) on generated shapes.

Training sequences are built by the engine's own `build_prompt`, so they match inference exactly:
    [BOS] template+caption [SEP] <racm3:break> <grid h> <grid w> (codes <reserved08799>) x rows <eoss>
With probability `text_dropout` a sample keeps only what the engine's unconditional CFG stream holds
(the image block, plus the given condition rows for control tasks), so classifier-free guidance has
an unconditional model to contrast with. A share of steps trains the dual-panel tasks at 64x128:
'pair_canny' (image above, its Canny edge map below, both generated) and 'control_canny' (edge map
above, given; image below).

Loss: next-token cross-entropy on every token of the image block after the grid tokens (codes, row
ends, end of image), the condition rows of control samples included, as upstream trains the image
part of a sequence; the prompt text itself is not a target.

    python -m demo.train_transformer --tokenizer DIR --movqgan FILE --out DIR --steps 3000
"""
from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lumina_core import LuminaConfig, LuminaMGPT, MoVQGAN, TextTokenizer
from lumina_core.model.checkpoint_writer import save_checkpoint
from lumina_core.decoding.tasks import build_prompt, image_rows_to_ids

from .shapes import SceneSampler, step_rng
from .snapshots import Stage
from .train_movqgan import lr_at, to_signed
from .train_tokenizer import task_canvas


@dataclass
class TransformerTrainConfig:
    steps: int = 4000               # 2500 left the loss still falling (v2)
    batch: int = 32                 # t2i sequences per step; dual-panel steps take half as many
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.01
    seed: int = 0
    text_dropout: float = 0.1
    dual_share: float = 0.3         # share of steps that train pair_canny / control_canny
    hidden_size: int = 192          # about compute-optimal for the CPU budget (~1e14 FLOPs)
    num_layers: int = 5
    num_heads: int = 6
    intermediate_size: int = 512
    max_positions: int = 512

    def model_config(self, vocab_size: int) -> LuminaConfig:
        return LuminaConfig(vocab_size=vocab_size, hidden_size=self.hidden_size,
                            intermediate_size=self.intermediate_size, num_hidden_layers=self.num_layers,
                            num_attention_heads=self.num_heads, num_key_value_heads=self.num_heads,
                            max_position_embeddings=self.max_positions)


def training_sequence(tokenizer: TextTokenizer, task: str, caption: str, image_codes: torch.Tensor,
                      edge_codes: torch.Tensor | None, drop_text: bool) -> tuple[list[int], int]:
    """(token ids, index of the first loss target) of one sample, laid out by the engine's build_prompt."""
    sp = tokenizer.special
    width, height = task_canvas(task)
    condition = edge_codes if task == "control_canny" else None
    plan = build_prompt(tokenizer, task, caption, width, height, condition_codes=condition)
    prompt = plan.uncond_ids if drop_text else plan.cond_ids
    if task == "t2i":
        block = image_rows_to_ids(image_codes, sp)
    elif task == "pair_canny":     # image above, its edge map below
        block = image_rows_to_ids(image_codes, sp) + image_rows_to_ids(edge_codes, sp)
    else:                          # control_canny: the edge rows are already in the prompt
        block = image_rows_to_ids(image_codes, sp)
    head_end = len(prompt) - (len(image_rows_to_ids(condition, sp)) if condition is not None else 0)
    return prompt + block + [sp.image_end], head_end


@torch.no_grad()
def encode(movqgan: MoVQGAN, images: np.ndarray) -> torch.Tensor:
    return movqgan.encode(to_signed(images)).cpu()


def make_batch(step: int, cfg: TransformerTrainConfig, tokenizer: TextTokenizer, movqgan: MoVQGAN):
    """(input ids [B, T], targets [B, T] with -100 where there is no loss) for one step."""
    rng = step_rng(cfg.seed, step)
    sampler = SceneSampler(rng, exclude_held_out=True)
    dual = rng.random() < cfg.dual_share
    n = cfg.batch // 2 if dual else cfg.batch
    scenes = [sampler.any() for _ in range(n)]
    images = np.stack([s.render() for s in scenes])
    image_codes = encode(movqgan, images)
    edge_codes = encode(movqgan, np.stack([s.edges() for s in scenes])) if dual else [None] * n
    seqs = []
    for i, scene in enumerate(scenes):
        task = ("pair_canny" if rng.random() < 0.5 else "control_canny") if dual else "t2i"
        drop = rng.random() < cfg.text_dropout
        seqs.append(training_sequence(tokenizer, task, scene.caption, image_codes[i], edge_codes[i], drop))
    T = max(len(ids) for ids, _ in seqs)
    inputs = torch.zeros(n, T - 1, dtype=torch.long)
    targets = torch.full((n, T - 1), -100, dtype=torch.long)
    for i, (ids, start) in enumerate(seqs):
        t = torch.tensor(ids)
        inputs[i, : len(ids) - 1] = t[:-1]
        targets[i, start - 1: len(ids) - 1] = t[start:]
    return inputs, targets


def init_weights_(model: LuminaMGPT, seed: int, std: float = 0.02) -> None:
    """GPT-2 style: normal(0, std) matrices, residual output projections scaled by 1/sqrt(2 * layers)."""
    g = torch.Generator().manual_seed(seed)
    resid_std = std / math.sqrt(2 * model.config.num_hidden_layers)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                s = resid_std if name.endswith(("o_proj.weight", "down_proj.weight")) else std
                p.copy_(torch.randn(p.shape, generator=g) * s)


def schedule(step: int, cfg: TransformerTrainConfig) -> float:
    return lr_at(step, cfg.steps, cfg.lr, cfg.warmup, floor=0.1)


def build_model(cfg: TransformerTrainConfig, tokenizer: TextTokenizer) -> LuminaMGPT:
    torch.manual_seed(cfg.seed)
    model = LuminaMGPT(cfg.model_config(len(tokenizer)))
    init_weights_(model, cfg.seed)
    model.tokenizer = tokenizer
    return model


def train(cfg: TransformerTrainConfig, tokenizer: TextTokenizer, movqgan: MoVQGAN, device="cpu",
          log=print, log_every: int = 100, snapshot_every: int = 0, on_snapshot=None,
          state_path: str | None = None) -> tuple[LuminaMGPT, list[float], float]:
    """Train from scratch, or resume from `state_path` (written every `snapshot_every` steps and at the
    end). `on_snapshot(model, losses)` is called at every snapshot too (to ship usable early versions).
    Returns the model (eval mode, on CPU), the loss of every step and the seconds spent in all runs."""
    model = build_model(cfg, tokenizer).to(device)
    movqgan = movqgan.to(device)
    decay = [p for n, p in model.named_parameters() if p.ndim == 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim != 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
    stage = Stage("transformer", state_path, asdict(cfg), cfg.steps, {"model": model, "opt": opt}, log)
    losses = stage.losses
    model.train()
    for step in range(stage.start, cfg.steps):
        inputs, targets = make_batch(step, cfg, tokenizer, movqgan)
        inputs, targets = inputs.to(device), targets.to(device)
        logits = model(inputs)
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1), ignore_index=-100)
        for g in opt.param_groups:
            g["lr"] = schedule(step, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if log and (step + 1) % log_every == 0:
            recent = sum(losses[-log_every:]) / log_every
            log(f"transformer step {step + 1}/{cfg.steps} loss {recent:.4f} lr {schedule(step, cfg):.2e} "
                f"{stage.seconds():.0f}s")
        if step + 1 < cfg.steps and stage.after_step(step, snapshot_every) and on_snapshot:
            on_snapshot(model, losses)
            model.train()
    stage.finish()
    model = model.cpu().eval().requires_grad_(False)
    model.tokenizer = tokenizer
    return model, losses, stage.seconds()


def save(model: LuminaMGPT, folder: str, dtype=torch.float16) -> None:
    """config.json + model.safetensors + tokenizer.json/tokenizer_config.json (the released layout)."""
    save_checkpoint(folder, model, model.tokenizer.backend.tok, shards=1, dtype=dtype)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokenizer", required=True, help="folder with the demo tokenizer.json")
    p.add_argument("--movqgan", required=True, help="the demo MoVQGAN .safetensors")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--steps", type=int, default=TransformerTrainConfig.steps)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    cfg = TransformerTrainConfig(steps=args.steps, seed=args.seed)
    model, _, _ = train(cfg, TextTokenizer.from_pretrained(args.tokenizer), MoVQGAN.from_file(args.movqgan),
                     device=args.device)
    save(model, args.out)
    print({"config": asdict(cfg)})


if __name__ == "__main__":
    main()
