"""The transformer against an independent implementation (transformers' Chameleon), and the cache paths
against the full forward."""
import json

import pytest
import torch

from builders import randomize_, tiny_checkpoint, tiny_config, tiny_tokenizer
from lumina_core import KVCache, LuminaMGPT
from lumina_core.model.checkpoint_writer import save_tokenizer, save_weights
from lumina_core.model.transformer import decode_mask




def _hf_chameleon(vocab_size, num_kv_heads, seed=1, swin_norm=False):
    from transformers import ChameleonConfig, ChameleonForConditionalGeneration

    cfg = ChameleonConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                          num_attention_heads=4, num_key_value_heads=num_kv_heads, max_position_embeddings=512,
                          rms_norm_eps=1e-5, rope_theta=10000.0, vocabulary_map={}, attn_implementation="eager",
                          swin_norm=swin_norm)
    torch.manual_seed(0)
    model = ChameleonForConditionalGeneration(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "vqmodel" in name:
                continue
            base = 1.0 if name.endswith("norm.weight") else 0.0  # q/k-norm weights AND biases random too
            p.copy_(base + 0.2 * torch.randn(p.shape, generator=g))
    return model, cfg


@pytest.mark.parametrize("num_kv_heads,swin_norm", [(4, False), (2, False), (4, True)])
def test_logits_match_transformers_chameleon(tmp_path, num_kv_heads, swin_norm):
    tok = tiny_tokenizer(64)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    ref_model, cfg = _hf_chameleon(vocab, num_kv_heads, swin_norm=swin_norm)
    state = ref_model.state_dict()
    assert tuple(state["model.layers.0.self_attn.q_norm.weight"].shape) == (4, 16)  # (heads, head_dim) layout
    assert state["model.layers.0.self_attn.k_norm.bias"].abs().sum() > 0
    save_weights(str(tmp_path), state, shards=3)  # sharded, with the VQ keys transformers adds (ignored)
    save_tokenizer(str(tmp_path), tok)
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))

    ours = LuminaMGPT.from_pretrained(str(tmp_path), dtype=torch.float32)
    assert ours.config.swin_norm == swin_norm
    ids = torch.randint(0, vocab, (2, 37), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = ref_model(input_ids=ids).logits.float()
    got = ours(ids)
    assert got.dtype == torch.float32 and got.shape == (2, 37, vocab)
    assert (got - expected).abs().max().item() < 1e-4


def test_upstream_qk_norm_shape_equals_per_head_copy(tmp_path):
    """Upstream stores q/k-norm as (1, head_dim); repeating that row per head ((heads, head_dim), the
    transformers layout) must give the same model."""
    import shutil

    folder, _ = tiny_checkpoint(tmp_path / "upstream", shards=1)
    upstream = LuminaMGPT.from_pretrained(folder, dtype=torch.float32)
    assert upstream.config.q_norm_groups == 1 and upstream.config.k_norm_groups == 1
    state = upstream.state_dict()
    per_head = {k: (v.expand(4, -1).clone() if k.endswith(("_norm.weight", "_norm.bias")) and v.ndim == 2 else v)
                for k, v in state.items()}
    shutil.copytree(folder, tmp_path / "per_head")
    save_weights(str(tmp_path / "per_head"), per_head)
    other = LuminaMGPT.from_pretrained(str(tmp_path / "per_head"), dtype=torch.float32)
    assert other.config.q_norm_groups == 4
    ids = torch.randint(0, upstream.config.vocab_size, (1, 12))
    assert torch.allclose(other(ids), upstream(ids), atol=1e-5)


def _model(vocab=200, **kw):
    return randomize_(LuminaMGPT(tiny_config(vocab, **kw)), seed=3).eval()


def test_cached_incremental_decoding_equals_full_forward():
    model = _model()
    ids = torch.randint(0, 200, (2, 25))
    full = model(ids)
    cache = KVCache.for_model(model, 2, 40)
    outs = []
    # a prefill of 9 tokens, then one token at a time, then a 4-token window
    for a, b in [(0, 9)] + [(i, i + 1) for i in range(9, 21)] + [(21, 25)]:
        slots = cache.slots(b - a)
        outs.append(model.forward_step(ids[:, a:b], cache, slots, kv_len=b))
        cache.length = b
    assert torch.allclose(torch.cat(outs, 1), full, atol=1e-4)


def test_rollback_then_rewrite_matches_full_forward():
    model = _model()
    ids = torch.randint(0, 200, (1, 20))
    junk = torch.randint(0, 200, (1, 6))
    cache = KVCache.for_model(model, 1, 40)
    model.forward_step(ids[:, :14], cache, cache.slots(14), kv_len=14)
    cache.length = 14
    model.forward_step(junk, cache, cache.slots(6), kv_len=20)  # speculative tokens, then rejected
    cache.length = 20
    cache.rollback(6)
    out = model.forward_step(ids[:, 14:], cache, cache.slots(6), kv_len=20)
    assert torch.allclose(out, model(ids)[:, 14:], atol=1e-4)


def test_batched_cfg_step_equals_two_separate_forwards():
    """Cond and uncond streams of different lengths in one batch (left padding, own positions)."""
    model = _model()
    cond = torch.randint(0, 200, (1, 17))
    uncond = cond[:, 11:].clone()  # the unconditional stream starts later, at position 0
    gen = torch.randint(0, 200, (1, 5))
    pad = cond.shape[1] - uncond.shape[1]
    batch = torch.cat([cond, torch.cat([torch.zeros(1, pad, dtype=torch.long), uncond], 1)], 0)
    cache = KVCache.for_model(model, 2, 40)
    cache.starts = torch.tensor([0, pad])
    first = model.forward_step(batch, cache, cache.slots(17), kv_len=17, last_only=True)
    cache.length = 17
    steps = [first]
    for t in range(gen.shape[1]):
        tok = gen[:, t:t + 1].expand(2, 1)
        steps.append(model.forward_step(tok, cache, cache.slots(1), kv_len=cache.length + 1))
        cache.length += 1
    batched = torch.cat(steps, 1)
    ref_c = model(torch.cat([cond, gen], 1))[:, 16:]
    ref_u = model(torch.cat([uncond, gen], 1))[:, uncond.shape[1] - 1:]
    assert torch.allclose(batched[0], ref_c[0], atol=1e-4)
    assert torch.allclose(batched[1], ref_u[0], atol=1e-4)


def test_image_rows_logits_are_a_slice_of_the_full_logits():
    model = _model()
    ids = torch.randint(0, 200, (2, 6))
    cache = KVCache.for_model(model, 2, 8)
    rows = model.forward_step(ids, cache, cache.slots(6), kv_len=6, rows=(120, 184))
    assert rows.shape == (2, 6, 64)
    assert torch.allclose(rows, model(ids)[..., 120:184], atol=1e-5)


def test_decode_mask_hides_padding_and_future():
    starts = torch.tensor([0, 3])
    m = decode_mask(starts, torch.tensor([4, 5]), kv_len=7)[:, 0]
    assert m[0, 0].tolist() == [True] * 5 + [False] * 2
    assert m[1, 1].tolist() == [False] * 3 + [True] * 3 + [False]
    pad_query = decode_mask(starts, torch.tensor([1]), kv_len=3)[1, 0, 0]
    assert pad_query.tolist() == [False, True, False]  # a padding slot only sees itself


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_loads_in_each_dtype(tmp_path, dtype):
    folder, _ = tiny_checkpoint(tmp_path, shards=2, dtype=torch.bfloat16)
    model = LuminaMGPT.from_pretrained(folder, dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {dtype}
    ids = torch.randint(0, model.config.vocab_size, (1, 8))
    ref = LuminaMGPT.from_pretrained(folder, dtype=torch.float32)(ids)
    out = model(ids)
    assert out.dtype == torch.float32
    assert (out - ref).abs().max() < (1e-5 if dtype == torch.float32 else 0.5)


def test_swin_norm_variant_runs_and_differs():
    a = _model(swin_norm=False)
    b = _model(swin_norm=True)
    b.load_state_dict(a.state_dict())
    ids = torch.randint(0, 200, (1, 5))
    assert not torch.allclose(a(ids), b(ids))


def test_flash_attn_backend_without_package_is_a_clear_error():
    model = _model()
    try:
        import flash_attn  # noqa: F401
        pytest.skip("flash-attn is installed here")
    except ImportError:
        pass
    with pytest.raises(ImportError, match="attention='sdpa'"):
        model.set_attention_backend("flash_attn")


def test_eager_attention_backend_matches_sdpa():
    model = _model()
    ids = torch.randint(0, 200, (2, 9))
    ref = model(ids)
    model.set_attention_backend("eager")
    assert torch.allclose(model(ids), ref, atol=1e-4)
