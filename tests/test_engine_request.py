"""lumina_core's request-to-result entry (what the Sampler node runs): checks before loading, the memory a
request will hold, and results equal to calling generate / best_of_n directly."""
import pytest
import torch

from builders import tiny_checkpoint
from lumina_core import InputError, LikelihoodScorer, LuminaMGPT, SJDecoder, best_of_n, generate
from lumina_core.request import Request, prepare_request, run_request


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder, _ = tiny_checkpoint(tmp_path_factory.mktemp("m") / "ckpt", num_codes=64, shards=1)
    torch.set_num_threads(1)
    return LuminaMGPT.from_pretrained(folder, dtype=torch.float32)


def test_plain_request_equals_generate(model):
    request = Request("a red circle", width=64, height=64, seed=5, cfg=3.0, top_k=8, batch_size=2)
    prepared = prepare_request(model, request)
    assert prepared.canvas == (64, 64) and prepared.window == 1 and prepared.streams == 4  # 2 images x (cond, uncond)
    assert prepared.cache_tokens == prepared.plan.total_tokens + 1
    rows = []
    outcome = run_request(prepared, model, progress=lambda done, total, codes: rows.append((done, total)))
    want = generate(model, "a red circle", 64, 64, seed=5, cfg=3.0, top_k=8, batch_size=2)
    assert torch.equal(outcome.codes, want.codes) and outcome.seeds == (5, 6)
    assert rows[-1] == (8, 8) and outcome.tokens_per_forward is None and outcome.scores is None


def test_dual_panel_sjd_request_equals_generate_and_counts_tokens_per_forward(model):
    sjd = {"window": 4, "init": "random", "mode": "exact"}
    request = Request("a red circle", task="pair_canny", width=64, height=32, seed=2, cfg=1.0, top_k=1, sjd=sjd)
    prepared = prepare_request(model, request)
    assert prepared.canvas == (64, 64) and prepared.streams == 1 and prepared.window == 4  # no guidance: 1 stream
    outcome = run_request(prepared, model, decoder=prepared.decoder())
    want = generate(model, "a red circle", 64, 64, task="pair_canny", seed=2, cfg=1.0, top_k=1,
                    decoder=SJDecoder(**sjd))
    assert torch.equal(outcome.codes, want.codes)
    assert outcome.tokens_per_forward == pytest.approx(outcome.stats.tokens_per_forward) and outcome.tokens_per_forward > 1


def test_best_of_n_request_equals_best_of_n(model):
    bon = {"n": 3, "scorer": LikelihoodScorer(), "chunk_size": 2}
    prepared = prepare_request(model, Request("two squares", width=32, height=32, seed=9, cfg=2.0, best_of_n=bon))
    assert prepared.images_at_once == 2 and prepared.streams == 4  # the fixed chunk is decoded at once
    outcome = run_request(prepared, model)
    want = best_of_n(model, "two squares", 32, 32, n=3, seed=9, cfg=2.0, scorer=LikelihoodScorer(), chunk_size=2)
    assert torch.equal(outcome.codes, want.codes) and torch.equal(torch.as_tensor(outcome.scores), torch.as_tensor(want.scores))
    assert outcome.stats.forwards == sum(s.forwards for s in want.stats)  # both chunks counted


@pytest.mark.parametrize("request_, message", [
    (Request("x", task="control_canny", width=32, height=32), "starts from an image"),
    (Request("x", width=32, height=32, condition_codes=torch.zeros(1, 4, 4, dtype=torch.long)), "text only"),
    (Request("x", width=32, height=32, batch_size=2,
             best_of_n={"n": 2, "scorer": LikelihoodScorer(), "chunk_size": 0}), "set batch_size to 1"),
    (Request("x" * 40000, width=32, height=32), "too long"),
])
def test_requests_the_model_cannot_take_fail_before_loading(model, request_, message):
    with pytest.raises(InputError, match=message):
        prepare_request(model, request_)


def test_kept_rows_and_the_subject_description_reach_generate(model):
    source = generate(model, "a red circle", 64, 64, seed=1, cfg=3.0, top_k=8).codes
    request = Request("a blue square", width=64, height=64, seed=4, cfg=3.0, top_k=8, batch_size=2,
                      prefix_codes=source, keep_rows=3)
    prepared = prepare_request(model, request)
    assert prepared.plan.kept_rows == 3 and prepared.plan.layout.gen_rows == 5
    outcome = run_request(prepared, model)
    want = generate(model, "a blue square", 64, 64, seed=4, cfg=3.0, top_k=8, batch_size=2, prefix_codes=source,
                    keep_rows=3)
    assert torch.equal(outcome.codes, want.codes) and torch.equal(outcome.codes[:, :3], source[:, :3].expand(2, -1, -1))
    cond = torch.zeros(1, 4, 8, dtype=torch.long)
    subject = Request("on a beach", task="subject", width=64, height=32, condition_codes=cond,
                      subject_description="a small red robot")
    assert "<a small red robot>" in prepare_request(model, subject).plan.text
    assert "<Bubbly and effervescent" in prepare_request(model, Request("on a beach", task="subject", width=64,
                                                                        height=32, condition_codes=cond)).plan.text


def test_pruned_best_of_n_request_equals_best_of_n(model):
    bon = {"n": 4, "scorer": LikelihoodScorer(), "chunk_size": None, "prune_after_rows": 2, "keep": 2}
    outcome = run_request(prepare_request(model, Request("two squares", width=64, height=64, seed=3, cfg=2.0,
                                                         best_of_n=bon)), model)
    want = best_of_n(model, "two squares", 64, 64, n=4, seed=3, cfg=2.0, prune_after_rows=2, keep=2)
    assert torch.equal(outcome.codes, want.codes) and outcome.seeds == tuple(want.seeds) and len(want.seeds) == 2
    assert torch.equal(outcome.scores, want.scores)


@pytest.mark.parametrize("request_, message", [
    (Request("x", width=64, height=64, prefix_codes=torch.zeros(1, 8, 4, dtype=torch.long)), "wide"),
    (Request("x", width=64, height=64, prefix_codes=torch.zeros(1, 8, 8, dtype=torch.long)), "nothing to paint"),
    (Request("x", width=64, height=64, prefix_codes=torch.zeros(1, 4, 0, dtype=torch.long)), "code grids"),
    (Request("x", width=64, height=64, prefix_codes=torch.zeros(2, 8, 8, dtype=torch.long), keep_rows=2,
             best_of_n={"n": 2, "scorer": LikelihoodScorer(), "chunk_size": None}), "start from one image"),
    (Request("x", width=64, height=64, best_of_n={"n": 2, "scorer": LikelihoodScorer(), "chunk_size": None,
                                                  "prune_after_rows": 2, "keep": 2}), "fewer than the 2 candidates"),
])
def test_bad_kept_rows_and_pruning_fail_before_loading(model, request_, message):
    with pytest.raises(InputError, match=message):
        prepare_request(model, request_)
