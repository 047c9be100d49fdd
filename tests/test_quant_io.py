"""Quantizing while loading, saving a quantized folder and loading it back (format checked against the
metadata), and the embedding table in host memory."""
import copy
import json
import os

import pytest
import torch

from builders import tiny_checkpoint
from lumina_core import CheckpointError, LuminaMGPT, generate
from lumina_core.model.checkpoint_writer import save_weights
from lumina_core.memory.placement import HostEmbedding, embeddings_on_host, move_embeddings_to_host_
from lumina_core.memory.quant import Int4Linear, Int8Linear, quantize_int4_, quantize_int8_, weight_format
from lumina_core.model.quantized_files import META_FORMAT, file_metadata, save_quantized
from lumina_core.decoding.sjd import SJDecoder

KW = dict(cfg=3.0, top_k=1, seed=2)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path, _ = tiny_checkpoint(tmp_path_factory.mktemp("m") / "ckpt", num_codes=64, shards=2,
                              hidden_size=128, intermediate_size=256)
    return path


def codes(model, **kw):
    return generate(model, "a red circle", 64, 64, **{**KW, **kw}).codes


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_quantizing_while_loading_equals_quantizing_after(folder, fmt):
    after = LuminaMGPT.from_pretrained(folder, dtype=torch.float32)
    if fmt == "int8":
        quantize_int8_(after, backend="native")
    else:
        quantize_int4_(after)
    streamed = LuminaMGPT.from_pretrained(folder, dtype=torch.float32, quantization=fmt)
    assert weight_format(streamed) == fmt and isinstance(streamed.lm_head, Int8Linear)
    a, b = after.state_dict(), streamed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(codes(after), codes(streamed))


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_saved_quantized_folder_loads_with_identical_codes(folder, tmp_path, fmt):
    model = LuminaMGPT.from_pretrained(folder, dtype=torch.float32, quantization=fmt)
    out = tmp_path / f"q-{fmt}"
    paths = save_quantized(model, str(out))
    assert all(file_metadata(p)[META_FORMAT] == fmt for p in paths)
    assert {"config.json", "tokenizer.json"} <= set(os.listdir(out))
    loaded = LuminaMGPT.from_pretrained(str(out), dtype=torch.float32)
    assert weight_format(loaded) == fmt
    kind = Int4Linear if fmt == "int4" else Int8Linear
    assert isinstance(loaded.model.layers[0].mlp.down_proj, kind) and isinstance(loaded.lm_head, Int8Linear)
    assert torch.equal(codes(loaded), codes(model))
    assert torch.equal(codes(loaded, decoder=SJDecoder(window=8)), codes(model))
    # the same format (or auto) loads; asking for another one is refused with what to do
    LuminaMGPT.from_pretrained(str(out), dtype=torch.float32, quantization=fmt)
    other = "int8" if fmt == "int4" else "int4"
    with pytest.raises(CheckpointError, match=f"already quantized to {fmt}"):
        LuminaMGPT.from_pretrained(str(out), dtype=torch.float32, quantization=other)


def test_saved_int4_folder_is_smaller(tmp_path):
    """bf16 source -> int4 body, int8 head, bf16 table: 0.39 of the bytes here (the 7B: ~0.33, its table
    is a smaller share)."""
    src, _ = tiny_checkpoint(tmp_path / "bf16", num_codes=64, shards=2, hidden_size=128, intermediate_size=256,
                             dtype=torch.bfloat16)
    save_quantized(LuminaMGPT.from_pretrained(src, dtype=torch.bfloat16, quantization="int4"), str(tmp_path / "q"))
    size = lambda d: sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if f.endswith(".safetensors"))
    assert size(str(tmp_path / "q")) < 0.45 * size(src)


def test_int4_metadata_over_float_tensors_is_refused(folder, tmp_path):
    from safetensors.torch import load_file
    fake = tmp_path / "fake"
    fake.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (fake / name).write_bytes(open(os.path.join(folder, name), "rb").read())
    with open(os.path.join(folder, "model.safetensors.index.json")) as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
    state = {}
    for shard in shards:
        state.update(load_file(os.path.join(folder, shard)))
    save_weights(str(fake), {k: v.to(torch.bfloat16) for k, v in state.items()},
                 metadata={META_FORMAT: "int4"})
    with pytest.raises(CheckpointError, match="metadata says int4 but .* is stored as BF16"):
        LuminaMGPT.from_pretrained(str(fake), dtype=torch.float32)


def test_truncated_quantized_folder_is_refused(folder, tmp_path):
    model = LuminaMGPT.from_pretrained(folder, dtype=torch.float32, quantization="int4")
    out = tmp_path / "q"
    path = save_quantized(model, str(out))[0]
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 1000)
    with pytest.raises(CheckpointError, match="truncated"):
        LuminaMGPT.from_pretrained(str(out), dtype=torch.float32)


def test_a_float_model_is_not_saved_as_quantized(folder, tmp_path):
    with pytest.raises(CheckpointError, match="not quantized"):
        save_quantized(LuminaMGPT.from_pretrained(folder, dtype=torch.float32), str(tmp_path / "q"))


def test_embeddings_in_host_memory_give_the_same_codes_and_stay_there(folder, tmp_path):
    model = LuminaMGPT.from_pretrained(folder, dtype=torch.float32, quantization="int4")
    ref = codes(model)
    move_embeddings_to_host_(model)
    assert embeddings_on_host(model) and isinstance(model.model.embed_tokens, HostEmbedding)
    model.to(torch.float64).to(torch.float32)  # a host moving or casting the whole model leaves the table alone
    assert model.model.embed_tokens.weight.device.type == "cpu"
    assert torch.equal(codes(model), ref)
    save_quantized(model, str(tmp_path / "q"))  # the table is saved like any other tensor
    assert torch.equal(codes(LuminaMGPT.from_pretrained(str(tmp_path / "q"), dtype=torch.float32)), ref)
