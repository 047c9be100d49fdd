"""The re-roll, extend and pruning nodes, called in this process as ComfyUI's executor calls them: the sampler's
start_from and keep_rows (kept codes exact, a batch of different bottoms, the kept rows in the first preview),
Image to Tokens (a batch, each image alone, into Decode and the sampler), the subject description, and Best-of-N
Settings' pruning (kept candidates equal their seeds' images), with the errors each bad input gives."""
import numpy as np
import pytest
import torch

from node_fixtures import model, nodes, one_thread, vq  # noqa: F401 (fixtures)


def sample(nodes, model, **kw):
    sampler = nodes.compat.node_with_hidden(nodes.sampler.Sampler, unique_id="7")
    args = dict(prompt="a red circle", task="t2i", width=64, height=64, seed=0, cfg=4.0, top_k=4096,
                temperature=1.0, batch_size=1)
    args.update(kw)
    return sampler.execute(model, **args).args[0]


@pytest.fixture(scope="module")
def source(nodes, model):
    return sample(nodes, model, seed=123)


def test_re_roll_keeps_the_top_rows_and_paints_different_bottoms(nodes, model, source):
    out = sample(nodes, model, seed=5, batch_size=3, start_from=source, keep_rows=4)
    assert out.codes.shape == (3, 8, 8) and out.seeds == (5, 6, 7)
    assert torch.equal(out.codes[:, :4], source.codes[:, :4].expand(3, -1, -1))
    assert len({tuple(c[4:].flatten().tolist()) for c in out.codes}) == 3
    alone = sample(nodes, model, seed=6, start_from=source, keep_rows=4)
    assert torch.equal(alone.codes[0], out.codes[1])


def test_keep_rows_zero_keeps_every_row_and_a_taller_height_extends_downward(nodes, model, source):
    tall = sample(nodes, model, seed=1, height=96, start_from=source, keep_rows=0)
    assert tall.codes.shape == (1, 12, 8) and torch.equal(tall.codes[0, :8], source.codes[0])
    with pytest.raises(Exception, match="leaves nothing to paint.*taller"):
        sample(nodes, model, seed=1, start_from=source, keep_rows=0)


def test_keep_rows_without_start_from_does_nothing(nodes, model):
    assert torch.equal(sample(nodes, model, seed=9, keep_rows=3).codes, sample(nodes, model, seed=9).codes)


def test_the_first_preview_shows_the_kept_rows(nodes, model, vq, source, monkeypatch):
    import comfy.utils
    updates = []
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK",
                        lambda value, total, preview, node_id=None: updates.append((value, total, preview)))
    sample(nodes, model, seed=2, start_from=source, keep_rows=5, image_tokenizer=vq)
    value, total, preview = updates[0]
    assert (value, total) == (0, 3) and preview is not None  # before the first painted row
    first = np.asarray(preview[1], dtype=np.int16)
    assert first.shape == (64, 64, 3)
    assert (first[40:] == 128).all() and not (first[:40] == 128).all()  # kept rows drawn, the rest grey
    last = np.asarray([p for _, _, p in updates if p is not None][-1][1])
    assert not (last[40:] == 128).all()  # by the end the painted rows are there


def test_image_to_tokens_encodes_each_image_alone_for_decode_and_the_sampler(nodes, model, vq):
    images = torch.rand(2, 80, 100, 3, generator=torch.Generator().manual_seed(0))
    tokens, fitted = nodes.image_to_tokens.ImageToTokens.execute(vq, images, 64, 64).args
    assert tokens.codes.shape == (2, 8, 8) and fitted.shape == (2, 64, 64, 3) and tokens.task is None
    one = nodes.image_to_tokens.ImageToTokens.execute(vq, images[1:], 64, 64).args[0]
    assert torch.equal(one.codes[0], tokens.codes[1])
    decoded = nodes.decode.Decode.execute(tokens, vq, "output").args[0]
    assert decoded.shape == (2, 64, 64, 3)
    out = sample(nodes, model, seed=3, batch_size=2, start_from=tokens, keep_rows=2)
    assert torch.equal(out.codes[:, :2], tokens.codes[:, :2])  # image i keeps picture i's rows


def test_a_sampler_output_below_a_condition_starts_from_its_lower_panel(nodes, model, vq, source):
    condition = nodes.condition.ConditionEncoder.execute(vq, torch.rand(1, 64, 64, 3), "canny", 64, 64, 100,
                                                         200).args[0]
    control = sample(nodes, model, seed=4, task="control_canny", condition=condition)
    again = sample(nodes, model, seed=8, task="control_canny", condition=condition, start_from=control, keep_rows=3)
    assert torch.equal(again.codes[0, 8:11], control.codes[0, 8:11])
    t2i = sample(nodes, model, seed=8, start_from=control, keep_rows=3)  # the painted panel, into a t2i re-roll
    assert torch.equal(t2i.codes[0, :3], control.codes[0, 8:11])


