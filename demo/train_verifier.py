"""Train the demo's best-of-N verifier: a small transformers CLIPModel that scores how well an image
matches a caption, saved as a normal CLIP folder (config.json, model.safetensors, tokenizer and
preprocessor files) so the pack's CLIP scorer loads it unchanged from models/clip_vision/.

It learns from captions and images only. Contrastive (InfoNCE) over the batch, plus one hard negative
caption per image: the same caption with one claim made false (a colour, a shape, a region, the size,
the count, or the relation between two objects), so it must read every word, not only the gist.
Half the images go through the demo MoVQGAN first, so it also knows what decoded images look like.

    python -m demo.train_verifier --movqgan demo_model/movqgan_shapes_demo.safetensors --out DIR --steps 1000
"""
from __future__ import annotations

import argparse
import re
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .shapes import (COLOUR_NAMES, COUNT_WORDS, IMAGE_SIZE, REGION_PHRASES, SHAPES, SIZES, SceneSampler,
                     step_rng, training_scenes)
from .snapshots import Stage
from .train_movqgan import lr_at, to_signed


@dataclass
class VerifierTrainConfig:
    steps: int = 1000
    batch: int = 64
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.05
    seed: int = 0
    roundtrip_share: float = 0.5    # images decoded from their MoVQGAN codes, as best-of-N will see
    hidden_size: int = 128
    vision_layers: int = 4
    text_layers: int = 3
    heads: int = 4
    intermediate_size: int = 256
    projection_dim: int = 64
    patch_size: int = 8
    max_text: int = 48


# ----------------------------------------------------------------------------- hard negatives
_COLOUR = re.compile(r"\b(" + "|".join(COLOUR_NAMES) + r")\b")
_SHAPE = re.compile(r"\b(" + "|".join(SHAPES) + r")(s?)\b")
_REGION = re.compile("|".join(re.escape(p) for p in REGION_PHRASES.values()))
_SIZE = re.compile(r"\b(" + "|".join(SIZES) + r")\b")
_COUNT = re.compile(r"^(" + "|".join(COUNT_WORDS.values()) + r") ")
_RELATION = re.compile(r" (to the left of|to the right of|above|below) ")
_OPPOSITE = {"to the left of": "to the right of", "to the right of": "to the left of", "above": "below",
             "below": "above"}


def _fix_articles(text: str) -> str:
    return re.sub(r"\b(a|an) (\w)", lambda m: ("an " if m.group(2) in "aeiou" else "a ") + m.group(2), text)


def _replace_one(pattern, text, rng, make):
    """Replace one random match of `pattern` by make(match); None when there is none."""
    matches = list(pattern.finditer(text))
    if not matches:
        return None
    m = matches[int(rng.integers(len(matches)))]
    return text[:m.start()] + make(m) + text[m.end():]


def _other(options, current, rng):
    rest = [o for o in options if o != current]
    return rest[int(rng.integers(len(rest)))]


def hard_negative(caption: str, rng: np.random.Generator) -> str:
    """The caption with exactly one claim made false (always a different string)."""
    edits = [
        lambda t: _replace_one(_COLOUR, t, rng, lambda m: _other(COLOUR_NAMES, m.group(1), rng)),
        lambda t: _replace_one(_SHAPE, t, rng, lambda m: _other(SHAPES, m.group(1), rng) + m.group(2)),
        lambda t: _replace_one(_REGION, t, rng, lambda m: _other(tuple(REGION_PHRASES.values()), m.group(0), rng)),
        lambda t: _replace_one(_SIZE, t, rng, lambda m: _other(tuple(SIZES), m.group(1), rng)),
        lambda t: _replace_one(_COUNT, t, rng, lambda m: _other(tuple(COUNT_WORDS.values()), m.group(1), rng) + " "),
        lambda t: _replace_one(_RELATION, t, rng, lambda m: f" {_OPPOSITE[m.group(1)]} "),
        _swap_related_objects,
    ]
    for i in rng.permutation(len(edits)):
        out = edits[i](caption)
        if out is not None and out != caption:
            return _fix_articles(out)
    raise ValueError(f"no false variant of {caption!r}")


