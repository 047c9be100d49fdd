"""Best-of-N with early pruning: the kept candidates are exactly their seeds' plain images (one chunk or several,
with kept rows, below a condition, with the int8 cache), the candidates kept are the best by their partial
scores, which are what the scorer says of the first rows (likelihood: a full causal forward; CLIP: the finished
rows decoded, the rest grey), pruned candidates stop at row r, the caches shrink to the survivors' rows, and every
bad setting says what to change."""
from functools import partial

import pytest
import torch

from builders import tiny_checkpoint, tiny_movqgan
from lumina_core import InputError, KVCache, LuminaMGPT, SJDecoder, best_of_n, generate, kv_cache_format
from lumina_core.decoding import pruning
from lumina_core.decoding.best_of_n import chunk_size_for, pruned_chunk_sizes
from lumina_core.decoding.generate import decode_images, plan_request
from lumina_core.decoding.scorers import LikelihoodScorer
from lumina_core.image.preview import PENDING_GREY

KW = dict(cfg=3.0, top_k=20)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder, _ = tiny_checkpoint(tmp_path_factory.mktemp("m") / "ckpt", num_codes=64, shards=1)
    torch.set_num_threads(1)
    return LuminaMGPT.from_pretrained(folder, dtype=torch.float32)


def reference_partial_logprob(model, prompt, codes, rows, cfg):
    """Mean log p_guided over the first `rows` rows of a t2i image's codes, from full causal forwards (float64
    guidance) without a cache: the likelihood scorer's partial score, computed independently."""
    sp = model.tokenizer.special
    a, b = sp.image_rows
    plan = plan_request(model, prompt, 64, 64)
    part = codes[:rows]
    body = torch.cat([part + a, torch.full((rows, 1), sp.row_end)], 1).flatten()[:-1]
    seq_c, seq_u = torch.tensor(plan.cond_ids), torch.tensor(plan.uncond_ids)
    lc = model(torch.cat([seq_c, body])[None])[0, len(seq_c) - 1:-1, a:b].double()
    lu = model(torch.cat([seq_u, body])[None])[0, len(seq_u) - 1:-1, a:b].double()
    logp = (lu + cfg * (lc - lu)).log_softmax(-1)
    picked = [float(logp[i, t - a]) for i, t in enumerate(body.tolist()) if t != sp.row_end]
    return sum(picked) / len(picked)


@pytest.mark.parametrize("chunk_size", [None, 2, 3], ids=["one-chunk", "chunks-of-2", "chunks-of-3"])
def test_kept_candidates_are_their_seeds_plain_images(model, chunk_size):
    out = best_of_n(model, "a red circle", 64, 64, n=6, seed=50, prune_after_rows=2, keep=2, chunk_size=chunk_size,
                    **KW)
    assert len(out.seeds) == 2 and out.codes.shape == (2, 8, 8) and out.seeds == sorted(out.seeds)
    assert out.seeds == [50 + i for i in out.kept]
    for i, seed in enumerate(out.seeds):
        alone = generate(model, "a red circle", 64, 64, seed=seed, **KW)
        assert torch.equal(alone.codes[0], out.codes[i])
        torch.testing.assert_close(LikelihoodScorer().score("", alone)[0], out.scores[i], rtol=1e-5, atol=1e-5)
    assert out.best_index == int(out.scores.argmax())
    # pruned candidates stop after 2 rows of 8 codes; kept ones paint all 64 codes (63 forwards after the prefill)
    assert [out.image_forwards[i] for i in range(6)] == [63 if i in out.kept else 16 for i in range(6)]
    if chunk_size is not None:  # the same survivors as in one chunk (the scores summed in other batches: close)
        one = best_of_n(model, "a red circle", 64, 64, n=6, seed=50, prune_after_rows=2, keep=2, **KW)
        assert one.seeds == out.seeds and torch.equal(one.codes, out.codes)
        torch.testing.assert_close(one.partial_scores, out.partial_scores, rtol=1e-5, atol=1e-5)


