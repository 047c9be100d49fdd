"""Speculative Jacobi decoding: greedy parity with the plain sampler, the sampled distribution (chi-square
against plain sampling, and a wrong rule that fails the same test), per-row KV slots, seeds, progress."""
import numpy as np
import pytest
import torch
from scipy.stats import chi2_contingency

from builders import randomize_, tiny_checkpoint, tiny_config, tiny_tokenizer
from lumina_core import GenerationCancelled, InputError, KVCache, LuminaMGPT, generate
from lumina_core.model.checkpoint_writer import save_checkpoint
from lumina_core.decoding.sjd import SJDecoder


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder, _ = tiny_checkpoint(tmp_path_factory.mktemp("m") / "ckpt", num_codes=64, shards=1)
    return LuminaMGPT.from_pretrained(folder, dtype=torch.float32)


@pytest.mark.parametrize("init", ["random", "spatial"])
def test_greedy_sjd_equals_plain_greedy_t2i(model, init):
    kw = dict(cfg=3.0, top_k=1, seed=4, batch_size=2)
    plain = generate(model, "a red circle", 64, 64, **kw)
    sjd = generate(model, "a red circle", 64, 64, decoder=SJDecoder(window=16, init=init), **kw)
    assert torch.equal(sjd.codes, plain.codes)
    assert sjd.stats.forwards < plain.stats.forwards  # row ends at least are accepted inside windows
    assert sjd.stats.image_tokens == plain.stats.image_tokens == 64


def test_sjd_at_the_position_limit(tmp_path, model):
    """A request that exactly fills the context: SJD's padding drafts run past the last position (and the
    rotary table) without failing, and greedy SJD still equals plain greedy."""
    from lumina_core.decoding.generate import plan_request
    total = plan_request(model, "a red circle", 64, 64).total_tokens
    folder, _ = tiny_checkpoint(tmp_path / "ckpt", num_codes=64, shards=1, max_position_embeddings=total)
    edge = LuminaMGPT.from_pretrained(folder, dtype=torch.float32)
    kw = dict(cfg=3.0, top_k=1, seed=1)
    plain = generate(edge, "a red circle", 64, 64, **kw)
    assert torch.equal(generate(edge, "a red circle", 64, 64, decoder=SJDecoder(window=16), **kw).codes, plain.codes)


def test_sjd_likelihood_stays_finite_with_guidance_top_k(model):
    """Rejected drafts may hold codes that guidance_top_k removed (-inf): they must not turn the
    recorded likelihood (the best-of-N score) into nan."""
    res = generate(model, "a red circle", 64, 64, cfg=3.0, top_k=0, seed=3, batch_size=2,
                   guidance_top_k=4, decoder=SJDecoder(window=8))
    assert torch.isfinite(res.stats.logprob).all()


@pytest.mark.parametrize("guidance", [dict(cfg=1.0), dict(cfg=6.0, cfg_mode="upstream")], ids=["no-cfg", "upstream-cfg"])
def test_greedy_sjd_follows_every_guidance_mode(model, guidance):
    kw = dict(top_k=1, seed=0, **guidance)
    plain = generate(model, "two green squares", 32, 32, **kw)
    assert torch.equal(generate(model, "two green squares", 32, 32, decoder=SJDecoder(window=5), **kw).codes,
                       plain.codes)


@pytest.mark.parametrize("window", [2, 3, 16])  # 2: the SJD Settings widget's smallest, one guess per forward
def test_greedy_sjd_equals_plain_greedy_dual_panel(model, window):
    cond = torch.randint(0, 64, (4, 8), generator=torch.Generator().manual_seed(1))
    kw = dict(task="control_canny", condition_codes=cond, cfg=2.5, top_k=1)
    plain = generate(model, "edges", 64, 64, **kw)
    sjd = generate(model, "edges", 64, 64, decoder=SJDecoder(window=window, init="spatial"), **kw)
    assert torch.equal(sjd.codes, plain.codes)
    assert torch.equal(sjd.codes[0, :4], cond)


def test_sampled_sjd_seed_is_batch_independent(model):
    kw = dict(cfg=3.0, top_k=20, decoder=SJDecoder(window=6, graphs=True))  # graphs: CUDA only, eager here
    batch = generate(model, "a red circle", 64, 64, seed=7, batch_size=3, **kw)
    alone = generate(model, "a red circle", 64, 64, seed=8, **kw)
    assert torch.equal(batch.codes[1], alone.codes[0])
    # images advance at their own rate, and the batch runs until the slowest one is done
    per_image = batch.stats.extra["image_forwards"]
    assert batch.stats.forwards == max(per_image)
    assert alone.stats.extra["image_forwards"][0] == per_image[1]


