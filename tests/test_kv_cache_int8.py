"""The int8 KV cache: per token-and-head quantization, writes from prefill / steps / SJD windows, exact
rollback, one reused read buffer, and codes against the float cache.

Stated (demo model, fp32, greedy, the first 10 held-out prompts; BENCHMARKS.md): the int8 cache gives
the float cache's codes for 8 of 10 prompts, as many as rounding the float cache to bf16 does (8 of 10;
the two others differ in 5-25% of codes after one near-tie). The issue's ">= 9 of 10" is not reached:
this test holds the measured 8.
"""
import pytest
import torch

from builders import tiny_checkpoint
from lumina_core import KVCache, LuminaMGPT, generate
from lumina_core.kv_cache import kv_cache_format, quantize_kv
from lumina_core.sjd import SJDecoder

DEMO_GREEDY_IDENTICAL = 9   # of 10, demo v3 (v2: 8)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder, _ = tiny_checkpoint(tmp_path_factory.mktemp("m") / "ckpt", num_codes=64, shards=1)
    return LuminaMGPT.from_pretrained(folder, dtype=torch.float32)


def test_quantize_kv_error_is_within_half_a_step_per_token_and_head():
    x = torch.randn(2, 3, 7, 32) * torch.rand(2, 3, 7, 1) * 10 + torch.randn(32)  # per-vector ranges, channel offsets
    q, sz = quantize_kv(x)
    assert q.dtype == torch.int8 and sz.shape == (2, 3, 7, 2)
    back = q.float() * sz[..., :1] + sz[..., 1:]
    assert bool(((back - x).abs() <= sz[..., :1] / 2 + 1e-5).all())


def test_int8_cache_bytes_match_the_estimate_and_read_one_layer(model):
    cfg = model.config
    cache = KVCache.for_model(model, 4, 128, "int8")
    assert cache.nbytes() == KVCache.estimate_bytes(cfg, 4, 128, model.compute_dtype, "int8")
    dense = KVCache.for_model(model, 4, 128)
    assert dense.nbytes() == KVCache.estimate_bytes(cfg, 4, 128, model.compute_dtype)
    # values 1 byte instead of 4 (fp32 here), 8 bytes of scale+zero per token and head, one layer of read buffers
    per_layer_dense = dense.nbytes() // cfg.num_hidden_layers
    assert cache.nbytes() == cfg.num_hidden_layers * (per_layer_dense // 4 + 2 * 4 * cfg.num_key_value_heads * 128 * 8) \
        + per_layer_dense
    with pytest.raises(ValueError, match="format"):
        KVCache.for_model(model, 1, 8, "fp4")


def test_rollback_and_rewrite_equal_a_single_write(model):
    """SJD overwrites rejected slots: after rollback and a rewrite, every slot (values and scales) is what
    a cache written once with the final tokens holds."""
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    wrong = ids.clone()
    wrong[:, 8:] = (wrong[:, 8:] + 5) % model.config.vocab_size
    once, twice = KVCache.for_model(model, 2, 16, "int8"), KVCache.for_model(model, 2, 16, "int8")
    a = model.forward_step(ids, once, once.slots(12), 12)
    model.forward_step(wrong, twice, twice.slots(12), 12)
    twice.length = 12
    twice.rollback(4)
    b = model.forward_step(ids[:, 8:], twice, twice.slots(4), 12)
    torch.testing.assert_close(b, a[:, 8:], rtol=0, atol=0)
    for x, y in zip(once.tensors(), twice.tensors()):
        assert torch.equal(x[:, :, :12], y[:, :, :12])


@pytest.mark.parametrize("init", ["random", "spatial"])
def test_greedy_sjd_with_int8_cache_equals_plain_with_int8_cache(model, init):
    kw = dict(cfg=3.0, top_k=1, seed=4, batch_size=2)  # a batch of 2: per-row window slots
    with kv_cache_format(model, "int8"):
        plain = generate(model, "a red circle", 64, 64, **kw)
        sjd = generate(model, "a red circle", 64, 64, decoder=SJDecoder(window=16, init=init), **kw)
    assert torch.equal(sjd.codes, plain.codes)
    assert getattr(model, "kv_cache_format", None) is None  # the context restores the model's choice


def test_int8_cache_batch_equals_each_image_alone(model):
    """The prompt is prefilled once and copied to every image's rows: the scales must be copied too."""
    kw = dict(cfg=3.0, top_k=0, temperature=1.0)
    with kv_cache_format(model, "int8"):
        both = generate(model, "two green squares", 32, 32, seeds=[3, 9], **kw).codes
        alone = [generate(model, "two green squares", 32, 32, seeds=[s], **kw).codes for s in (3, 9)]
    assert torch.equal(both, torch.cat(alone))


def test_demo_greedy_codes_with_int8_cache_match_the_float_cache():
    demo = pytest.importorskip("demo")
    if not demo.demo_available():
        pytest.skip("demo_model/ not built")
    from demo.shapes import held_out_prompts
    model = LuminaMGPT.from_pretrained(demo.DEMO_CHECKPOINT, dtype=torch.float32)
    cfg = demo.generation_defaults()["cfg"]
    same = sjd_same = 0
    for prompt in [t for t, _ in held_out_prompts()][:10]:
        ref = generate(model, prompt, 64, 64, cfg=cfg, top_k=1).codes
        with kv_cache_format(model, "int8"):
            got = generate(model, prompt, 64, 64, cfg=cfg, top_k=1).codes
            sjd = generate(model, prompt, 64, 64, cfg=cfg, top_k=1, decoder=SJDecoder(window=8)).codes
        # SJD verifies 8 positions per forward: float rounding differs from one-token steps, and a key that
        # lands on the other side of an int8 rounding step can flip a near-tie (v3: 2 codes of 64 in 2 images)
        assert (sjd != got).sum() <= 4
        sjd_same += torch.equal(sjd, got)
        same += torch.equal(got, ref)
    assert same >= DEMO_GREEDY_IDENTICAL
    assert sjd_same >= 8


def test_bucketed_step_runner_reads_the_int8_cache_exactly(model):
    """fast.py rounds the attention length up to a bucket: the int8 cache then dequantises unwritten slots
    too, which the mask hides; codes equal the unbucketed int8 run."""
    from lumina_core import FastPlain, StepRunner
    kw = dict(cfg=3.0, top_k=1, seed=5)
    with kv_cache_format(model, "int8"):
        plain = generate(model, "a red circle", 64, 64, **kw).codes
        fast = generate(model, "a red circle", 64, 64, decoder=FastPlain(StepRunner(model, bucket=32, graphs=False)),
                        **kw).codes
    assert torch.equal(fast, plain)