def test_the_kept_are_the_best_by_the_scorers_view_of_the_first_rows(model):
    out = best_of_n(model, "a red circle", 64, 64, n=5, seed=7, prune_after_rows=3, keep=2, **KW)
    order = torch.argsort(out.partial_scores, descending=True, stable=True)
    assert out.kept == sorted(order[:2].tolist())
    for i in range(5):  # every partial score is the mean log-likelihood of that seed's first three rows
        plain = generate(model, "a red circle", 64, 64, seed=7 + i, **KW).codes[0]
        want = reference_partial_logprob(model, "a red circle", plain, 3, 3.0)
        assert abs(float(out.partial_scores[i]) - want) < 1e-4 * abs(want) + 1e-4


def test_pruning_with_kept_rows_and_below_a_condition(model):
    source = generate(model, "a red circle", 64, 64, seed=1, **KW).codes
    out = best_of_n(model, "a red circle", 64, 64, n=4, seed=10, prune_after_rows=2, keep=1,
                    prefix_codes=source, keep_rows=3, **KW)
    assert torch.equal(out.codes[:, :3], source[:, :3])
    alone = generate(model, "a red circle", 64, 64, seed=out.seeds[0], prefix_codes=source, keep_rows=3, **KW)
    assert torch.equal(alone.codes, out.codes)
    cond = torch.randint(0, 64, (4, 8), generator=torch.Generator().manual_seed(0))
    dual = best_of_n(model, "edges", 64, 64, n=3, seed=20, task="control_canny", condition_codes=cond,
                     prune_after_rows=1, keep=2, chunk_size=2, **KW)
    for i, seed in enumerate(dual.seeds):
        alone = generate(model, "edges", 64, 64, seed=seed, task="control_canny", condition_codes=cond, **KW)
        assert torch.equal(alone.codes[0], dual.codes[i])


def test_pruning_with_the_int8_cache(model):
    with kv_cache_format(model, "int8"):
        out = best_of_n(model, "a red circle", 64, 64, n=4, seed=60, prune_after_rows=4, keep=2, chunk_size=3, **KW)
        alone = generate(model, "a red circle", 64, 64, seed=out.seeds[1], **KW)
    assert torch.equal(alone.codes[0], out.codes[1])


@pytest.mark.parametrize("chunk_size", [None, 1], ids=["one-chunk", "chunks-of-1"])
def test_sjd_finishes_the_survivors_from_their_first_rows(model, chunk_size):
    """With SJD the first rows are painted as without it (the same partial scores, the same survivors), and each
    survivor is finished by SJD from its first rows: exactly what re-rolling those rows with its seed makes. The
    final likelihood covers every painted code."""
    sjd = SJDecoder(window=4)
    plain = best_of_n(model, "a red circle", 64, 64, n=5, seed=40, prune_after_rows=2, keep=2, **KW)
    out = best_of_n(model, "a red circle", 64, 64, n=5, seed=40, prune_after_rows=2, keep=2, decoder=sjd,
                    chunk_size=chunk_size, **KW)
    torch.testing.assert_close(out.partial_scores, plain.partial_scores)  # summed in other batches: close
    assert out.kept == plain.kept
    assert out.seeds == plain.seeds and torch.equal(out.codes[:, :2], plain.codes[:, :2])
    for i, seed in enumerate(out.seeds):
        again = generate(model, "a red circle", 64, 64, seed=seed, prefix_codes=out.codes[i], keep_rows=2,
                         decoder=sjd, **KW)
        assert torch.equal(again.codes[0], out.codes[i])
        want = reference_partial_logprob(model, "a red circle", out.codes[i], 8, 3.0)
        assert abs(float(out.scores[i]) - want) < 1e-4 * abs(want) + 1e-4
    assert out.best_index == int(out.scores.argmax())
    # SJD keeps row ends inside its windows: the survivors take fewer forwards than the plain sampler's 63
    assert all(16 < out.image_forwards[i] < 63 for i in out.kept)
    assert [out.image_forwards[i] for i in range(5) if i not in out.kept] == [16, 16, 16]


def test_greedy_pruning_with_sjd_equals_greedy_pruning_without(model):
    kw = dict(cfg=3.0, top_k=1)
    plain = best_of_n(model, "a red circle", 64, 64, n=3, seed=0, prune_after_rows=3, keep=1, **kw)
    sjd = best_of_n(model, "a red circle", 64, 64, n=3, seed=0, prune_after_rows=3, keep=1,
                    decoder=SJDecoder(window=6, init="spatial"), **kw)
    assert torch.equal(sjd.codes, plain.codes)