def _swap_related_objects(text: str) -> str | None:
    """'a red circle above a blue square ...' -> 'a blue square above a red circle ...'."""
    m = _RELATION.search(text)
    if not m:
        return None
    left, right = text[:m.start()], text[m.end():]
    bg = re.search(r" on an? \w+ background$", right)
    tail = bg.group(0) if bg else ""
    right = right[:len(right) - len(tail)]
    return f"{right}{m.group(0)}{left}{tail}"


# ----------------------------------------------------------------------------- model files
def _bytes_to_unicode() -> list[str]:
    """The GPT-2/CLIP byte-level alphabet (printable bytes as themselves, the rest past 255)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, extra = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return [chr(c) for c in cs]


def build_clip_tokenizer(seed: int = 0):
    """A CLIPTokenizer whose merges spell every word of the demo's captions as one token (any other
    text still tokenizes, byte by byte)."""
    from transformers import CLIPTokenizer
    words = sorted({w for s in training_scenes(seed, 3000) for w in s.caption.lower().split()})
    alphabet = _bytes_to_unicode()
    merges, pieces = [], []
    for w in words:
        cur = w[0]
        for j, ch in enumerate(w[1:], start=1):
            nxt = ch + ("</w>" if j == len(w) - 1 else "")
            merges.append((cur, nxt))
            cur += nxt
            pieces.append(cur)
    merges = list(dict.fromkeys(merges))
    names = alphabet + [c + "</w>" for c in alphabet] + pieces + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(names))}
    import json
    import os
    import tempfile
    with tempfile.TemporaryDirectory() as d:  # CLIPTokenizer reads its vocabulary from files
        vocab_file, merges_file = os.path.join(d, "vocab.json"), os.path.join(d, "merges.txt")
        with open(vocab_file, "w", encoding="utf-8") as f:
            json.dump(vocab, f)
        with open(merges_file, "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
        tok = CLIPTokenizer(vocab_file, merges_file, model_max_length=48)
    return tok


def build_processor(cfg: VerifierTrainConfig, seed: int = 0):
    from transformers import CLIPImageProcessor, CLIPProcessor
    images = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return CLIPProcessor(image_processor=images, tokenizer=build_clip_tokenizer(seed))


def build_model(cfg: VerifierTrainConfig, tokenizer):
    from transformers import CLIPConfig, CLIPModel
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    common = dict(hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                  num_attention_heads=cfg.heads)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), num_hidden_layers=cfg.text_layers,
                         max_position_embeddings=cfg.max_text, bos_token_id=tokenizer.convert_tokens_to_ids(
                             "<|startoftext|>"), eos_token_id=eos, pad_token_id=eos, **common),
        vision_config=dict(image_size=IMAGE_SIZE, patch_size=cfg.patch_size, num_hidden_layers=cfg.vision_layers,
                           **common),
        projection_dim=cfg.projection_dim)
    torch.manual_seed(cfg.seed)
    return CLIPModel(config)


# ----------------------------------------------------------------------------- training
def make_batch(step: int, cfg: VerifierTrainConfig, movqgan, processor):
    """(pixel_values, input_ids, attention_mask) for B images, B true captions then B hard negatives."""
    rng = step_rng(cfg.seed + 7, step)
    sampler = SceneSampler(rng, exclude_held_out=True)
    scenes = [sampler.any() for _ in range(cfg.batch)]
    images = np.stack([s.render() for s in scenes])
    roundtrip = rng.random(cfg.batch) < cfg.roundtrip_share
    if movqgan is not None and roundtrip.any():
        with torch.no_grad():
            decoded = movqgan.decode(movqgan.encode(to_signed(images[roundtrip])))
        images[roundtrip] = ((decoded.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    texts = [s.caption for s in scenes] + [hard_negative(s.caption, rng) for s in scenes]
    inputs = processor(text=texts, images=list(images), return_tensors="pt", padding=True, truncation=True)
    return inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"]


def contrastive_loss(model, pixel_values, input_ids, attention_mask) -> torch.Tensor:
    out = model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)
    image = F.normalize(out.image_embeds, dim=-1)
    text = F.normalize(out.text_embeds, dim=-1)
    b = image.shape[0]
    logits = model.logit_scale.exp().clamp(max=100) * image @ text.t()       # [B, 2B]
    target = torch.arange(b)
    # image -> its caption among all captions and hard negatives; caption -> its image among the images
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits[:, :b].t(), target))


def train(cfg: VerifierTrainConfig, movqgan=None, log=print, log_every: int = 100, state_path: str | None = None,
          snapshot_every: int = 200):
    """Train (or resume from `state_path`). Returns (model, processor, losses, seconds over all runs)."""
    torch.manual_seed(cfg.seed)
    processor = build_processor(cfg, cfg.seed)
    model = build_model(cfg, processor.tokenizer)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
    stage = Stage("verifier", state_path, asdict(cfg), cfg.steps, {"model": model, "opt": opt}, log)
    losses = stage.losses
    model.train()
    for step in range(stage.start, cfg.steps):
        batch = make_batch(step, cfg, movqgan, processor)
        loss = contrastive_loss(model, *batch)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg.steps, cfg.lr, cfg.warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if log and (step + 1) % log_every == 0:
            log(f"verifier step {step + 1}/{cfg.steps} loss {sum(losses[-log_every:]) / log_every:.4f} "
                f"{stage.seconds():.0f}s")
        stage.after_step(step, snapshot_every)
    stage.finish()
    return model.eval().requires_grad_(False), processor, losses, stage.seconds()


def save(model, processor, folder: str) -> None:
    """A normal transformers CLIP folder (safetensors weights in float16: a few MB)."""
    model.to(torch.float16).save_pretrained(folder, safe_serialization=True)
    model.float()
    processor.save_pretrained(folder)


@torch.no_grad()
def ranking_accuracy(folder: str, n: int = 200, seed: int = 4242, held_out_only: bool = False,
                     movqgan=None) -> dict:
    """How often the verifier, loaded from its folder through the pack's CLIP scorer, scores the true
    caption of a scene above a hard negative (n scenes the training never drew; with held_out_only,
    scenes built from the held-out colour/shape/region triples)."""
    from lumina_core.decoding.scorers import CLIPScorer
    from .shapes import HELD_OUT
    scorer = CLIPScorer(folder, device="cpu")
    rng = np.random.default_rng(seed)
    sampler = SceneSampler(rng, exclude_held_out=False)
    wins = 0
    for i in range(n):
        if held_out_only:
            colour, kind, region = HELD_OUT[i % len(HELD_OUT)]
            scene = sampler.single(kind=kind, colour=colour, region=region)
        else:
            scene = sampler.any()
        image = scene.render()
        if movqgan is not None:
            image = ((movqgan.decode(movqgan.encode(to_signed(image[None])))[0].clamp(-1, 1) + 1) * 127.5
                     ).round().byte().permute(1, 2, 0).numpy()
        pixels = torch.from_numpy(image).float().div(255)[None]
        true = scorer.score(scene.caption, None, pixels)[0]
        false = scorer.score(hard_negative(scene.caption, rng), None, pixels)[0]
        wins += int(true > false)
    return {"n": n, "true_caption_ranked_first": wins / n, "held_out_only": held_out_only}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--movqgan", help="the demo MoVQGAN .safetensors (for round-tripped training images)")
    p.add_argument("--out", required=True, help="CLIP folder to write")
    p.add_argument("--steps", type=int, default=VerifierTrainConfig.steps)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    movqgan = None
    if args.movqgan:
        from lumina_core import MoVQGAN
        movqgan = MoVQGAN.from_file(args.movqgan)
    cfg = VerifierTrainConfig(steps=args.steps, seed=args.seed)
    model, processor, _, _ = train(cfg, movqgan)
    save(model, processor, args.out)
    print(ranking_accuracy(args.out, movqgan=movqgan), ranking_accuracy(args.out, held_out_only=True, movqgan=movqgan))


if __name__ == "__main__":
    main()
