"""Loading real-format files, and the errors a user sees when the files are wrong."""
import json
import os
import shutil

import pytest
import torch

from builders import tiny_checkpoint, tiny_movqgan
from lumina_core import CheckpointError, LuminaMGPT, MoVQGAN, TokenizerError
from lumina_core.model.checkpoint import load_state_streaming, weight_files


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    folder, _ = tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "model", shards=3)
    return folder


def _copy(ckpt, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(ckpt, dst)
    return dst


def test_sharded_checkpoint_loads_every_tensor(ckpt):
    files = weight_files(ckpt)
    assert len(files) == 3
    model = LuminaMGPT.from_pretrained(ckpt, dtype=torch.float32)
    assert not any(p.is_meta for p in model.parameters())
    assert model.tokenizer is not None


def test_single_file_checkpoint(tmp_path):
    folder, _ = tiny_checkpoint(tmp_path / "single", shards=1)
    assert os.listdir(folder).count("model.safetensors") == 1
    LuminaMGPT.from_pretrained(folder, dtype=torch.float32)


def test_missing_shard_is_named(ckpt, tmp_path):
    dst = _copy(ckpt, tmp_path)
    (dst / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00003.safetensors"):
        LuminaMGPT.from_pretrained(str(dst))


def test_truncated_safetensors_says_redownload(ckpt, tmp_path):
    dst = _copy(ckpt, tmp_path)
    shard = dst / "model-00001-of-00003.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model-00001-of-00003\.safetensors is truncated or corrupt"):
        LuminaMGPT.from_pretrained(str(dst))


def test_wrong_tensor_shape_is_named(ckpt, tmp_path):
    dst = _copy(ckpt, tmp_path)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"mlp\.(gate|up|down)_proj\.weight .*has shape"):
        LuminaMGPT.from_pretrained(str(dst))


def test_missing_and_unexpected_tensors_are_named(ckpt, tmp_path):
    from safetensors.torch import load_file, save_file
    dst = _copy(ckpt, tmp_path)
    shard = dst / "model-00003-of-00003.safetensors"
    state = load_file(str(shard))
    victim = sorted(state)[0]
    del state[victim]
    state["model.layers.9.extra.weight"] = torch.zeros(2)
    save_file(state, str(shard))
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    del index["weight_map"][victim]
    index["weight_map"]["model.layers.9.extra.weight"] = shard.name
    (dst / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="missing") as e:
        LuminaMGPT.from_pretrained(str(dst))
    assert victim in str(e.value)


def test_movqgan_passed_as_transformer(tmp_path):
    vq = tiny_movqgan()
    from safetensors.torch import save_file
    ckpt_file = tmp_path / "movqgan_270M.ckpt"
    torch.save(vq.state_dict_for_save(), ckpt_file)
    with pytest.raises(CheckpointError, match="image-tokenizer loader"):
        LuminaMGPT.from_pretrained(str(ckpt_file))
    st_file = tmp_path / "movq.safetensors"
    save_file(vq.state_dict_for_save(), str(st_file))
    with pytest.raises(CheckpointError, match="MoVQGAN image tokenizer, not the transformer"):
        LuminaMGPT.from_pretrained(str(st_file))
    # a folder dressed as a checkpoint but holding MoVQGAN weights
    folder = tmp_path / "fake"
    folder.mkdir()
    shutil.copy(st_file, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"model_type": "chameleon", "vocab_size": 10, "hidden_size": 8,
                                                    "num_attention_heads": 2, "num_key_value_heads": 2}))
    with pytest.raises(CheckpointError, match="MoVQGAN"):
        LuminaMGPT.from_pretrained(str(folder))


def test_transformer_passed_as_movqgan(ckpt):
    with pytest.raises(CheckpointError, match="model loader"):
        MoVQGAN.from_file(os.path.join(ckpt, "model-00001-of-00003.safetensors"))
    with pytest.raises(CheckpointError, match="folder"):
        MoVQGAN.from_file(ckpt)


def test_missing_config_and_wrong_model_type(ckpt, tmp_path):
    dst = _copy(ckpt, tmp_path)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["model_type"] = "llama"
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="'llama' model"):
        LuminaMGPT.from_pretrained(str(dst))
    (dst / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json not found"):
        LuminaMGPT.from_pretrained(str(dst))


def test_unknown_special_token_in_tokenizer(ckpt, tmp_path):
    dst = _copy(ckpt, tmp_path)
    tok = json.loads((dst / "tokenizer.json").read_text())
    for entry in tok["added_tokens"]:
        if entry["content"] == "<reserved08799>":
            entry["content"] = "<reserved07799>"
    (dst / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(TokenizerError, match=r"<reserved08799> \(image row end\)"):
        LuminaMGPT.from_pretrained(str(dst))


def test_tokenizer_from_another_checkpoint_is_rejected(ckpt, tmp_path):
    big, _ = tiny_checkpoint(tmp_path / "big", num_codes=200, shards=1)
    dst = _copy(ckpt, tmp_path)
    shutil.copy(os.path.join(big, "tokenizer.json"), dst / "tokenizer.json")
    with pytest.raises(TokenizerError, match="different checkpoints"):
        LuminaMGPT.from_pretrained(str(dst))


def test_loading_keeps_one_copy_of_the_weights(ckpt):
    """Streaming: the model is built on the meta device and each tensor is materialised once."""
    from lumina_core.model.config import read_config
    cfg = read_config(ckpt)
    with torch.device("meta"):
        model = LuminaMGPT(cfg, device="meta")
    seen = []
    real = torch.Tensor.to

    def spy(self, *a, **k):
        out = real(self, *a, **k)
        seen.append(out.numel())
        return out

    torch.Tensor.to = spy
    try:
        load_state_streaming(model, weight_files(ckpt), torch.float32, torch.device("cpu"))
    finally:
        torch.Tensor.to = real
    n_params = sum(p.numel() for p in model.parameters())
    assert sum(seen) == n_params  # every weight converted exactly once, nothing else allocated
