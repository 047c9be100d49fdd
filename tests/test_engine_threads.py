"""The decode loop's CPU threads: one for a small model, every available one for the 7.9B shapes, only inside
generation (the caller's setting is back afterwards), and LUMINA_CPU_THREADS to override."""
import pytest
import torch

from builders import tiny_checkpoint
from lumina_core import LuminaMGPT, generate
from lumina_core.model.config import LuminaConfig
from lumina_core.decoding.threads import ENV, decode_thread_count


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_small_models_decode_on_one_thread_and_the_7b_on_all(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    demo = LuminaConfig(vocab_size=1012, hidden_size=192, intermediate_size=512, num_hidden_layers=5,
                        num_attention_heads=6, num_key_value_heads=6)
    released = LuminaConfig()  # 4096 hidden, 11008 MLP; the head computes the 16384 image codes
    assert decode_thread_count(demo, tokens_per_forward=2, head_rows=1000, available=16) == 1
    assert decode_thread_count(demo, tokens_per_forward=2 * 16, head_rows=1000, available=16) == 1  # SJD window
    assert decode_thread_count(released, tokens_per_forward=1, head_rows=16384, available=16) == 16
    assert decode_thread_count(released, tokens_per_forward=2, head_rows=16384, available=3) == 3


def test_the_override_and_its_errors(monkeypatch):
    cfg = LuminaConfig()
    monkeypatch.setenv(ENV, "torch")
    assert decode_thread_count(cfg, 1, 16384, available=8) == 8
    monkeypatch.setenv(ENV, "3")
    assert decode_thread_count(cfg, 1, 16384, available=8) == 3
    assert decode_thread_count(cfg, 1, 16384, available=2) == 2  # never more than the caller allows
    monkeypatch.setenv(ENV, "many")
    with pytest.raises(ValueError, match="LUMINA_CPU_THREADS must be"):
        decode_thread_count(cfg, 1, 16384, available=8)


def test_generation_runs_on_one_thread_and_gives_the_callers_setting_back(tmp_path, monkeypatch, two_threads):
    monkeypatch.delenv(ENV, raising=False)
    folder, _ = tiny_checkpoint(tmp_path / "ckpt", num_codes=64, shards=1)
    model = LuminaMGPT.from_pretrained(folder, dtype=torch.float32)
    seen = []
    codes = generate(model, "a red circle", 32, 32, cfg=3.0, top_k=1, seed=1,
                     progress=lambda rows, total, c: seen.append(torch.get_num_threads())).codes
    assert seen == [1] * 4 and torch.get_num_threads() == 2
    assert codes.shape == (1, 4, 4)
    monkeypatch.setenv(ENV, "torch")  # the earlier behaviour: the caller's threads
    seen.clear()
    generate(model, "a red circle", 32, 32, cfg=3.0, top_k=1, seed=1,
             progress=lambda rows, total, c: seen.append(torch.get_num_threads()))
    assert seen == [2] * 4
