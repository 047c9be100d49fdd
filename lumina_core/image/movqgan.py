"""SBER-MoVQGAN image tokenizer (f=8), with the original checkpoint's key names.

Every hyper-parameter (channels, multipliers, blocks per level, attention levels, codebook) is read
from the tensor shapes, so the 67M/102M/270M releases and tiny test models load without a config.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError

NUM_GROUPS = 32  # taming-style GroupNorm


@dataclass(frozen=True)
class MoVQGANConfig:
    in_channels: int = 3
    out_channels: int = 3
    ch: int = 256
    ch_mult: tuple = (1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_levels: tuple = (3,)          # encoder levels (0 = full resolution) with attention blocks
    decoder_attn_levels: tuple = (3,)
    z_channels: int = 4
    double_z: bool = False
    embed_dim: int = 4
    n_embed: int = 16384

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


def _gn(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(NUM_GROUPS, channels, eps=1e-6, affine=True)


class SpatialNorm(nn.Module):
    """GroupNorm whose scale and shift come from the quantised latent (the "MoVQ" decoder norm)."""

    def __init__(self, channels: int, zq_channels: int):
        super().__init__()
        self.norm_layer = _gn(channels)
        self.conv_y = nn.Conv2d(zq_channels, channels, 1)
        self.conv_b = nn.Conv2d(zq_channels, channels, 1)

    def forward(self, x, zq):
        zq = F.interpolate(zq, size=x.shape[-2:], mode="nearest")
        return self.norm_layer(x) * self.conv_y(zq) + self.conv_b(zq)


def _norm(channels, zq_channels):
    # Registered directly (not wrapped) so key names match the original: norm1.weight vs
    # norm1.norm_layer.weight / norm1.conv_y.weight.
    return SpatialNorm(channels, zq_channels) if zq_channels is not None else _gn(channels)


def _apply_norm(norm, x, zq):
    return norm(x, zq) if isinstance(norm, SpatialNorm) else norm(x)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, zq_channels: int | None = None):
        super().__init__()
        self.norm1 = _norm(cin, zq_channels)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = _norm(cout, zq_channels)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x, zq=None):
        h = self.conv1(F.silu(_apply_norm(self.norm1, x, zq)))
        h = self.conv2(F.silu(_apply_norm(self.norm2, h, zq)))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all spatial positions."""

    def __init__(self, channels: int, zq_channels: int | None = None):
        super().__init__()
        self.norm = _norm(channels, zq_channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x, zq=None):
        B, C, H, W = x.shape
        h = _apply_norm(self.norm, x, zq)
        q, k, v = (m(h).reshape(B, 1, C, H * W).transpose(-1, -2) for m in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(C), as the original
        return x + self.proj_out(out.transpose(-1, -2).reshape(B, C, H, W))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()


class _Mid(nn.Module):
    def __init__(self, channels: int, zq_channels: int | None):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, zq_channels)
        self.attn_1 = AttnBlock(channels, zq_channels)
        self.block_2 = ResnetBlock(channels, channels, zq_channels)

    def forward(self, x, zq=None):
        return self.block_2(self.attn_1(self.block_1(x, zq), zq), zq)