def test_sjd_pruning_keeps_the_users_rows_and_shows_them_in_every_preview(model):
    source = generate(model, "a red circle", 64, 64, seed=1, **KW).codes
    seen = []
    out = best_of_n(model, "a red circle", 64, 64, n=4, seed=10, prune_after_rows=2, keep=2, prefix_codes=source,
                    keep_rows=3, decoder=SJDecoder(window=4), progress=lambda *a: seen.append(a), **KW)
    assert torch.equal(out.codes[:, :3], source[:, :3].expand(2, -1, -1))
    for i, seed in enumerate(out.seeds):  # the user's 3 rows and the candidate's 2 painted rows, kept
        again = generate(model, "a red circle", 64, 64, seed=seed, prefix_codes=out.codes[i], keep_rows=5,
                         decoder=SJDecoder(window=4), **KW)
        assert torch.equal(again.codes[0], out.codes[i])
    steps = [done for done, _, _ in seen]
    assert steps == sorted(steps) and steps[-1] == seen[-1][1]  # progress only goes forward, and ends at the end
    for _, _, so_far in seen:
        assert torch.equal(so_far[:, :3], source[:, :3].expand(so_far.shape[0], -1, -1))


def test_the_first_phase_caches_hold_only_the_first_rows_and_the_rest_only_the_survivors(model, monkeypatch):
    made = []
    real = KVCache.for_model.__func__

    def spy(cls, model_, batch, max_len, fmt=None):
        made.append((batch, max_len))
        return real(cls, model_, batch, max_len, fmt)
    monkeypatch.setattr(KVCache, "for_model", classmethod(spy))
    gathered = []
    real_gather = KVCache.gather.__func__
    monkeypatch.setattr(KVCache, "gather", classmethod(
        lambda cls, parts, max_len: gathered.append((sum(len(i) for _, i in parts), max_len))
        or real_gather(cls, parts, max_len)))
    best_of_n(model, "a red circle", 64, 64, n=6, seed=0, prune_after_rows=2, keep=2, chunk_size=6, **KW)
    prompt = len(plan_request(model, "a red circle", 64, 64).cond_ids)
    full = plan_request(model, "a red circle", 64, 64).total_tokens
    assert made == [(12, -(-(prompt + 2 * 9) // 64) * 64)]          # 6 candidates x 2 streams, 2 rows
    assert gathered == [(4, -(-(prompt + 2 * 9) // 64) * 64),      # the 2 survivors compacted
                        (4, -(-full // 64) * 64)]                   # then given the whole image's slots


def test_gathered_rows_are_copied_bit_for_bit(model):
    for fmt in ("bf16", "int8"):
        cache = KVCache.for_model(model, 4, 16, fmt)
        for t in cache.tensors():
            t.copy_(torch.randn(t.shape).to(t.dtype) if t.dtype != torch.int8 else torch.randint(-128, 127, t.shape,
                                                                                               dtype=torch.int8))
        cache.starts = torch.tensor([0, 1, 2, 3])
        cache.length = 10
        out = KVCache.gather([(cache, torch.tensor([3, 1]))], 32)
        assert out.max_len == 32 and out.length == 10 and out.starts.tolist() == [3, 1] and out.format == fmt
        for a, b in zip(out.tensors(), cache.tensors()):
            assert torch.equal(a[:, :, :10], b[[3, 1], :, :10]) and not a[:, :, 10:].any()


def test_partial_panels_decode_the_finished_rows_and_leave_the_rest_grey(model):
    movq = tiny_movqgan(64)
    plan = plan_request(model, "x", 64, 64)
    canvas = torch.randint(0, 64, (2, 3, 8))
    out = pruning.partial_panels(movq, plan, canvas)
    assert out.shape == (2, 64, 64, 3)
    assert torch.equal(out[:, :24], decode_images(movq, canvas)) and (out[:, 24:] == PENDING_GREY).all()
    cond = torch.randint(0, 64, (4, 8), generator=torch.Generator().manual_seed(0))
    dual = plan_request(model, "x", 64, 64, task="control_canny", condition_codes=cond)
    lower = pruning.partial_panels(movq, dual, torch.randint(0, 64, (1, 5, 8)))  # condition + 1 painted row
    assert lower.shape == (1, 32, 64, 3) and (lower[:, 8:] == PENDING_GREY).all() and not (lower[:, :8] == PENDING_GREY).all()


class RowCounter:
    """A scorer that looks at the images: brighter is better; records the panels it was shown."""
    name, needs_images = "brightness", True

    def __init__(self):
        self.seen = []

    def score(self, prompt, result, images):
        self.seen.append(images.clone())
        return images.mean(dim=(1, 2, 3))


def test_an_image_scorer_sees_partial_panels_then_finished_ones(model):
    movq, scorer = tiny_movqgan(64), RowCounter()
    out = best_of_n(model, "a red circle", 64, 64, n=4, seed=3, prune_after_rows=2, keep=2, scorer=scorer,
                    image_tokenizer=movq, **KW)
    partial, final = scorer.seen
    assert partial.shape == (4, 64, 64, 3) and (partial[:, 16:] == PENDING_GREY).all()
    assert out.kept == sorted(torch.argsort(partial.mean(dim=(1, 2, 3)), descending=True)[:2].tolist())
    assert torch.equal(final, out.images) and torch.equal(out.images, decode_images(movq, out.codes))


@pytest.mark.parametrize("kwargs, message", [
    (dict(n=4, prune_after_rows=2, keep=4), "fewer than the 4 candidates"),
    (dict(n=4, prune_after_rows=2, keep=0), "keep must be at least 1"),
    (dict(n=4, prune_after_rows=8, keep=2), "between 1 and 7"),
    (dict(n=4, prune_after_rows=2, keep=2, generate_fn=lambda *a, **k: None), "Multi-GPU"),
    (dict(n=4, prune_after_rows=2, keep=2, decoder=object()), "plain decoding or SJDecoder"),
    (dict(n=2, prefix_codes=torch.zeros(2, 8, 8, dtype=torch.long), keep_rows=2), "pick one image"),
])
def test_bad_pruning_settings_say_what_to_change(model, kwargs, message):
    with pytest.raises(InputError, match=message):
        best_of_n(model, "x", 64, 64, **kwargs, **KW)


def test_chunks_fit_the_memory_of_each_phase(model):
    """Without a chunk size, the first phase sizes its chunks for the prompt and r rows, the second for whole
    images, each counting the partial caches alive beside it (the pools of the best so far while a chunk is
    joined to them; the survivors' caches while the second phase takes chunks from them)."""
    from lumina_core.decoding.best_of_n import RESERVE_BYTES, bytes_per_image
    plan = plan_request(model, "a red circle", 64, 64)
    full, part = plan.total_tokens + 2, len(plan.cond_ids) + 2 * 9 + 2
    n, keep = 8, 3
    kv_partial = KVCache.estimate_bytes(model.config, 2, part, model.compute_dtype)

    def sizes(images):
        budget = RESERVE_BYTES + int(images * bytes_per_image(model, full, True, 2))
        fit = partial(chunk_size_for, model, memory_budget=budget)
        return budget - RESERVE_BYTES, pruned_chunk_sizes(fit, part, full, n, keep, True)

    assert sizes(0.5)[1] == (1, 1)  # too little room for anything: one at a time, the least that can run
    for images in (4.0, 6.0, 12.0):
        room, (first, rest) = sizes(images)
        assert first * bytes_per_image(model, part, True, 2) + 2 * keep * kv_partial <= room
        assert keep * kv_partial + rest * bytes_per_image(model, full, True, 2) <= room
        assert 1 <= rest <= keep and 1 <= first <= n
    room, (first, rest) = sizes(6.0)
    assert first < n  # this budget splits the first phase into chunks, joined into the pool one by one
    out = best_of_n(model, "a red circle", 64, 64, n=n, seed=50, prune_after_rows=2, keep=keep,
                    memory_budget=room + RESERVE_BYTES, **KW)
    assert out.chunk_size == first and len(out.stats) == -(-n // first) + -(-keep // rest)
