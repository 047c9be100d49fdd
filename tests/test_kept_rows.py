"""Generation from kept rows (re-roll below a row, extend downward): the kept rows come back exactly, they are
part of the prompt (the likelihood of what follows equals a full causal forward over prompt + kept rows + the
rest), a seed means the same image alone or in a batch (plain, SJD, int8 cache, rows shared or one set per
image), SJD keeps the plain sampler's distribution after kept rows (chi-square, with the lossy rule failing the
same test), and every bad input says what to change."""
import pytest
import torch

from builders import randomize_, tiny_checkpoint, tiny_config, tiny_tokenizer
from lumina_core import InputError, LuminaMGPT, SJDecoder, generate, kv_cache_format
from lumina_core.decoding.generate import plan_request
from lumina_core.decoding.scorers import LikelihoodScorer
from lumina_core.model.checkpoint_writer import save_checkpoint
from test_sjd import ALPHA, POSITIONS, _min_p_value  # the same test of homogeneity

KW = dict(cfg=3.0, top_k=20)
DECODERS = [None, SJDecoder(window=6), SJDecoder(window=6, init="spatial")]
DECODER_IDS = ["plain", "sjd", "sjd-spatial"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder, _ = tiny_checkpoint(tmp_path_factory.mktemp("m") / "ckpt", num_codes=64, shards=1)
    torch.set_num_threads(1)
    return LuminaMGPT.from_pretrained(folder, dtype=torch.float32)


@pytest.fixture(scope="module")
def source(model):
    """Two 64x64 pictures (8 x 8 codes) to keep rows of."""
    return generate(model, "a red circle", 64, 64, seed=100, batch_size=2, **KW).codes


def reference_logprob(model, plan, codes, cfg):
    """Sum of log p_guided over the painted codes (rows below plan.layout.prefix_rows), from full causal forwards
    over each stream's whole sequence, without a cache."""
    sp = model.tokenizer.special
    a, b = sp.image_rows
    gen = codes[plan.layout.prefix_rows:]
    body = torch.cat([gen + a, torch.full((gen.shape[0], 1), sp.row_end)], 1).flatten()[:-1]
    seq_c, seq_u = torch.tensor(plan.cond_ids), torch.tensor(plan.uncond_ids)
    lc = model(torch.cat([seq_c, body])[None])[0, len(seq_c) - 1:-1, a:b].double()
    lu = model(torch.cat([seq_u, body])[None])[0, len(seq_u) - 1:-1, a:b].double()
    logp = (lu + cfg * (lc - lu)).log_softmax(-1)
    return sum(float(logp[i, t - a]) for i, t in enumerate(body.tolist()) if t != sp.row_end)


@pytest.mark.parametrize("decoder", DECODERS, ids=DECODER_IDS)
def test_kept_rows_come_back_exactly_and_the_rest_differs_by_seed(model, source, decoder):
    res = generate(model, "a blue square", 64, 64, seed=7, batch_size=3, prefix_codes=source[0], keep_rows=3,
                   decoder=decoder, **KW)
    assert res.codes.shape == (3, 8, 8) and res.layout.prefix_rows == 3
    assert torch.equal(res.codes[:, :3], source[0, :3].expand(3, -1, -1))
    assert len({tuple(c[3:].flatten().tolist()) for c in res.codes}) == 3  # three different bottoms
    assert res.stats.image_tokens == 5 * 8  # only the painted rows count


@pytest.mark.parametrize("decoder", DECODERS, ids=DECODER_IDS)
def test_an_image_regenerated_alone_from_the_same_rows_and_seed_equals_the_batchs(model, source, decoder):
    batch = generate(model, "a blue square", 64, 64, seed=20, batch_size=3, prefix_codes=source[:1], keep_rows=4,
                     decoder=decoder, **KW)
    alone = generate(model, "a blue square", 64, 64, seed=22, prefix_codes=source[0], keep_rows=4, decoder=decoder,
                     **KW)
    assert torch.equal(alone.codes[0], batch.codes[2])


@pytest.mark.parametrize("decoder", DECODERS, ids=DECODER_IDS)
def test_one_set_of_rows_per_image(model, source, decoder):
    """Images of a batch may keep different rows: image i keeps prefix i, and is what seed + i makes from it."""
    both = generate(model, "a blue square", 64, 64, seed=30, batch_size=2, prefix_codes=source, keep_rows=2,
                    decoder=decoder, **KW)
    assert torch.equal(both.codes[:, :2], source[:, :2])
    for i in range(2):
        alone = generate(model, "a blue square", 64, 64, seed=30 + i, prefix_codes=source[i], keep_rows=2,
                         decoder=decoder, **KW)
        assert torch.equal(alone.codes[0], both.codes[i])
    if decoder is not None:  # SJD's per-image forwards come back in image order
        assert len(both.stats.extra["image_forwards"]) == 2


def test_identical_rows_share_one_prompt(model, source):
    same = torch.stack([source[0], source[0], source[1]])
    res = generate(model, "x", 64, 64, seed=3, batch_size=3, prefix_codes=same, keep_rows=2, **KW)
    alone = generate(model, "x", 64, 64, seed=3, batch_size=2, prefix_codes=source[0], keep_rows=2, **KW)
    assert torch.equal(res.codes[:2], alone.codes)
    assert res.stats.prefill_tokens == 2 * alone.stats.prefill_tokens  # two prompts, not three


def test_pictures_that_differ_only_below_the_kept_rows_share_one_prompt(model, source):
    """A batch re-rolled from one picture, fed back with the same keep_rows: one prompt, not one per image."""
    rerolled = generate(model, "x", 64, 64, seed=5, batch_size=3, prefix_codes=source[0], keep_rows=3, **KW).codes
    assert len({tuple(c.flatten().tolist()) for c in rerolled}) == 3
    res = generate(model, "x", 64, 64, seed=9, batch_size=3, prefix_codes=rerolled, keep_rows=3, **KW)
    alone = generate(model, "x", 64, 64, seed=9, batch_size=3, prefix_codes=source[0], keep_rows=3, **KW)
    assert torch.equal(res.codes, alone.codes)
    assert res.stats.prefill_tokens == alone.stats.prefill_tokens


def test_sjd_stats_of_prompts_run_one_after_another_add_up(model, source):
    sjd = SJDecoder(window=6)
    both = generate(model, "x", 64, 64, seed=30, batch_size=2, prefix_codes=source, keep_rows=2, decoder=sjd, **KW)
    each = [generate(model, "x", 64, 64, seed=30 + i, prefix_codes=source[i], keep_rows=2, decoder=sjd, **KW).stats
            for i in range(2)]
    assert both.stats.forwards == sum(s.forwards for s in each)
    assert both.stats.image_tokens == each[0].image_tokens == 6 * 8 and both.stats.prompts == 2
    assert both.stats.tokens_per_forward == pytest.approx(2 * 6 * 8 / both.stats.forwards)
    # the likelihood score stays a per-image mean: each image's as when it ran alone
    alone = [generate(model, "x", 64, 64, seed=30 + i, prefix_codes=source[i], keep_rows=2, decoder=sjd, **KW)
             for i in range(2)]
    want = torch.cat([LikelihoodScorer().score("x", r) for r in alone])
    torch.testing.assert_close(LikelihoodScorer().score("x", both), want)
    hists = [s.extra["codes_per_forward_hist"] for s in each]
    merged = both.stats.extra["codes_per_forward_hist"]
    assert sum(merged) == sum(map(sum, hists))
    assert all(merged[i] == sum(h[i] for h in hists if i < len(h)) for i in range(len(merged)))


def test_greedy_sjd_equals_plain_greedy_after_kept_rows(model, source):
    kw = dict(cfg=3.0, top_k=1, seed=0, batch_size=2, prefix_codes=source, keep_rows=3)
    plain = generate(model, "a red circle", 64, 64, **kw)
    for init in ("random", "spatial"):
        assert torch.equal(generate(model, "a red circle", 64, 64, decoder=SJDecoder(window=8, init=init), **kw).codes,
                           plain.codes)


def test_the_int8_cache_keeps_rows_and_seeds_too(model, source):
    with kv_cache_format(model, "int8"):
        batch = generate(model, "a red circle", 64, 64, seed=40, batch_size=2, prefix_codes=source[1], keep_rows=5,
                         **KW)
        alone = generate(model, "a red circle", 64, 64, seed=41, prefix_codes=source[1], keep_rows=5, **KW)
    assert torch.equal(batch.codes[:, :5], source[1, :5].expand(2, -1, -1))
    assert torch.equal(alone.codes[0], batch.codes[1])


@pytest.mark.parametrize("decoder", [None, SJDecoder(window=5)], ids=["plain", "sjd"])
def test_kept_rows_are_part_of_the_prompt(model, source, decoder):
    """The likelihood recorded while sampling the rest equals a cache-free full forward over the prompt, the kept
    rows and the painted rows (teacher-forced, float64 guidance): the rest is conditioned on the kept rows."""
    res = generate(model, "a green star", 64, 64, seed=5, batch_size=2, prefix_codes=source[0], keep_rows=4,
                   decoder=decoder, **KW)
    plan = plan_request(model, "a green star", 64, 64, prefix_codes=source[0], keep_rows=4)
    assert plan.kept_rows == 4 and plan.layout.prefix_rows == 4
    for i in range(2):
        want = reference_logprob(model, plan, res.codes[i], 3.0)
        assert abs(float(res.stats.logprob[i]) - want) < 1e-4 * abs(want) + 1e-4
    # and the kept rows change what comes next: the same seed without them paints other rows
    free = generate(model, "a green star", 64, 64, seed=5, batch_size=2, decoder=decoder, **KW)
    assert not torch.equal(free.codes[:, 4:], res.codes[:, 4:])


def test_extend_downward(model, source):
    """A canvas taller than the picture: all its rows are kept, the model continues below them."""
    tall = generate(model, "a red circle", 64, 128, seed=9, batch_size=2, prefix_codes=source[0], **KW)
    assert tall.codes.shape == (2, 16, 8) and tall.layout.prefix_rows == 8
    assert torch.equal(tall.codes[:, :8], source[0].expand(2, -1, -1))
    assert not torch.equal(tall.codes[0, 8:], tall.codes[1, 8:])


def test_dual_panel_tasks_keep_the_top_of_the_panel_they_paint(model, source):
    """Below a condition panel (control_*): the kept rows are the lower panel's first rows. pair_* tasks paint
    the whole canvas, so their kept rows start at the canvas top."""
    cond = torch.randint(0, 64, (8, 8), generator=torch.Generator().manual_seed(2))
    kw = dict(task="control_canny", condition_codes=cond, **KW)
    res = generate(model, "edges", 64, 128, seed=1, batch_size=2, prefix_codes=source[0], keep_rows=3, **kw)
    assert torch.equal(res.codes[:, :8], cond.expand(2, -1, -1))          # the condition panel
    assert torch.equal(res.codes[:, 8:11], source[0, :3].expand(2, -1, -1))  # then the kept rows
    assert res.layout.prefix_rows == 11
    alone = generate(model, "edges", 64, 128, seed=2, prefix_codes=source[0], keep_rows=3,
                     decoder=SJDecoder(window=4, init="spatial"), **kw)
    sjd = generate(model, "edges", 64, 128, seed=1, batch_size=2, prefix_codes=source[0], keep_rows=3,
                   decoder=SJDecoder(window=4, init="spatial"), **kw)
    assert torch.equal(alone.codes[0], sjd.codes[1]) and torch.equal(sjd.codes[:, 8:11], res.codes[:, 8:11])
    pair = generate(model, "a circle", 64, 128, task="pair_canny", seed=3, prefix_codes=source[1], **KW)
    assert torch.equal(pair.codes[0, :8], source[1])  # the whole image kept: the model paints its edge map


def test_progress_shows_the_kept_rows_above_the_painted_ones(model, source):
    seen = []
    generate(model, "x", 64, 64, seed=1, prefix_codes=source[0], keep_rows=5, **KW,
             progress=lambda rows, total, codes: seen.append((rows, total, codes.clone())))
    assert [(r, t) for r, t, _ in seen] == [(1, 3), (2, 3), (3, 3)]
    assert all(c.shape == (1, 5 + r, 8) and torch.equal(c[0, :5], source[0, :5]) for r, _, c in seen)


# ----------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("kwargs, message", [
    (dict(prefix_codes=torch.zeros(8, 4, dtype=torch.long)), r"4 codes \(32 px\) wide but the image is 8 codes \(64 px\)"),
    (dict(prefix_codes=torch.zeros(8, 8, dtype=torch.long), keep_rows=0), "keep_rows must be at least 1"),
    (dict(prefix_codes=torch.zeros(4, 8, dtype=torch.long), keep_rows=6), "only 4 rows .* keep at most 4"),
    (dict(prefix_codes=torch.zeros(8, 8, dtype=torch.long)), "leaves nothing to paint.*taller to extend"),
    (dict(prefix_codes=torch.zeros(8, 8, dtype=torch.long), keep_rows=8), "Keep fewer than 8 rows"),
    (dict(prefix_codes=torch.full((8, 8), 500)), "code 500.*64 codes.*another image tokenizer"),
    (dict(prefix_codes=torch.full((8, 8), -1)), "code -1.*another image tokenizer"),
    (dict(prefix_codes=torch.zeros(3, 8, 8, dtype=torch.long), batch_size=2), "3 images but the batch has 2.*batch size to 3"),
    (dict(prefix_codes=torch.zeros(8, 8)), "integer image codes"),
    (dict(keep_rows=3), "keep_rows needs the rows to keep"),
])
def test_bad_kept_rows_say_what_to_change(model, kwargs, message):
    with pytest.raises(InputError, match=message):
        generate(model, "x", 64, 64, **kwargs)