class Encoder(nn.Module):
    def __init__(self, cfg: MoVQGANConfig):
        super().__init__()
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        block_in = cfg.ch
        for i, mult in enumerate(cfg.ch_mult):
            level = _Level()
            block_out = cfg.ch * mult
            for _ in range(cfg.num_res_blocks):
                level.block.append(ResnetBlock(block_in, block_out))
                block_in = block_out
                if i in cfg.attn_levels:
                    level.attn.append(AttnBlock(block_in))
            if i != len(cfg.ch_mult) - 1:
                level.downsample = Downsample(block_in)
            self.down.append(level)
        self.mid = _Mid(block_in, None)
        self.norm_out = _gn(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * cfg.z_channels if cfg.double_z else cfg.z_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down:
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: MoVQGANConfig):
        super().__init__()
        zq = cfg.embed_dim
        block_in = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, padding=1)
        self.mid = _Mid(block_in, zq)
        up = []
        for i in reversed(range(len(cfg.ch_mult))):
            level = _Level()
            block_out = cfg.ch * cfg.ch_mult[i]
            for _ in range(cfg.num_res_blocks + 1):
                level.block.append(ResnetBlock(block_in, block_out, zq))
                block_in = block_out
                if i in cfg.decoder_attn_levels:
                    level.attn.append(AttnBlock(block_in, zq))
            if i != 0:
                level.upsample = Upsample(block_in)
            up.insert(0, level)  # stored in ascending level order, as the original
        self.up = nn.ModuleList(up)
        self.norm_out = SpatialNorm(block_in, zq)
        self.conv_out = nn.Conv2d(block_in, cfg.out_channels, 3, padding=1)

    def forward(self, z, zq):
        h = self.mid(self.conv_in(z), zq)
        for level in reversed(self.up):
            for j, block in enumerate(level.block):
                h = block(h, zq)
                if len(level.attn):
                    h = level.attn[j](h, zq)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h, zq)))


class VectorQuantizer(nn.Module):
    def __init__(self, n_embed: int, embed_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, C, h, w] -> index of the nearest codebook entry (L2) [B, h, w]."""
        B, C, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, C).float()
        emb = self.embedding.weight.float()
        d = flat.pow(2).sum(1, keepdim=True) + emb.pow(2).sum(1)[None, :] - 2 * flat @ emb.t()
        return d.argmin(1).view(B, h, w)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, h, w] -> quantised latent [B, C, h, w]."""
        return self.embedding(codes).permute(0, 3, 1, 2).contiguous()


