"""SJD with a draft tree (lumina_core/decoding/jacobi_tree.py): the tree's shape and attention mask, recursive
rejection sampling over several candidates (exact, and a wrong rule that the same test catches), greedy codes
equal to plain greedy (t2i, a dual-panel task, the int8 cache, batches), the sampled distribution against plain
sampling with lossy controls, and the device rule behind window="auto"."""
import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from builders import tiny_checkpoint
from lumina_core import InputError, KVCache, LuminaMGPT, generate, kv_cache_format
from lumina_core.decoding import jacobi_tree
from lumina_core.decoding.jacobi_tree import DraftTree, recursive_rejection
from lumina_core.decoding.sjd import SJDecoder
from lumina_core.decoding.window_rule import DEVICES, auto_tree, device_for, knee_tokens
from test_sjd import ALPHA, POSITIONS, _min_p_value, _samples, plain_samples, sharp_model  # noqa: F401 (fixtures)

TREE = dict(window=16, candidates=4, branch=3)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """float64: the tree's and the plain loop's different computation orders round at ~1e-16, so greedy codes
    compare exactly on any CPU."""
    folder, _ = tiny_checkpoint(tmp_path_factory.mktemp("m") / "ckpt", num_codes=64, shards=1)
    return LuminaMGPT.from_pretrained(folder, dtype=torch.float64)


# ----------------------------------------------------------------------------- shape and mask
def test_the_tree_puts_the_main_path_first_and_each_node_sees_only_its_ancestors():
    tree = DraftTree(6, (2, 2), 1)
    nodes = tree.nodes()
    assert [d for _, d, _ in nodes[:6]] == list(range(6))  # root + main path: keeping it moves nothing
    # level 1: main child + 1 other; level 2: 2 children under each; the 3 other leaves get 1 chain node each
    assert tree.size == 6 + 1 + (1 + 2) + 3 == len(nodes)
    dev = tree.on("cpu")
    for n, (parent, depth, _) in enumerate(nodes):
        ancestors = set()
        a = n
        while a >= 0:
            ancestors.add(a)
            a = nodes[a][0]
        assert set(torch.nonzero(dev.ancestors[n]).flatten().tolist()) == ancestors
        assert int(dev.depth[n]) == depth
    assert dev.children[0].tolist() == [1, 6]


def test_a_tree_forward_scores_every_path_as_if_it_were_alone(model):
    """Each node's logits equal those of its own path fed as a plain chain after the same prompt."""
    tree = DraftTree(5, (3,), 2)
    ids = torch.randint(0, model.config.vocab_size, (1, 8), generator=torch.Generator().manual_seed(0))
    nodes = tree.nodes()
    tokens = torch.randint(0, model.config.vocab_size, (1, tree.size), generator=torch.Generator().manual_seed(1))
    cache = KVCache.for_model(model, 1, 64)
    model.forward_step(ids, cache, cache.slots(8), kv_len=8)
    cache.length = 8
    slots = (8 + torch.arange(tree.size))[None]
    got = model.forward_step(tokens, cache, slots, kv_len=8 + tree.size, tree=tree.on("cpu"))
    for n in range(tree.size):
        path, a = [], n
        while a >= 0:
            path.insert(0, a)
            a = nodes[a][0]
        alone = KVCache.for_model(model, 1, 64)
        model.forward_step(ids, alone, alone.slots(8), kv_len=8)
        ref = model.forward_step(tokens[:, path], alone, 8 + torch.arange(len(path)), kv_len=8 + len(path))
        torch.testing.assert_close(got[0, n], ref[0, -1], rtol=0, atol=1e-9)


