"""The plain sampler: exactness against a reference loop, seeds, progress/cancel, logits processing."""
import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import chisquare

from builders import tiny_checkpoint, tiny_movqgan
from lumina_core import GenerationCancelled, InputError, LuminaMGPT, SamplingOptions, decode_images, generate
from lumina_core.decoding import rng
from lumina_core.decoding.generate import plan_request
from lumina_core.decoding.logits import GuidanceSchedule, draw, guide, truncate


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder, _ = tiny_checkpoint(tmp_path_factory.mktemp("m") / "ckpt", num_codes=64, shards=2)
    return LuminaMGPT.from_pretrained(folder, dtype=torch.float32)


def reference_greedy(model, plan, cfg):
    """Independent loop: full forwards (no cache) of the cond and uncond sequences, guidance, argmax over codes."""
    sp = model.tokenizer.special
    a, b = sp.image_rows
    cond, uncond = list(plan.cond_ids), list(plan.uncond_ids)
    w = plan.layout.w_lat
    out = []
    for r in range(plan.layout.gen_rows):
        row = []
        for c in range(w):
            lc = model(torch.tensor([cond]))[0, -1, a:b]
            lu = model(torch.tensor([uncond]))[0, -1, a:b]
            code = int((lu + cfg * (lc - lu)).argmax())
            row.append(code)
            cond.append(a + code)
            uncond.append(a + code)
        cond.append(sp.row_end)
        uncond.append(sp.row_end)
        out.append(row)
    return torch.tensor(out)


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_greedy_t2i_equals_reference_loop(model, cfg):
    res = generate(model, "a red circle", 64, 32, cfg=cfg, top_k=1, seed=0)
    plan = plan_request(model, "a red circle", 64, 32)
    assert torch.equal(res.codes[0], reference_greedy(model, plan, cfg))
    assert res.codes.shape == (1, 4, 8)
    expected_forwards = 4 * 8 - 1  # one per code except the last; row ends ride along with the last code of a row
    assert res.stats.forwards == expected_forwards


def test_greedy_dual_panel_equals_reference_loop(model):
    cond = torch.randint(0, 64, (4, 8), generator=torch.Generator().manual_seed(1))
    res = generate(model, "edges", 64, 64, task="control_canny", condition_codes=cond, cfg=2.5, top_k=1)
    plan = plan_request(model, "edges", 64, 64, "control_canny", condition_codes=cond)
    assert torch.equal(res.codes[0, :4], cond)  # the given upper half is returned as is
    assert torch.equal(res.codes[0, 4:], reference_greedy(model, plan, 2.5))
    assert torch.equal(res.panel_codes(), res.codes[:, 4:])


def test_same_seed_same_codes_alone_in_batch_and_across_runs(model):
    kw = dict(cfg=3.0, top_k=20, temperature=1.0)
    batch = generate(model, "a red circle", 64, 64, seed=10, batch_size=3, **kw).codes
    alone = generate(model, "a red circle", 64, 64, seed=11, **kw).codes
    again = generate(model, "a red circle", 64, 64, seed=10, batch_size=3, **kw).codes
    assert torch.equal(batch[1], alone[0])
    assert torch.equal(batch, again)
    assert not torch.equal(batch[0], batch[1]) and not torch.equal(batch[1], batch[2])


def test_huge_and_zero_seeds_are_real_seeds(model):
    a = generate(model, "x", 32, 32, seed=0, top_k=20).codes
    b = generate(model, "x", 32, 32, seed=2**64 - 1, top_k=20).codes
    assert torch.equal(a, generate(model, "x", 32, 32, seed=0, top_k=20).codes)
    assert not torch.equal(a, b)
    # a batch past the largest seed wraps: image 1 is seed 0, recorded as 0 (a value a seed widget takes)
    wrapped = generate(model, "x", 32, 32, seed=2**64 - 1, batch_size=2, top_k=20)
    assert wrapped.seeds == [2**64 - 1, 0] and torch.equal(wrapped.codes[1], a[0])


def test_different_id_layout_generates_the_same_way(tmp_path):
    """Image codes first, specials last: nothing in the engine depends on the release's ids."""
    folder, _ = tiny_checkpoint(tmp_path / "m", layout="codes_first", shards=1)
    m = LuminaMGPT.from_pretrained(folder, dtype=torch.float32)
    assert m.tokenizer.special.image_code_start < m.tokenizer.special.image_start
    res = generate(m, "a red circle", 32, 32, cfg=2.0, top_k=1)
    plan = plan_request(m, "a red circle", 32, 32)
    assert torch.equal(res.codes[0], reference_greedy(m, plan, 2.0))


def test_progress_per_row_and_cancel_within_a_row(model):
    seen = []
    generate(model, "x", 64, 32, batch_size=2, top_k=5, progress=lambda done, total, codes: seen.append(
        (done, total, tuple(codes.shape))))
    assert seen == [(i, 4, (2, i, 8)) for i in range(1, 5)]
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) >= 2

    with pytest.raises(GenerationCancelled, match="after 2 of 4 rows"):
        generate(model, "x", 64, 32, top_k=5, cancel=cancel)


def test_cfg_one_runs_no_unconditional_stream(model, monkeypatch):
    rows = []
    real = LuminaMGPT.forward_step

    def spy(self, tokens, *a, **k):
        rows.append(tokens.shape[0])
        return real(self, tokens, *a, **k)

    monkeypatch.setattr(LuminaMGPT, "forward_step", spy)
    generate(model, "x", 32, 32, batch_size=2, cfg=1.0, top_k=5)
    assert rows[0] == 1 and set(rows[1:]) == {2}  # one shared prefill row, then the 2 conditional streams
    rows.clear()
    generate(model, "x", 32, 32, batch_size=2, cfg=2.0, top_k=5)
    assert set(rows[1:]) == {4}  # cond x2, uncond x2 after a shared 2-row prefill
    assert rows[0] == 2


