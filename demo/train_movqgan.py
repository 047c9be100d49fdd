"""Train the demo's MoVQGAN image tokenizer (the engine's MoVQGAN class, f=8) on generated shapes.

Vector quantisation with a straight-through estimator and a commitment loss; the codebook is an
exponential moving average of the encoder outputs assigned to each code (no codebook gradient), and
codes that stop being used are restarted on random encoder outputs of the current batch, so most
of the codebook stays in use. Loss: MSE + L1 on pixels (no GAN or perceptual loss: flat synthetic
shapes need neither). Then the decoder alone is trained further on the frozen codes (cheaper per
step, and it is what sharpens corners). Images are drawn fresh for every step from a seeded generator.

    python -m demo.train_movqgan --out /tmp/movqgan.safetensors --steps 2000
"""
from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lumina_core.image.movqgan import MoVQGAN, MoVQGANConfig

from .shapes import SceneSampler, step_rng
from .snapshots import GeneratorState, Stage


@dataclass
class MoVQGANTrainConfig:
    steps: int = 1600
    batch: int = 24
    lr: float = 1e-3
    warmup: int = 50
    seed: int = 0
    edge_share: float = 0.25       # share of edge-map images (the dual-panel tasks need them too)
    ch: int = 32
    ch_mult: tuple = (1, 1, 2, 2)  # f = 8; (1, 2, 4, 4) costs 2x per step on 2 cores (measured)
    num_res_blocks: int = 1
    n_embed: int = 512
    embed_dim: int = 8             # 4-dim codes could not hold colour pair + outline (28.8 dB)
    beta: float = 0.25             # commitment weight
    ema_decay: float = 0.99
    restart_every: int = 25        # steps between dead-code restarts
    dead_below: float = 0.03       # EMA assignments per step under which a code counts as dead
    decoder_steps: int = 600       # then the decoder alone, on the frozen encoder's codes
    decoder_lr: float = 5e-4

    def model_config(self) -> MoVQGANConfig:
        return MoVQGANConfig(ch=self.ch, ch_mult=tuple(self.ch_mult), num_res_blocks=self.num_res_blocks,
                             attn_levels=(len(self.ch_mult) - 1,), decoder_attn_levels=(len(self.ch_mult) - 1,),
                             z_channels=self.embed_dim, embed_dim=self.embed_dim, n_embed=self.n_embed)


def to_signed(images: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float32 [B, 3, H, W] in [-1, 1] (what MoVQGAN.encode takes)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).contiguous()


def image_batch(rng: np.random.Generator, n: int, edge_share: float) -> np.ndarray:
    """n training images (uint8 [n, 64, 64, 3]): shape scenes, a share of them as edge maps."""
    sampler = SceneSampler(rng, exclude_held_out=True)
    out = []
    for _ in range(n):
        scene = sampler.any()
        out.append(scene.edges() if rng.random() < edge_share else scene.render())
    return np.stack(out)


class EMACodebook:
    """EMA k-means updates and dead-code restarts for `model.quantize.embedding`."""

    def __init__(self, embedding: torch.nn.Embedding, decay: float):
        self.weight = embedding.weight
        self.decay = decay
        self.counts = torch.ones(self.weight.shape[0], device=self.weight.device)
        self.sums = self.weight.detach().clone()

    def state_dict(self) -> dict:  # the weight itself lives in the model's state
        return {"counts": self.counts, "sums": self.sums}

    def load_state_dict(self, state: dict) -> None:
        self.counts.copy_(state["counts"])
        self.sums.copy_(state["sums"])

    @torch.no_grad()
    def update(self, flat: torch.Tensor, codes: torch.Tensor) -> None:
        n = self.weight.shape[0]
        onehot = F.one_hot(codes, n).float()
        self.counts.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.sums.mul_(self.decay).add_(onehot.t() @ flat, alpha=1 - self.decay)
        self.weight.copy_(self.sums / self.counts.clamp(min=1e-5)[:, None])

    @torch.no_grad()
    def restart_dead(self, flat: torch.Tensor, generator: torch.Generator, threshold: float) -> int:
        dead = (self.counts < threshold).nonzero().flatten()
        if len(dead) == 0:
            return 0
        # drawn on the CPU so a run is the same sequence of restarts on any device
        pick = torch.randint(0, flat.shape[0], (len(dead),), generator=generator).to(flat.device)
        noise = 0.01 * torch.randn(len(dead), flat.shape[1], generator=generator).to(flat.device)
        self.weight[dead] = flat[pick] + noise
        self.sums[dead] = self.weight[dead]
        self.counts[dead] = 1.0
        return len(dead)


def quantise(model: MoVQGAN, images: torch.Tensor):
    """Encoder -> quant_conv -> nearest code. Returns (z, codes, straight-through latent)."""
    z = model.quant_conv(model.encoder(images))
    codes = model.quantize.nearest(z.detach())
    q = model.quantize.lookup(codes)
    return z, codes, z + (q - z).detach()