# ----------------------------------------------------------------------------- recursive rejection
def _rrs_samples(n, rule=recursive_rejection):
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.05, 0.4, 0.1, 0.3, 0.15, 0.0]).expand(n, -1)
    q1 = torch.tensor([0.3, 0.1, 0.3, 0.1, 0.1, 0.1]).expand(n, -1)
    x1 = torch.multinomial(q1, 1, generator=g)[:, 0]
    others = torch.tensor([3, 5, 0]).expand(n, -1).clone()
    others[others == x1[:, None]] = -1  # candidates are distinct from the carried draft
    u1, u_others = torch.rand(n, generator=g), torch.rand(n, 3, generator=g)
    noise = -torch.log(-torch.log(torch.rand(n, 6, generator=g)))
    chosen, residual = rule(p, x1, q1, others, u1, u_others, noise)
    cands = torch.cat([x1[:, None], others], 1)
    out = torch.where(chosen < 4, cands.gather(1, chosen.clamp(max=3)[:, None])[:, 0], residual)
    return np.bincount(out.numpy(), minlength=6), p[0].numpy()


def _expected(p, counts):
    p = p.astype(np.float64)[:5]
    return p / p.sum() * counts[:5].sum()


def test_recursive_rejection_over_candidates_is_an_exact_sample_of_p():
    counts, p = _rrs_samples(200_000)
    assert counts[5] == 0  # a code p rules out is never kept, whoever proposes it
    assert chisquare(counts[:5], _expected(p, counts)).pvalue > 0.01


def test_testing_the_other_candidates_against_p_instead_of_the_residual_fails_the_same_test():
    counts, p = _rrs_samples(200_000, _without_recursion)
    assert chisquare(counts[:5], _expected(p, counts)).pvalue < 1e-6


# ----------------------------------------------------------------------------- greedy parity
@pytest.mark.parametrize("shape", [TREE, dict(window=12, candidates=3, levels=2, branch=2)], ids=["1-level", "2-level"])
def test_greedy_tree_sjd_equals_plain_greedy_t2i(model, shape):
    kw = dict(cfg=3.0, top_k=1, seed=4, batch_size=3)
    plain = generate(model, "a red circle", 64, 64, **kw)
    sjd = generate(model, "a red circle", 64, 64, decoder=SJDecoder(**shape), **kw)
    assert torch.equal(sjd.codes, plain.codes)
    assert sjd.stats.extra["tokens_per_forward"] == SJDecoder(**shape).tokens_per_forward
    assert sum(sjd.stats.extra["codes_per_forward_hist"][i] * i for i in range(
        len(sjd.stats.extra["codes_per_forward_hist"]))) == 3 * 64 - 3  # every code but the prefill's first


def test_greedy_tree_sjd_keeps_side_paths_and_moves_their_cache(model, monkeypatch):
    """Side paths are kept (their keys and values moved after the root) and the codes still equal plain's."""
    kept_side = []
    original = jacobi_tree.TreeJacobiRun._keep_cache

    def watch(self, kept, active):
        kept_side.append(int(((self.out_nodes[:, 1] != 1) & (kept > 0) & active).sum()))
        original(self, kept, active)

    monkeypatch.setattr(jacobi_tree.TreeJacobiRun, "_keep_cache", watch)
    kw = dict(cfg=3.0, top_k=1, seed=11, batch_size=4)
    assert torch.equal(generate(model, "two green squares", 64, 64, decoder=SJDecoder(**TREE), **kw).codes,
                       generate(model, "two green squares", 64, 64, **kw).codes)
    assert sum(kept_side) > 0


def test_greedy_tree_sjd_equals_plain_greedy_dual_panel(model):
    cond = torch.randint(0, 64, (4, 8), generator=torch.Generator().manual_seed(1))
    kw = dict(task="control_canny", condition_codes=cond, cfg=2.5, top_k=1)
    plain = generate(model, "edges", 64, 64, **kw)
    sjd = generate(model, "edges", 64, 64, decoder=SJDecoder(**TREE), **kw)
    assert torch.equal(sjd.codes, plain.codes) and torch.equal(sjd.codes[0, :4], cond)


def test_greedy_tree_sjd_with_the_int8_cache_equals_plain_with_it(model):
    kw = dict(cfg=3.0, top_k=1, seed=2, batch_size=2)
    with kv_cache_format(model, "int8"):
        assert torch.equal(generate(model, "a red circle", 64, 64, decoder=SJDecoder(**TREE), **kw).codes,
                           generate(model, "a red circle", 64, 64, **kw).codes)