def test_condition_image_is_prepared_and_encoded(model):
    vq = tiny_movqgan(64)
    img = Image.new("RGBA", (200, 100), (255, 0, 0, 0))  # fully transparent -> white after whitening
    res = generate(model, "x", 64, 64, task="control_canny", condition_image=img, image_tokenizer=vq, top_k=1)
    white = vq.encode(torch.ones(1, 3, 32, 64))
    assert torch.equal(res.codes[:, :4], white)
    pixels = decode_images(vq, res.codes)
    assert pixels.shape == (1, 64, 64, 3) and pixels.dtype == torch.float32
    assert 0 <= pixels.min() and pixels.max() <= 1


def test_mismatched_image_tokenizer_is_rejected(model):
    with pytest.raises(InputError, match="has 32 codes but the model expects 64"):
        generate(model, "x", 64, 64, task="control_canny", condition_image=Image.new("RGB", (64, 32)),
                 image_tokenizer=tiny_movqgan(32))


def test_bad_sampling_options_are_clear(model):
    for kw, msg in [({"top_p": 0.0}, "top_p"), ({"temperature": -1}, "temperature"), ({"cfg_mode": "x"}, "cfg_mode"),
                    ({"top_k": -2}, "top_k")]:
        with pytest.raises(InputError, match=msg):
            generate(model, "x", 32, 32, **kw)


# ---------------------------------------------------------------- logits processing

def test_upstream_cfg_schedule_clamps_to_four():
    def sched(cfg):
        return GuidanceSchedule(SamplingOptions(cfg=cfg, cfg_mode="upstream"), 24, 24, 9312)

    assert torch.all(sched(2.0).values == 4.0)          # 1 < cfg < 4 becomes 4
    assert sched(4.0).at(0) == 4.0 and sched(4.0).at(9000) == 4.0
    big = sched(8.0)
    assert 4.0 < big.at(0) < 8.0 and big.at(200) == 4.0  # decays to 4 within a few hundred tokens
    assert sched(1.0).values is None                     # 1 disables guidance
    assert GuidanceSchedule(SamplingOptions(cfg=2.0), 24, 24, 10).at(5) == 2.0


def test_guidance_formula_and_guidance_top_k():
    c = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    u = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    assert torch.allclose(guide(c, u, 3.0), torch.tensor([[6.0, 1.0, -2.0, -3.0]]))
    g = guide(c, u, 3.0, guidance_top_k=2)
    assert torch.isinf(g[0, 2:]).all() and torch.allclose(g[0, :2], torch.tensor([6.0, 1.0]))


def test_truncation_rules_by_hand():
    x = torch.tensor([[3.0, 2.0, 2.0, 1.0, -1.0]])
    k2 = truncate(x, SamplingOptions(top_k=2))
    assert torch.isfinite(k2).tolist() == [[True, True, True, False, False]]  # tie at the threshold kept
    p = torch.softmax(x, -1)[0]  # [0.574, 0.211, 0.211, 0.078, 0.011]
    tp = truncate(x, SamplingOptions(top_k=0, top_p=0.75))
    assert torch.isfinite(tp).tolist() == [[True, True, True, False, False]]
    assert p[0] + p[1] < 0.75 < p[0] + p[1] + p[2]
    # top-n-sigma with n=1: std of [3,2,2,1,-1] (unbiased) = 1.517 -> keep >= 1.483
    ns = truncate(x, SamplingOptions(top_k=0, top_n_sigma=1.0))
    assert torch.isfinite(ns).tolist() == [[True, True, True, False, False]]
    t = truncate(x, SamplingOptions(top_k=0, temperature=0.5))
    assert torch.allclose(t, x * 2)


def test_uniform_never_reaches_one_even_at_the_top_hash():
    """The largest 24-bit value plus one half rounds up to 2^24 in float32: u must still stay below 1 (else
    Gumbel noise is +inf and a code outside top-k wins; with 16,384 codes about one draw in 1,000)."""
    u = rng.hash_to_unit(torch.tensor([0, 1 << 8, 0xFFFFFEFF, 0xFFFFFFFF], dtype=torch.long))
    assert (u > 0).all() and (u < 1).all() and torch.isfinite(-torch.log(-torch.log(u))).all()
    assert u[0] == 0.5 / 2 ** 24 and u[1] == 1.5 / 2 ** 24  # the rest of the mapping is unchanged
    draws = rng.uniform(rng.seed_tensor(range(64)), torch.zeros(64, dtype=torch.long), 4096)
    assert (draws > 0).all() and (draws < 1).all()


def test_gumbel_draws_follow_the_softmax():
    logits = torch.tensor([1.0, 0.0, -0.5, 2.0, 0.3])
    n = 20000
    seeds = rng.seed_tensor(range(n))
    counters = torch.zeros(n, dtype=torch.long)
    draws = draw(logits.expand(n, -1), rng.gumbel(seeds, counters, 5))
    observed = np.bincount(draws.numpy(), minlength=5)
    expected = torch.softmax(logits.double(), 0).numpy() * n
    assert chisquare(observed, expected).pvalue > 0.001
    assert torch.equal(draw(logits[None], None), torch.tensor([3]))