def test_a_taller_canvas_than_the_context_holds_says_so(tmp_path, model, source):
    total = plan_request(model, "x", 64, 128).total_tokens
    folder, _ = tiny_checkpoint(tmp_path / "short", num_codes=64, shards=1, max_position_embeddings=total - 10)
    short = LuminaMGPT.from_pretrained(folder, dtype=torch.float32)
    generate(short, "x", 64, 64, prefix_codes=source[0], keep_rows=4, **KW)  # fits
    with pytest.raises(InputError, match="too large for the model.*Use a smaller size"):
        generate(short, "x", 64, 128, prefix_codes=source[0], **KW)


# ----------------------------------------------------------------------------- distribution
# As tests/test_sjd.py: a sharp 8-code model, 2000 plain samples against 2000 SJD samples (disjoint seeds), CFG on,
# no truncation, chi-square tests of homogeneity at the first 7 painted positions after the first, alpha 0.01
# Bonferroni-corrected; here below one kept row. Fixed seeds: deterministic.
SAMPLES, CODES = 2000, 8


@pytest.fixture(scope="module")
def sharp_model(tmp_path_factory):
    tok = tiny_tokenizer(CODES)
    cfg = tiny_config(tok.get_vocab_size(with_added_tokens=True), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
    folder = tmp_path_factory.mktemp("sharp")
    save_checkpoint(str(folder), randomize_(LuminaMGPT(cfg), 0, std=0.5), tok, shards=1)
    return LuminaMGPT.from_pretrained(str(folder), dtype=torch.float32)


KEPT = torch.tensor([[3, 1, 4, 1]])  # one kept row of a 32x32 image (4 x 4 codes)


def _samples(model, decoder, first_seed):
    res = generate(model, "a red circle", 32, 32, seed=first_seed, batch_size=SAMPLES, cfg=2.0, top_k=0,
                   decoder=decoder, prefix_codes=KEPT)
    assert torch.equal(res.codes[:, :1], KEPT.expand(SAMPLES, -1, -1))
    return res.codes[:, 1:].reshape(SAMPLES, -1).numpy()


@pytest.fixture(scope="module")
def plain_samples(sharp_model):
    return _samples(sharp_model, None, first_seed=0)


def test_sampled_sjd_after_kept_rows_has_the_plain_sampling_distribution(sharp_model, plain_samples):
    sjd = _samples(sharp_model, SJDecoder(window=8, init="spatial"), first_seed=100_000)
    assert _min_p_value(plain_samples, sjd) > ALPHA / len(POSITIONS)


def test_upstream_rule_after_kept_rows_fails_the_same_test(sharp_model, plain_samples):
    """The positive control: upstream's lossy resampling, with the same kept row, is caught."""
    sjd = _samples(sharp_model, SJDecoder(window=8, mode="upstream"), first_seed=100_000)
    assert _min_p_value(plain_samples, sjd) < ALPHA / len(POSITIONS)


def test_the_kept_row_changes_the_distribution(sharp_model, plain_samples):
    """The test can see the kept row at all: without it (same seeds) the painted rows are distributed otherwise."""
    res = generate(sharp_model, "a red circle", 32, 32, seed=200_000, batch_size=SAMPLES, cfg=2.0, top_k=0)
    free = res.codes[:, 1:].reshape(SAMPLES, -1).numpy()
    assert _min_p_value(plain_samples, free) < ALPHA / len(POSITIONS)