def test_per_row_slots_equal_running_each_row_alone(model):
    """forward_step with [B, T] slots (rows at different lengths) matches each row run with shared slots."""
    torch.manual_seed(0)
    V = model.config.vocab_size
    prompt = torch.randint(0, V, (2, 9))
    lengths = [5, 9]
    cache = KVCache.for_model(model, 2, 20)
    cache.starts = torch.tensor([0, 2])
    for b, n in enumerate(lengths):  # row b holds n prompt tokens (row 1 left-padded by 2)
        solo = KVCache.for_model(model, 1, 20)
        solo.starts = cache.starts[b:b + 1].clone()
        model.forward_step(prompt[b:b + 1, :n], solo, torch.arange(n), kv_len=n)
        for layer in range(len(cache.k)):
            cache.k[layer][b] = solo.k[layer][0]
            cache.v[layer][b] = solo.v[layer][0]
    new = torch.randint(0, V, (2, 4))
    slots = torch.tensor(lengths)[:, None] + torch.arange(4)
    both = model.forward_step(new, cache, slots, kv_len=16)
    for b, n in enumerate(lengths):
        solo = KVCache.for_model(model, 1, 20)
        solo.starts = cache.starts[b:b + 1].clone()
        model.forward_step(prompt[b:b + 1, :n], solo, torch.arange(n), kv_len=n)
        ref = model.forward_step(new[b:b + 1], solo, torch.arange(n, n + 4), kv_len=n + 4)
        torch.testing.assert_close(both[b], ref[0], rtol=1e-4, atol=1e-4)


def test_progress_and_cancel(model):
    seen = []
    generate(model, "x", 32, 32, top_k=5, decoder=SJDecoder(window=4), progress=lambda r, n, c: seen.append((r, n, c.shape)))
    assert seen[-1][:2] == (4, 4) and seen[-1][2] == (1, 4, 4)
    assert [r for r, _, _ in seen] == sorted({r for r, _, _ in seen})
    with pytest.raises(GenerationCancelled):
        generate(model, "x", 32, 32, decoder=SJDecoder(window=4), cancel=lambda: True)


@pytest.mark.parametrize("bad", [dict(window=1), dict(init="diagonal"), dict(mode="fast")])
def test_bad_settings_say_what_to_change(bad):
    with pytest.raises(InputError, match="SJD"):
        SJDecoder(**bad)


# ----------------------------------------------------------------------------- distribution
# A sharp 8-code model; 2000 plain samples vs 2000 SJD samples (disjoint seeds, so the two samples are
# independent), CFG on, no truncation. For each of the first 7 code positions after the first (the
# first is drawn from the prefill logits in both), a chi-square test of homogeneity of the two
# histograms. Significance alpha = 0.01, Bonferroni-corrected over the 7 positions. Fixed seeds: the
# outcome is deterministic, it never flakes.
ALPHA, POSITIONS, SAMPLES, CODES = 0.01, range(1, 8), 2000, 8


@pytest.fixture(scope="module")
def sharp_model(tmp_path_factory):
    tok = tiny_tokenizer(CODES)
    cfg = tiny_config(tok.get_vocab_size(with_added_tokens=True), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
    folder = tmp_path_factory.mktemp("sharp")
    save_checkpoint(str(folder), randomize_(LuminaMGPT(cfg), 0, std=0.5), tok, shards=1)
    return LuminaMGPT.from_pretrained(str(folder), dtype=torch.float32)


def _samples(model, decoder, first_seed):
    res = generate(model, "a red circle", 32, 32, seed=first_seed, batch_size=SAMPLES, cfg=2.0, top_k=0,
                   decoder=decoder)
    return res.codes.view(SAMPLES, -1).numpy()


def _min_p_value(a, b):
    pvals = []
    for pos in POSITIONS:
        table = np.stack([np.bincount(a[:, pos], minlength=CODES), np.bincount(b[:, pos], minlength=CODES)])
        table = table[:, table.sum(0) > 0]
        if table.shape[1] > 1:
            pvals.append(chi2_contingency(table)[1])
    return min(pvals)


@pytest.fixture(scope="module")
def plain_samples(sharp_model):
    return _samples(sharp_model, None, first_seed=0)


@pytest.mark.parametrize("coupled", [True, False], ids=["coupled-redraws", "independent-redraws"])
def test_sampled_sjd_has_the_plain_sampling_distribution(sharp_model, plain_samples, coupled):
    sjd = _samples(sharp_model, SJDecoder(window=8, coupled=coupled), first_seed=100_000)
    assert _min_p_value(plain_samples, sjd) > ALPHA / len(POSITIONS)


def test_upstream_resampling_rule_fails_the_same_test(sharp_model, plain_samples):
    """Upstream resamples a rejected position from p (not the residual): its images are biased."""
    sjd = _samples(sharp_model, SJDecoder(window=8, mode="upstream"), first_seed=100_000)
    assert _min_p_value(plain_samples, sjd) < ALPHA / len(POSITIONS)
