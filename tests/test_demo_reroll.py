"""On the demo model: bench/pruning's methods (paired candidate seeds, forwards counted per candidate) and the
re-roll picture in docs/ (kept rows identical, the painted rows different across seeds)."""
import pytest
import torch

from bench import pruning as bench
from demo import load_demo
from lumina_core import SamplingOptions, generate


@pytest.fixture(scope="module")
def demo():
    torch.set_num_threads(1)
    return load_demo()


def run(demo, name, seeds=(3,)):
    model, movqgan, d = demo
    counter = bench.Counter()
    fn = bench.method_fn(name, counter, bench.LikelihoodScorer(), movqgan)
    sampling = SamplingOptions(cfg=d["cfg"], top_k=d["top_k"], temperature=d["temperature"])
    res = fn(model, "two green squares", task="t2i", width=64, height=64, seeds=list(seeds), sampling=sampling)
    return res, counter, sampling


def test_pruned_best_of_8_picks_among_best_of_8s_candidates_for_fewer_forwards(demo):
    model = demo[0]
    plain, plain_count, sampling = run(demo, "plain")
    best, best_count, _ = run(demo, "best_of_8")
    pruned, pruned_count, _ = run(demo, "prune_8to2_after2")
    assert (plain_count.per_image, best_count.per_image) == (63, 8 * 63)
    assert pruned_count.per_image == 8 * 16 + 2 * 47  # every candidate 2 rows of 8 codes, two of them the rest
    candidates = generate(model, "two green squares", 64, 64, seeds=[16 * 3 + c for c in range(8)],
                          sampling=sampling).codes
    assert torch.equal(plain.codes[0], candidates[0])  # plain is candidate 0: the rows are paired
    for res in (best, pruned):
        assert any(torch.equal(res.codes[0], c) for c in candidates)


def test_unknown_methods_are_named():
    with pytest.raises(SystemExit, match="unknown method"):
        bench.method_fn("best_of_eight", bench.Counter(), None, None)


def test_the_reroll_picture_keeps_rows_and_varies_the_rest(demo, capsys):
    from demo import reroll_picture
    picture = reroll_picture.render(*demo)
    assert picture.ndim == 3 and picture.shape[2] == 3
    out = capsys.readouterr().out
    assert out.count("identical in all 4 images; 4 different sets of painted rows") == 3
