"""Int4 weight-only layers (group-wise, round-to-nearest) and the int8 KV cache at the real width.

Stated numbers (a random 2-layer model of the real width: hidden 4096, MLP 11008, 32 heads; weights
N(0, 1/fan_in), 48 teacher-forced tokens, fp32 compute), measured by this file and in BENCHMARKS.md:
  int4 weights (group 128, int8 head): logits relative error 0.34, top-1 agreement 0.47
  int8 weights (per channel), for scale:   relative error 0.033, top-1 agreement 0.94
  int8 KV cache (prefill and steps):        relative error 0.012, top-1 agreement 0.99
Random Gaussian weights are the hard case for round-to-nearest int4 (each layer's weight error is
~10% of its norm, and a random network amplifies it ~3.5x by the logits); the demo model's rows in
BENCHMARKS.md show what that means for a trained model.
"""
import math
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from builders import tiny_checkpoint
from lumina_core import KVCache, LuminaConfig, LuminaMGPT, generate
from lumina_core.memory.quant import (Int4Linear, Int8Linear, dequantize_int4, int4_group_size, linear_weight_bytes,
                               quantize_groupwise_int4, quantize_int4_, weight_format)
from lumina_core.decoding.sjd import SJDecoder

INT4_REL_ERROR, INT4_TOP1 = 0.40, 0.40
KV_REL_ERROR, KV_TOP1 = 0.02, 0.97


def test_groupwise_int4_error_is_within_half_a_step_per_group():
    w = torch.randn(40, 256) * torch.linspace(0.01, 3, 256)[None, :]  # groups of very different ranges
    packed, scale, zero = quantize_groupwise_int4(w, 128)
    assert packed.dtype == torch.uint8 and packed.shape == (40, 128) and scale.shape == (40, 2)
    back = dequantize_int4(packed, scale, zero, torch.float32)
    step = scale.repeat_interleave(128, dim=1)
    assert bool(((back - w).abs() <= step / 2 + 1e-6).all())
    # the two nibbles of a byte are two neighbouring columns: a one-column weight lands in one nibble
    one = torch.zeros(1, 128)
    one[0, 5] = 1.0
    p, s, z = quantize_groupwise_int4(one, 128)
    assert torch.equal(dequantize_int4(p, s, z, torch.float32).argmax(1), torch.tensor([5]))


