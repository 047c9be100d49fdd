"""Builders for tiny checkpoints in the released file formats (real safetensors, real tokenizer.json)."""
from __future__ import annotations

import os

import torch

from lumina_core import LuminaConfig, LuminaMGPT
from lumina_core.model.checkpoint_writer import add_lumina_tokens, save_checkpoint, train_text_tokenizer
from lumina_core.image.movqgan import MoVQGAN, MoVQGANConfig

CORPUS = [
    "Generate an image of 64x64 according to the following prompt:\n",
    "Generate a dual-panel image of 64x128 where the <lower half> displays a <canny edge map>, while the "
    "<upper half> retains the original image for direct visual comparison:\n",
    "a red circle on a blue background", "two green squares", "a yellow triangle to the left of a purple star",
    "the quick brown fox jumps over the lazy dog 0123456789",
]


def tiny_tokenizer(num_codes: int = 64, layout: str = "released", max_grid_units: int = 40):
    tok = train_text_tokenizer(CORPUS * 4, vocab_size=300)
    add_lumina_tokens(tok, num_codes, max_grid_units=max_grid_units, layout=layout)
    return tok


def tiny_config(vocab_size: int, **kw) -> LuminaConfig:
    base = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048)
    base.update(kw)
    return LuminaConfig(**base)


def randomize_(model: torch.nn.Module, seed: int = 0, std: float = 0.2) -> torch.nn.Module:
    """Random weights everywhere, q/k-norm gamma and beta included, so parity tests cover them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))
    return model


def tiny_checkpoint(folder, num_codes: int = 64, layout: str = "released", shards: int = 2, seed: int = 0,
                    dtype=torch.float32, **cfg_kw):
    """Write a tiny random Lumina-mGPT checkpoint folder; returns (folder, tokenizers.Tokenizer)."""
    tok = tiny_tokenizer(num_codes, layout)
    cfg = tiny_config(tok.get_vocab_size(with_added_tokens=True), **cfg_kw)
    model = randomize_(LuminaMGPT(cfg), seed)
    save_checkpoint(str(folder), model, tok, shards=shards, dtype=dtype)
    return str(folder), tok


def tiny_movqgan_config(num_codes: int = 64, **kw) -> MoVQGANConfig:
    base = dict(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1, attn_levels=(3,), decoder_attn_levels=(3,),
                z_channels=4, embed_dim=4, n_embed=num_codes)
    base.update(kw)
    return MoVQGANConfig(**base)


def tiny_movqgan(num_codes: int = 64, seed: int = 0, **kw) -> MoVQGAN:
    torch.manual_seed(seed)
    m = MoVQGAN(tiny_movqgan_config(num_codes, **kw))
    with torch.no_grad():
        m.quantize.embedding.weight.normal_()
    return m.eval()


def released_layout_tokenizer(folder):
    """A word-level tokenizer.json with the 7B release's vocabulary size and special ids (151645 BOS,
    151665 image start, 151666 end, 151670 row end, codes 155000..171383, 171384 separator), so
    sequence tests can assert the real ids. Grid tokens sit in the reserved range after 151670."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from lumina_core.model.checkpoint_writer import image_code_token, save_tokenizer

    vocab = {f"w{i}": i for i in range(151645)}
    vocab.update({"<|im_end|>": 151645, "[UNK]": 151646})
    for i in range(151647, 151665):
        vocab[f"<qwen_special_{i}>"] = i
    vocab.update({"<racm3:break>": 151665, "<eoss>": 151666, "<reserved08796>": 151667, "<reserved08797>": 151668,
                  "<reserved08798>": 151669, "<reserved08799>": 151670})
    nid = 151671
    for n in range(1, 101):
        vocab[f"<reserved{8800 + n:05d}>"] = nid
        nid += 1
    while nid < 155000:
        vocab[f"<filler{nid}>"] = nid
        nid += 1
    for c in range(16384):
        vocab[image_code_token(c)] = 155000 + c
    vocab["<reserved08706>"] = 171384
    for word in "Generate an image of according to the following prompt: a red circle".split():
        vocab[word] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    from tokenizers import AddedToken
    tok.add_special_tokens([AddedToken(n, special=True) for n in vocab if n.startswith("<")])
    save_tokenizer(str(folder), tok)
    return str(folder)