def infer_config(sd: dict) -> MoVQGANConfig:
    """Read every hyper-parameter from the tensor shapes of a MoVQGAN state dict."""
    def shape(k):
        if k not in sd:
            raise CheckpointError(f"MoVQGAN checkpoint lacks {k}; is this a MoVQGAN file?")
        return tuple(sd[k].shape)

    conv_in = shape("encoder.conv_in.weight")
    ch, in_ch = conv_in[0], conv_in[1]
    levels = sorted({int(m.group(1)) for k in sd for m in [re.match(r"encoder\.down\.(\d+)\.", k)] if m})
    if not levels:
        raise CheckpointError("MoVQGAN checkpoint has no encoder.down.* levels")
    ch_mult = tuple(shape(f"encoder.down.{i}.block.0.conv1.weight")[0] // ch for i in levels)
    nrb = len({int(m.group(1)) for k in sd for m in [re.match(r"encoder\.down\.0\.block\.(\d+)\.", k)] if m})
    enc_attn = tuple(sorted({int(m.group(1)) for k in sd for m in [re.match(r"encoder\.down\.(\d+)\.attn\.", k)] if m}))
    dec_attn = tuple(sorted({int(m.group(1)) for k in sd for m in [re.match(r"decoder\.up\.(\d+)\.attn\.", k)] if m}))
    z_out = shape("encoder.conv_out.weight")[0]
    quant_conv = shape("quant_conv.weight")
    embed_dim, z_channels = quant_conv[0], quant_conv[1]
    n_embed, e_dim = shape("quantize.embedding.weight")
    if e_dim != embed_dim:
        raise CheckpointError(f"codebook width {e_dim} does not match quant_conv output {embed_dim}")
    return MoVQGANConfig(
        in_channels=in_ch, out_channels=shape("decoder.conv_out.weight")[0], ch=ch, ch_mult=ch_mult,
        num_res_blocks=nrb, attn_levels=enc_attn, decoder_attn_levels=dec_attn, z_channels=z_channels,
        double_z=(z_out == 2 * z_channels), embed_dim=embed_dim, n_embed=n_embed)


def _read_state_dict(path: str) -> dict:
    if not os.path.isfile(path):
        raise CheckpointError(f"MoVQGAN file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        try:
            return load_file(path, device="cpu")
        except Exception as e:
            raise CheckpointError(f"{path} is truncated or corrupt ({e}); re-download it.") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle arbitrary objects
    except Exception as e:
        raise CheckpointError(f"could not read {path} as a weights-only torch checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200]}). Is it a complete MoVQGAN .ckpt?") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a plain state dict of tensors.")
    return obj


class MoVQGAN(nn.Module):
    def __init__(self, cfg: MoVQGANConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    @property
    def downsample_factor(self) -> int:
        return self.config.downsample_factor

    @property
    def num_codes(self) -> int:
        return self.config.n_embed

    @property
    def device(self):
        return self.quant_conv.weight.device

    @property
    def dtype(self):
        return self.quant_conv.weight.dtype

    @classmethod
    def from_state_dict(cls, sd: dict, source: str = "state dict") -> "MoVQGAN":
        keys = list(sd)
        if any(k.startswith("model.layers.") or k.startswith("model.embed_tokens") for k in keys):
            raise CheckpointError(f"{source} holds the Lumina-mGPT transformer, not a MoVQGAN image tokenizer; "
                                  "load it with the model loader.")
        cfg = infer_config(sd)
        with torch.device("meta"):
            model = cls(cfg)
        expected = model.state_dict()
        missing = sorted(set(expected) - set(sd))
        unexpected = sorted(set(sd) - set(expected))
        if missing or unexpected:
            raise CheckpointError(f"{source} does not match a MoVQGAN of the inferred shape {cfg}: "
                                  f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        for k, v in sd.items():
            if tuple(v.shape) != tuple(expected[k].shape):
                raise CheckpointError(f"{source}: tensor {k} has shape {list(v.shape)}, expected "
                                      f"{list(expected[k].shape)}")
        model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True, assign=True)
        return model.eval().requires_grad_(False)

    @classmethod
    def from_file(cls, path: str, device="cpu", dtype=torch.float32) -> "MoVQGAN":
        """Load `movqgan_270M.ckpt` (weights-only torch.load) or a `.safetensors` copy, strictly."""
        if os.path.isdir(path):
            raise CheckpointError(f"{path} is a folder; pass the MoVQGAN file itself (movqgan_270M.ckpt or a "
                                  ".safetensors copy). The Lumina-mGPT transformer folder is loaded by the model loader.")
        sd = _read_state_dict(path)
        return cls.from_state_dict(sd, source=os.path.basename(path)).to(device=device, dtype=dtype)

    # ---------------------------------------------------------------- encode / decode
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] in [-1, 1], H and W multiples of the factor -> codes [B, H/f, W/f] (int64)."""
        f = self.downsample_factor
        if images.ndim != 4 or images.shape[1] != self.config.in_channels:
            raise ValueError(f"expected images [B, {self.config.in_channels}, H, W], got {tuple(images.shape)}")
        if images.shape[-1] % f or images.shape[-2] % f:
            raise ValueError(f"image size {tuple(images.shape[-2:])} must be a multiple of {f}")
        h = self.quant_conv(self.encoder(images.to(self.device, self.dtype)))
        return self.quantize.nearest(h)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, h, w] (any h, w) -> images [B, 3, h*f, w*f], roughly in [-1, 1]."""
        if codes.ndim == 2:
            codes = codes[None]
        if codes.min() < 0 or codes.max() >= self.num_codes:
            raise ValueError(f"codes must lie in [0, {self.num_codes}), got [{int(codes.min())}, {int(codes.max())}]")
        quant = self.quantize.lookup(codes.to(self.device).long()).to(self.dtype)
        return self.decoder(self.post_quant_conv(quant), quant)

    def state_dict_for_save(self) -> dict:
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