def test_group_size_falls_back_to_a_divisor_for_narrow_layers():
    assert int4_group_size(4096) == int4_group_size(11008) == 128
    assert int4_group_size(160) == 80 and int4_group_size(64) == 64
    with pytest.raises(ValueError, match="even"):
        int4_group_size(7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int4_layer_rows_and_bytes(dtype):
    torch.manual_seed(0)
    lin = nn.Linear(256, 96, bias=True).to(dtype)
    layer = Int4Linear.from_linear(lin)
    x = torch.randn(3, 5, 256, dtype=dtype)
    ref = torch.nn.functional.linear(x.float(), layer.dequantize().float(), layer.bias.float())
    out = layer(x)
    assert out.dtype == dtype and out.shape == (3, 5, 96)
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(layer.forward_rows(x, 10, 40).float(), out[..., 10:40].float(), rtol=1e-2, atol=1e-2)
    # a slice of a float layer (how a tensor-parallel shard is quantized) gives that slice's layer
    shard = nn.Linear(256, 48, bias=False).to(dtype)
    shard.weight.data.copy_(lin.weight[48:])
    torch.testing.assert_close(Int4Linear.from_linear(shard)(x).float(), (layer(x) - layer.bias)[..., 48:].float(),
                               rtol=1e-2, atol=1e-2)
    # half a byte per weight plus a scale and zero per group of 128
    assert linear_weight_bytes(nn.Sequential(layer)) == 96 * (128 + 2 * 2 * dtype.itemsize)


def test_unknown_int4_kernel_or_head_is_refused():
    with pytest.raises(ValueError, match="kernel"):
        Int4Linear.from_linear(nn.Linear(64, 4), kernel="marlin")
    with pytest.raises(ValueError, match="head"):
        quantize_int4_(nn.Sequential(nn.Linear(64, 4)), head="fp4")


def test_int4_model_keeps_the_code_rows_head_and_decodes(tmp_path):
    folder, _ = tiny_checkpoint(tmp_path / "ckpt", num_codes=64, shards=1)
    model = quantize_int4_(LuminaMGPT.from_pretrained(folder, dtype=torch.float32))
    assert weight_format(model) == "int4" and isinstance(model.lm_head, Int8Linear)
    assert not [m for m in model.modules() if isinstance(m, nn.Linear)]
    plain = generate(model, "a red circle", 64, 64, seed=1, top_k=1, cfg=3.0)
    sjd = generate(model, "a red circle", 64, 64, seed=1, top_k=1, cfg=3.0, decoder=SJDecoder(window=8))
    assert torch.equal(plain.codes, sjd.codes)


@pytest.fixture(scope="module")
def wide():
    """A random model of the real width with two layers and a small vocabulary, its ids and float logits."""
    cfg = LuminaConfig(vocab_size=2048, num_hidden_layers=2, max_position_embeddings=256)
    model = LuminaMGPT(cfg).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and "norm" not in name:
                p.normal_(0, 1 / math.sqrt(p.shape[1]), generator=g)
            elif name.endswith("bias"):
                p.normal_(0, 0.1, generator=g)
            else:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
    ids = torch.randint(0, cfg.vocab_size, (2, 48), generator=g)
    return model, ids, model(ids)


def _errors(out, ref):
    return float((out - ref).norm() / ref.norm()), float((out.argmax(-1) == ref.argmax(-1)).float().mean())


def test_int8_cache_logits_at_the_real_width(wide):
    model, ids, ref = wide
    cache = KVCache.for_model(model, 2, 64, "int8")
    first = model.forward_step(ids[:, :24], cache, cache.slots(24), 24)  # prefill writes int8, reads it back
    cache.length = 24
    steps = [first]
    for i in range(24, 48):  # plain steps
        steps.append(model.forward_step(ids[:, i:i + 1], cache, cache.slots(1), i + 1))
        cache.length += 1
    rel, top1 = _errors(torch.cat(steps, 1), ref)
    assert rel < KV_REL_ERROR and top1 >= KV_TOP1, (rel, top1)
    assert rel > 1e-4  # it really read quantized keys and values


def test_int4_logits_at_the_real_width(wide):
    model, ids, ref = wide
    quantize_int4_(model)  # last user of the fixture: quantized in place (no second float copy)
    assert model.model.layers[0].mlp.down_proj.group_size == 128
    rel, top1 = _errors(model(ids), ref)
    assert rel < INT4_REL_ERROR and top1 >= INT4_TOP1, (rel, top1)


W4_CHECK = """
import torch
from lumina_core.memory.quant import dequantize_int4, quantize_groupwise_int4
from lumina_core.memory.triton_kernels import w4_matmul
g = torch.Generator().manual_seed(0)
for M, N, K, group, dtype in [(2, 70, 256, 128, torch.float32), (33, 40, 384, 128, torch.float32),
                              (3, 48, 192, 64, torch.float16)]:
    w = torch.randn(N, K, generator=g)
    p, s, z = quantize_groupwise_int4(w, group, dtype)
    x = torch.randn(M, K, generator=g).to(dtype)
    out = w4_matmul(x, p, s, z)
    ref = x.float() @ dequantize_int4(p, s, z, torch.float32).T
    assert out.dtype == dtype and out.shape == (M, N)
    assert float((out.float() - ref).abs().max() / ref.abs().max()) < 3e-3, (M, N, K, dtype)
print("ok")
"""


def test_triton_int4_kernel_under_the_interpreter():
    """The CUDA int4 kernel's unpacking, grouping and masking, run by Triton's CPU interpreter."""
    pytest.importorskip("triton")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=root)
    done = subprocess.run([sys.executable, "-c", W4_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]