def lr_at(step: int, steps: int, peak: float, warmup: int, floor: float = 0.05) -> float:
    """Linear warm-up, then cosine decay to `floor` x the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def pixel_loss(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(recon, target) + 0.5 * F.l1_loss(recon, target)


def train(cfg: MoVQGANTrainConfig, device="cpu", log=print, log_every: int = 50, state_path: str | None = None,
          snapshot_every: int = 200) -> tuple[MoVQGAN, list[float], float]:
    """Train from scratch, or resume from `state_path` (written every `snapshot_every` steps and at the
    end). Returns the model (eval mode, on CPU), the loss of every step and the seconds spent in all runs."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    model = MoVQGAN(cfg.model_config()).to(device)
    book = EMACodebook(model.quantize.embedding, cfg.ema_decay)
    model.quantize.embedding.weight.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.99))
    stage = Stage("movqgan", state_path, asdict(cfg), cfg.steps,
                  {"model": model, "opt": opt, "book": book, "gen": GeneratorState(gen)}, log)
    losses = stage.losses
    for step in range(stage.start, cfg.steps):
        x = to_signed(image_batch(step_rng(cfg.seed, step), cfg.batch, cfg.edge_share)).to(device)
        z, codes, q = quantise(model, x)
        flat = z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        if step == 0:  # start the codebook on real encoder outputs
            book.restart_dead(flat, gen, threshold=float("inf"))
            codes = model.quantize.nearest(z.detach())
            q = z + (model.quantize.lookup(codes) - z).detach()
        recon = model.decoder(model.post_quant_conv(q), q)
        commit = F.mse_loss(z, model.quantize.lookup(codes).detach())
        loss = pixel_loss(recon, x) + cfg.beta * commit
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg.steps, cfg.lr, cfg.warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        book.update(flat, codes.flatten())
        if (step + 1) % cfg.restart_every == 0 and step < cfg.steps * 0.9:
            book.restart_dead(flat, gen, cfg.dead_below)
        losses.append(loss.item())
        if log and (step + 1) % log_every == 0:
            mse = F.mse_loss(recon.detach().clamp(-1, 1), x).item() / 4  # in 0..1 units
            log(f"movqgan step {step + 1}/{cfg.steps} loss {loss.item():.4f} psnr {10 * math.log10(1 / mse):.2f} "
                f"used {(book.counts > cfg.dead_below).sum().item()}/{cfg.n_embed} "
                f"{stage.seconds():.0f}s")
        stage.after_step(step, snapshot_every)
    stage.finish()
    return model.cpu().eval().requires_grad_(False), losses, stage.seconds()


def finetune_decoder(model: MoVQGAN, cfg: MoVQGANTrainConfig, device="cpu", log=print,
                     log_every: int = 50, state_path: str | None = None,
                     snapshot_every: int = 200) -> tuple[MoVQGAN, list[float], float]:
    """Train only the decoder (and post_quant_conv) on the codes of the frozen encoder and codebook.
    The codes do not change, so a transformer trained on them stays valid; the decoder gets the
    steps it needs for sharp corners without the cost of the encoder's backward pass. Resumable
    like `train`."""
    torch.manual_seed(cfg.seed + 2)
    model = model.to(device).train().requires_grad_(False)
    params = list(model.decoder.parameters()) + list(model.post_quant_conv.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=cfg.decoder_lr, betas=(0.9, 0.99))
    stage = Stage("movqgan decoder", state_path, asdict(cfg), cfg.decoder_steps, {"model": model, "opt": opt}, log)
    losses = stage.losses
    for step in range(stage.start, cfg.decoder_steps):
        x = to_signed(image_batch(step_rng(cfg.seed + 1, step), cfg.batch, cfg.edge_share)).to(device)
        with torch.no_grad():
            q = model.quantize.lookup(model.encode(x))
        recon = model.decoder(model.post_quant_conv(q), q)
        loss = pixel_loss(recon, x)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg.decoder_steps, cfg.decoder_lr, cfg.warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if log and (step + 1) % log_every == 0:
            log(f"movqgan decoder step {step + 1}/{cfg.decoder_steps} loss {loss.item():.4f} "
                f"{stage.seconds():.0f}s")
        stage.after_step(step, snapshot_every)
    stage.finish()
    return model.cpu().eval().requires_grad_(False), losses, stage.seconds()


@torch.no_grad()
def reconstruction_stats(model: MoVQGAN, n: int = 256, seed: int = 999, edge_share: float = 0.0) -> dict:
    """PSNR (dB, 0..1 pixel scale, after rounding to 8 bits) and codebook use on fresh images."""
    images = image_batch(np.random.default_rng(seed), n, edge_share)
    codes = torch.cat([model.encode(to_signed(images[i:i + 64])) for i in range(0, n, 64)])
    recon = torch.cat([model.decode(codes[i:i + 64]) for i in range(0, n, 64)])
    rec8 = ((recon.clamp(-1, 1) + 1) * 127.5).round()
    mse = (rec8 - torch.from_numpy(images).permute(0, 3, 1, 2).float()).div(255).pow(2).mean(dim=(1, 2, 3))
    psnr = 10 * torch.log10(1 / mse.clamp(min=1e-10))
    return {"psnr_mean": float(psnr.mean()), "psnr_min": float(psnr.min()),
            "codes_used": int(codes.unique().numel()), "codebook": model.num_codes}


def save(model: MoVQGAN, path: str, dtype=torch.float16) -> None:
    from safetensors.torch import save_file
    save_file({k: v.to(dtype) for k, v in model.state_dict_for_save().items()}, path,
              metadata={"format": "pt", "note": "Lumina-mGPT 2.0 shapes demo MoVQGAN"})


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=MoVQGANTrainConfig.steps)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    cfg = MoVQGANTrainConfig(steps=args.steps, seed=args.seed)
    model, _, _ = train(cfg, device=args.device)
    save(model, args.out)
    if cfg.decoder_steps:  # from the saved (fp16-rounded) weights, as build_demo does
        model, _, _ = finetune_decoder(MoVQGAN.from_file(args.out), cfg, device=args.device)
        save(model, args.out)
    print({"config": asdict(cfg), **reconstruction_stats(model)})


if __name__ == "__main__":
    main()
