"""Issue 11 in the nodes, called in-process: the loader's quantization auto/int4, the Sampler's kv_cache
input, and the Save Quantized node writing a folder the loader reads back."""
import os
import shutil

import pytest
import torch

from conftest import TINY_CHECKPOINT
from node_fixtures import nodes, one_thread  # noqa: F401 (fixtures)


def load(nodes, quantization=None, name=TINY_CHECKPOINT):
    args = (name, "auto", "sdpa") + ((quantization,) if quantization is not None else ())
    return nodes.loaders.ModelLoader.execute(*args).args[0]


def sample(nodes, model, **kw):
    sampler = nodes.compat.node_with_hidden(nodes.sampler.Sampler, unique_id="9")
    args = dict(prompt="a red circle", task="t2i", width=64, height=64, seed=3, cfg=4.0, top_k=1,
                temperature=1.0, batch_size=1)
    args.update(kw)
    return sampler.execute(model, **args).args[0]


def test_loader_offers_auto_first_and_keeps_old_values(nodes):
    spec = nodes.loaders.ModelLoader.GET_NODE_INFO_V1()["input"]["optional"]["quantization"][1]
    assert spec["options"] == ["auto", "none", "int8", "int4"] and spec["default"] == "auto"
    from lumina_pack.lumina_core.memory.quant import weight_format
    assert weight_format(load(nodes).engine) == "none"           # a workflow saved without the widget
    assert weight_format(load(nodes, "auto").engine) == "none"   # the CPU: auto keeps the float weights
    assert weight_format(load(nodes, "int4").engine) == "int4"


def test_sampler_kv_cache_input_keeps_its_place_and_is_optional(nodes):
    # saved workflows store widget values by position: kv_cache stays right after the settings sockets it was
    # appended behind, and inputs added later come after it
    info = nodes.sampler.Sampler.GET_NODE_INFO_V1()["input"]
    optional = list(info["optional"])
    assert optional[:optional.index("kv_cache") + 1] == ["condition", "image_tokenizer", "sjd", "best_of_n", "speed",
                                                        "sampling", "kv_cache"]
    assert optional[optional.index("kv_cache") + 1:] == ["start_from", "keep_rows", "subject_description"]
    assert info["optional"]["kv_cache"][1]["options"] == ["auto", "bf16", "int8"]


def test_int8_cache_and_int4_weights_sample_like_the_engine(nodes):
    from lumina_pack.lumina_core import generate
    from lumina_pack.lumina_core.memory.kv_cache import kv_cache_format
    model = load(nodes, "int4")
    tokens = sample(nodes, model, kv_cache="int8")
    assert model.engine.kv_cache_format == "int8"
    with kv_cache_format(model.engine, "int8"):
        want = generate(model.engine, "a red circle", 64, 64, seed=3, cfg=4.0, top_k=1).codes
    assert torch.equal(tokens.codes, want)
    sample(nodes, model)  # auto on the CPU: the compute-dtype cache
    assert model.engine.kv_cache_format == "bf16"
    from lumina_pack.lumina_core import InputError
    with pytest.raises(InputError, match="kv_cache 'fp8'"):
        sample(nodes, model, kv_cache="fp8")


def test_save_quantized_node_writes_a_folder_the_loader_reads(nodes, tiny_models):
    from lumina_pack.lumina_core import InputError
    from lumina_pack.lumina_core.memory.quant import Int4Linear
    model = load(nodes, "int4")
    saver = nodes.save_quantized.SaveQuantized
    assert saver.validate_inputs("../escape") is not True
    with pytest.raises(InputError, match="not quantized"):
        saver.execute(load(nodes, "none"), "float-copy")
    out = saver.execute(model, "tiny-int4")
    path = out.args[0]
    try:
        assert path == os.path.join(tiny_models, "tiny-int4") and "int4 model saved" in out.ui["text"][0]
        with pytest.raises(InputError, match="already holds a checkpoint"):
            saver.execute(model, "tiny-int4")
        names = nodes.loaders.ModelLoader.GET_NODE_INFO_V1()["input"]["required"]["checkpoint"][1]["options"]
        assert "tiny-int4" in names
        loaded = load(nodes, "auto", name="tiny-int4")
        assert isinstance(loaded.engine.model.layers[0].mlp.up_proj, Int4Linear)
        assert torch.equal(sample(nodes, loaded).codes, sample(nodes, model).codes)
    finally:
        shutil.rmtree(path)  # the shared models folder: other tests list its checkpoints


def test_save_quantized_refuses_a_multi_gpu_model_with_what_to_do(nodes):
    from types import SimpleNamespace
    from lumina_pack.lumina_core import InputError
    multi_gpu = SimpleNamespace(workers=object(), engine=object())  # what the Multi-GPU Loader's model exposes
    with pytest.raises(InputError, match="Model Loader's model, not the Multi-GPU Loader's"):
        nodes.save_quantized.SaveQuantized.execute(multi_gpu, "tiny-int8-copy")
