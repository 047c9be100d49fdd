"""Demo training is reproducible (a few steps retrained from the same seed give the same losses) and
resumable (a run killed after a snapshot and started again ends exactly where an uninterrupted one does)."""
import pytest
import torch

from demo.shapes import step_rng
from demo.snapshots import StaleSnapshot
from demo.train_movqgan import MoVQGANTrainConfig, finetune_decoder, image_batch
from demo.train_movqgan import train as train_movqgan
from demo.train_tokenizer import build_tokenizer
from demo.train_transformer import TransformerTrainConfig, make_batch, training_sequence
from demo.train_transformer import train as train_transformer
from lumina_core import TextTokenizer
from lumina_core.model.checkpoint_writer import save_tokenizer
from lumina_core.decoding.tasks import build_prompt

TINY_VQ = dict(batch=4, n_embed=64, warmup=2, restart_every=2, decoder_steps=3)
TINY_TF = dict(batch=4, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2, warmup=2,
               max_positions=256, dual_share=0.5)


def _tokenizer(tmp_path, codes):
    save_tokenizer(str(tmp_path), build_tokenizer(codes))
    return TextTokenizer.from_pretrained(str(tmp_path))


def test_movqgan_training_is_reproducible():
    runs = [train_movqgan(MoVQGANTrainConfig(steps=3, seed=s, **TINY_VQ), log=None)[1] for s in (0, 0, 1)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    assert all(torch.isfinite(torch.tensor(r)).all() for r in runs)


def test_decoder_finetune_keeps_the_codes_and_is_reproducible():
    cfg = MoVQGANTrainConfig(steps=1, **TINY_VQ)
    model, _, _ = train_movqgan(cfg, log=None)
    start = {k: v.clone() for k, v in model.state_dict().items()}

    def tune():
        model.load_state_dict(start)
        tuned, losses, _ = finetune_decoder(model, cfg, log=None)
        return {k: v.clone() for k, v in tuned.state_dict().items()}, losses

    (after, losses_a), (_, losses_b) = tune(), tune()
    assert losses_a == losses_b
    assert not torch.equal(after["decoder.conv_out.weight"], start["decoder.conv_out.weight"])
    for k, v in after.items():
        if k.startswith(("encoder.", "quant_conv.", "quantize.")):
            assert torch.equal(v, start[k]), k


def test_transformer_training_is_reproducible(tmp_path):
    vq, _, _ = train_movqgan(MoVQGANTrainConfig(steps=1, **TINY_VQ), log=None)
    tok = _tokenizer(tmp_path, vq.num_codes)
    runs = [train_transformer(TransformerTrainConfig(steps=4, seed=s, **TINY_TF), tok, vq, log=None)[1]
            for s in (0, 0, 1)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    assert runs[0][-1] < runs[0][0]  # it learns something even in four steps


def test_training_data_is_fresh_each_step():
    a, b = image_batch(step_rng(0, 0), 4, 0.0), image_batch(step_rng(0, 1), 4, 0.0)
    assert not (a == b).all()
    assert (image_batch(step_rng(0, 0), 4, 0.0) == a).all()


def test_sequences_match_the_engine_layout(tmp_path):
    """t2i samples are exactly the engine's prompt plus the image rows; dropout keeps its uncond stream."""
    vq, _, _ = train_movqgan(MoVQGANTrainConfig(steps=1, **TINY_VQ), log=None)
    tok = _tokenizer(tmp_path, vq.num_codes)
    sp = tok.special
    codes = torch.arange(64).view(8, 8) % vq.num_codes
    plan = build_prompt(tok, "t2i", "a red circle", 64, 64)
    ids, start = training_sequence(tok, "t2i", "a red circle", codes, None, drop_text=False)
    assert ids[: len(plan.cond_ids)] == plan.cond_ids and ids[-1] == sp.image_end
    assert ids[start - 3: start] == [sp.image_start, tok.grid_token(2), tok.grid_token(2)]
    body = ids[start:-1]
    assert len(body) == 8 * 9 and all(body[i] == sp.row_end for i in range(8, len(body), 9))
    dropped, dstart = training_sequence(tok, "t2i", "a red circle", codes, None, drop_text=True)
    assert dropped[:3] == plan.uncond_ids and dstart == 3 and dropped[3:] == ids[start:]
    edges = (codes + 1) % vq.num_codes
    ctrl, cstart = training_sequence(tok, "control_canny", "a red circle", codes, edges, drop_text=True)
    cplan = build_prompt(tok, "control_canny", "a red circle", 64, 128, condition_codes=edges)
    assert ctrl[: len(cplan.uncond_ids)] == cplan.uncond_ids and cstart == 3  # condition rows are targets too
    pair, _ = training_sequence(tok, "pair_canny", "a red circle", codes, edges, drop_text=False)
    assert len(pair) == len(build_prompt(tok, "pair_canny", "a red circle", 64, 128).cond_ids) + 16 * 9 + 1
    inputs, targets = make_batch(0, TransformerTrainConfig(**TINY_TF), tok, vq)
    assert inputs.shape == targets.shape and (targets != -100).any()


# ----------------------------------------------------------------------------- resumable build
class Interrupted(Exception):
    pass


def _stop_after(step_to_stop: int):
    """A log callback that kills the run once it reports `step_to_stop` (logged every step)."""
    def log(line):
        if f" {step_to_stop}/" in line:
            raise Interrupted(line)
    return log


def test_an_interrupted_movqgan_run_resumes_to_the_same_result(tmp_path):
    cfg = MoVQGANTrainConfig(steps=5, **TINY_VQ)
    _, whole, _ = train_movqgan(cfg, log=None)
    state = str(tmp_path / "movqgan.pt")
    with pytest.raises(Interrupted):
        train_movqgan(cfg, log=_stop_after(4), log_every=1, state_path=state, snapshot_every=2)
    assert torch.load(state, weights_only=True)["step"] == 2  # the last snapshot before the kill
    messages = []
    model, resumed, _ = train_movqgan(cfg, log=messages.append, log_every=1, state_path=state, snapshot_every=2)
    assert any("resuming at step 2/5" in m for m in messages)
    assert resumed == whole  # same data, optimiser, codebook EMA and restart RNG from the snapshot
    again, losses, _ = train_movqgan(cfg, log=None, state_path=state)  # a finished stage is loaded, not retrained
    assert losses == whole
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_a_snapshot_from_other_settings_is_refused(tmp_path):
    state = str(tmp_path / "movqgan.pt")
    train_movqgan(MoVQGANTrainConfig(steps=2, **TINY_VQ), log=None, state_path=state)
    with pytest.raises(StaleSnapshot, match="--fresh"):
        train_movqgan(MoVQGANTrainConfig(steps=3, **TINY_VQ), log=None, state_path=state)


def test_an_interrupted_transformer_run_resumes_to_the_same_result(tmp_path):
    vq, _, _ = train_movqgan(MoVQGANTrainConfig(steps=1, **TINY_VQ), log=None)
    tok = _tokenizer(tmp_path, vq.num_codes)
    cfg = TransformerTrainConfig(steps=5, **TINY_TF)
    _, whole, _ = train_transformer(cfg, tok, vq, log=None)
    state = str(tmp_path / "transformer.pt")
    with pytest.raises(Interrupted):
        train_transformer(cfg, tok, vq, log=_stop_after(3), log_every=1, state_path=state, snapshot_every=2)
    _, resumed, _ = train_transformer(cfg, tok, vq, log=None, state_path=state, snapshot_every=2)
    assert resumed == whole


def test_hard_negative_captions_change_one_claim():
    """The verifier's hard negatives: the same caption with one word replaced (colour, shape, region, size,
    count or relation) or the two related objects swapped; never the caption itself, never 'a orange'."""
    import re

    import numpy as np

    from demo.shapes import REGION_PHRASES, training_scenes
    from demo.train_verifier import hard_negative
    rng = np.random.default_rng(5)
    kinds = set()
    for scene in training_scenes(11, 300):
        true, false = scene.caption, hard_negative(scene.caption, rng)
        assert false != true
        assert not re.search(r"\ba [aeiou]|\ban [^aeiou\s]", false), false
        a = re.sub(r"\ban\b", "a", true).split()
        b = re.sub(r"\ban\b", "a", false).split()
        if sorted(a) == sorted(b):
            kinds.add("swap")                      # objects swapped around a relation
        else:
            assert len(a) == len(b), (true, false)
            changed = sum(x != y for x, y in zip(a, b))
            regions = [p for p in REGION_PHRASES.values() if p in true], [p for p in REGION_PHRASES.values() if p in false]
            kinds.add("word")
            assert changed == 1 or (changed == 2 and regions[0] != regions[1]), (true, false)  # a region is 3 words
    assert kinds == {"swap", "word"}