def test_sampled_tree_sjd_seed_is_batch_independent(model):
    kw = dict(cfg=3.0, top_k=20, decoder=SJDecoder(**TREE))
    batch = generate(model, "a red circle", 64, 64, seed=7, batch_size=3, **kw)
    alone = generate(model, "a red circle", 64, 64, seed=8, **kw)
    assert torch.equal(batch.codes[1], alone.codes[0])


@pytest.mark.parametrize("bad", [dict(window=8, candidates=2, levels=7), dict(window=8, candidates=2, branch=7),
                                 dict(candidates=0), dict(window=8, candidates=2, mode="upstream"),
                                 dict(window=2, candidates=4, branch=0)])
def test_bad_tree_settings_say_what_to_change(bad):
    with pytest.raises(InputError, match="SJD"):
        SJDecoder(**bad)


# ----------------------------------------------------------------------------- distribution
@pytest.mark.parametrize("shape", [dict(window=8, candidates=3, branch=3), dict(window=8, candidates=3, levels=2, branch=2)],
                         ids=["1-level", "2-level"])
def test_sampled_tree_sjd_has_the_plain_sampling_distribution(sharp_model, plain_samples, shape):  # noqa: F811
    sjd = _samples(sharp_model, SJDecoder(**shape), first_seed=100_000)
    assert _min_p_value(plain_samples, sjd) > ALPHA / len(POSITIONS)


def _without_recursion(p, x1, q1, others, u1, u_others, noise):
    """Recursive rejection without r <- norm(max(0, r - q)): each other candidate tested against p itself."""
    K = others.shape[1] + 1
    px, qx = p.gather(-1, x1[:, None])[:, 0], q1.gather(-1, x1[:, None])[:, 0]
    chosen = torch.where(u1 * qx < px, 0, K)
    for j in range(K - 1):
        x = others[:, j]
        pj = p.gather(-1, x.clamp(min=0)[:, None])[:, 0]
        chosen = torch.where((chosen == K) & (x >= 0) & (u_others[:, j] < pj), j + 1, chosen)
    return chosen, recursive_rejection(p, x1, q1, others, u1, u_others, noise)[1]


def test_a_tree_that_tests_its_other_candidates_against_p_fails_the_same_test(sharp_model, plain_samples, monkeypatch):  # noqa: F811
    """The lossy control for the tree: the other candidates checked against p instead of what the candidates
    before them left of it (the step that makes several candidates exact). The same test catches it."""
    monkeypatch.setattr(jacobi_tree, "recursive_rejection", _without_recursion)
    sjd = _samples(sharp_model, SJDecoder(window=8, candidates=3, branch=3), first_seed=100_000)
    assert _min_p_value(plain_samples, sjd) < ALPHA / len(POSITIONS)


# ----------------------------------------------------------------------------- window="auto"
def test_the_knee_is_bandwidth_against_flops_and_halves_with_int8():
    h200 = device_for("NVIDIA H200")
    assert round(knee_tokens(h200)) == 103          # 2 bytes x 989 TFLOPS / (2 x 4.8 TB/s x 2 streams)
    assert round(knee_tokens(h200, "int8")) == 52 and round(knee_tokens(h200, "int4")) == 26
    assert round(knee_tokens(device_for("NVIDIA GeForce RTX 4090"))) == 82
    assert knee_tokens(h200, streams=1) == 2 * knee_tokens(h200)
    assert {d.name for d in DEVICES} >= {"H200", "H100", "RTX 4090", "RTX 4080", "RTX 3060"}


def test_auto_picks_the_largest_measured_shape_within_the_budget():
    assert auto_tree(10) == dict(window=16)
    assert auto_tree(51) == dict(window=32, candidates=4, branch=4)
    assert auto_tree(1000) == dict(window=32, candidates=8, branch=8)
    on_cpu = SJDecoder().resolved(type("M", (), {"device": torch.device("cpu"), "modules": lambda self: []})(),
                                  type("O", (), {"uses_cfg": True})())
    assert (on_cpu.window, on_cpu.candidates) == (16, 1)  # on a CPU the chain: trees cost more than they save
