"""The fast step runner: bucketed attention length and the compiled step give the plain path's tokens.

CUDA graphs themselves need a GPU (bench/gpu.py checks graph tokens against eager there); on CPU the
runner takes the same bucketed path without capture, and torch.compile runs through inductor's C++ backend.
"""
import pytest
import torch

from builders import tiny_checkpoint
from lumina_core import LuminaMGPT, generate
from lumina_core.decoding.fast import FastPlain, StepRunner
from lumina_core.decoding.sjd import SJDecoder

KW = dict(seed=3, batch_size=2, cfg=3.0, top_k=20)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("m") / "ckpt", num_codes=64, shards=1)[0]


@pytest.fixture(scope="module")
def model(folder):
    return LuminaMGPT.from_pretrained(folder, dtype=torch.float32)


@pytest.fixture(scope="module")
def reference(model):
    return {"plain": generate(model, "a red circle", 32, 32, **KW).codes,
            "sjd": generate(model, "a red circle", 32, 32, decoder=SJDecoder(window=8), **KW).codes}


def test_bucket_rounding(model):
    runner = StepRunner(model, bucket=16)
    assert [runner.kv_bucket(n, 100) for n in (1, 16, 17, 95, 100)] == [16, 16, 32, 96, 100]
    with pytest.raises(ValueError, match="bucket"):
        StepRunner(model, bucket=0)
    with pytest.raises(ValueError, match="CUDA"):
        StepRunner(model, graphs=True)


@pytest.mark.parametrize("bucket", [7, 64])
def test_bucketed_runner_gives_the_same_tokens(model, reference, bucket):
    runner = StepRunner(model, bucket=bucket)
    assert not runner.use_graphs  # CPU: no capture, same bucketed call
    plain = generate(model, "a red circle", 32, 32, decoder=FastPlain(runner), **KW)
    sjd = generate(model, "a red circle", 32, 32, decoder=SJDecoder(window=8, forward=runner), **KW)
    assert torch.equal(plain.codes, reference["plain"])
    assert torch.equal(sjd.codes, reference["sjd"])


@pytest.mark.slow
def test_compiled_one_token_and_window_steps_give_the_same_tokens(folder, reference):
    model = LuminaMGPT.from_pretrained(folder, dtype=torch.float32)  # compile_layers changes it in place
    runner = StepRunner(model, bucket=16, compile=True)
    assert all(layer._compiled_call_impl is not None for layer in model.model.layers)
    sjd = generate(model, "a red circle", 32, 32, decoder=SJDecoder(window=8, forward=runner), **KW)
    plain = generate(model, "a red circle", 32, 32, decoder=FastPlain(runner), **KW)
    assert torch.equal(sjd.codes, reference["sjd"])
    assert torch.equal(plain.codes, reference["plain"])


def test_matmul_attention_matches_sdpa(model, reference):
    """The decode-oriented attention (two batched matmuls, float32 softmax) computes the same thing."""
    ids = torch.randint(0, model.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    want = model(ids)
    model.set_attention_backend("matmul")
    try:
        torch.testing.assert_close(model(ids), want, rtol=1e-4, atol=1e-4)
        sjd = generate(model, "a red circle", 32, 32, decoder=SJDecoder(window=8), **KW)
        assert torch.equal(sjd.codes, reference["sjd"])
    finally:
        model.set_attention_backend("sdpa")


def test_gpu_benchmark_script_runs_on_cpu_with_tiny_shapes():
    """bench/gpu.py is run on a GPU by hand; its --tiny mode keeps the script itself from rotting."""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, os.path.join(root, "bench", "gpu.py"), "--tiny", "--steps", "1",
                           "--contexts", "200", "--modes", "graphs,sjd,int8", "--no-micro"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "ms @" not in line]
    assert len(rows) >= 4 and not any("failed" in r for r in rows), done.stdout[-3000:]