@pytest.mark.parametrize("kw, message", [
    (dict(width=96), "8 codes \\(64 px\\) wide but the image is 12 codes \\(96 px\\)"),
    (dict(keep_rows=9), "only 8 rows"),
    (dict(batch_size=2, keep_rows=2, start="two"), "2 images but the batch has 1.*batch size to 2"),
])
def test_bad_start_from_says_what_to_change(nodes, model, source, kw, message):
    start = source
    if kw.pop("start", None) == "two":
        start = sample(nodes, model, seed=1, batch_size=2)
        kw["batch_size"] = 1
    with pytest.raises(Exception, match=message):
        sample(nodes, model, start_from=start, **kw)


def test_start_from_another_image_tokenizer_is_refused(nodes, model, source):
    from dataclasses import replace
    other = replace(source, num_codes=512)
    with pytest.raises(Exception, match="512-code image tokenizer but the model uses 64 codes"):
        sample(nodes, model, start_from=other)


def test_the_subject_description_reaches_the_prompt(nodes, model, vq, monkeypatch):
    from lumina_pack.lumina_core.decoding.tasks import DEFAULT_SUBJECT_DESCRIPTION
    seen = []
    real = nodes.sampler.prepare_request
    monkeypatch.setattr(nodes.sampler, "prepare_request",
                        lambda engine, request, **kw: seen.append(real(engine, request, **kw)) or seen[-1])
    condition = nodes.condition.ConditionEncoder.execute(vq, torch.rand(1, 64, 64, 3), "none", 64, 64, 100,
                                                         200).args[0]
    kw = dict(task="subject", condition=condition, top_k=0, seed=3)
    mine = sample(nodes, model, subject_description="a small red robot", **kw)
    default = sample(nodes, model, **kw)  # the widget's default: upstream's sentence
    empty = sample(nodes, model, subject_description="", **kw)
    assert "<a small red robot>" in seen[0].plan.text and f"<{DEFAULT_SUBJECT_DESCRIPTION}>" in seen[1].plan.text
    assert seen[2].plan.text == seen[1].plan.text and torch.equal(empty.codes, default.codes)
    assert not torch.equal(mine.codes, default.codes)


def test_pruned_best_of_n_with_sjd_keeps_the_same_candidates_and_finishes_them_with_sjd(nodes, model):
    from lumina_pack.nodes.settings import BestOfNSettings, SJDSettings
    settings = BestOfNSettings.execute(6, "likelihood", "none", 0, 2, 2).args[0]
    sjd = SJDSettings.execute(window=6, init="random", mode="exact", draft_tree="off").args[0]
    plain = sample(nodes, model, seed=40, best_of_n=settings)
    fast = sample(nodes, model, seed=40, best_of_n=settings, sjd=sjd)
    assert fast.seeds == plain.seeds and torch.equal(fast.codes[:, :2], plain.codes[:, :2])
    assert fast.codes.shape == (2, 8, 8) and fast.scores.shape == (2,)
    from lumina_pack.lumina_core import SJDecoder, generate
    for i, seed in enumerate(fast.seeds):  # what re-rolling its first 2 rows with its seed and SJD makes
        again = generate(model.engine, "a red circle", 64, 64, seed=seed, cfg=4.0, top_k=4096, temperature=1.0,
                         prefix_codes=fast.codes[i], keep_rows=2, decoder=SJDecoder(**sjd))
        assert torch.equal(again.codes[0], fast.codes[i])


def test_best_of_n_settings_prune_and_the_kept_are_their_seeds_images(nodes, model):
    from lumina_pack.nodes.settings import BestOfNSettings
    settings = BestOfNSettings.execute(6, "likelihood", "none", 0, 2, 2).args[0]
    assert settings["prune_after_rows"] == 2 and settings["keep"] == 2
    out = sample(nodes, model, seed=40, best_of_n=settings)
    assert out.codes.shape == (2, 8, 8) and out.scores.shape == (2,)
    for i, seed in enumerate(out.seeds):
        assert torch.equal(sample(nodes, model, seed=seed).codes[0], out.codes[i])
    best = nodes.select.SelectBest.execute(out, 1).args[0]
    assert best.seeds == (out.seeds[int(out.scores.argmax())],)
    # old workflows: no pruning inputs, every candidate finished
    plain = BestOfNSettings.execute(3, "likelihood", "none", 0).args[0]
    assert len(sample(nodes, model, seed=40, best_of_n=plain).seeds) == 3
    with pytest.raises(Exception, match="keep must be fewer than the n = 4"):
        BestOfNSettings.execute(4, "likelihood", "none", 0, 2, 4)
    with pytest.raises(Exception, match="between 1 and 7"):
        sample(nodes, model, seed=40, best_of_n=BestOfNSettings.execute(4, "likelihood", "none", 0, 8, 2).args[0])
