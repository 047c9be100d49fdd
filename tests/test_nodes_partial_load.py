"""What ComfyUI's memory manager sees of our models: quantized layers take part in its (low-VRAM) loading
like comfy.ops layers, the patcher reports the bytes that really go to the GPU, and an embedding table the
memory plan keeps in system memory is neither counted nor moved."""
import pytest
import torch

from conftest import TINY_CHECKPOINT


@pytest.fixture(scope="module")
def nodes(pack):
    from lumina_pack import nodes
    return nodes


def load(nodes, quantization):
    return nodes.loaders.ModelLoader.execute(TINY_CHECKPOINT, "fp32", "sdpa", quantization).args[0]


@pytest.mark.parametrize("quantization", ["int8", "int4"])
def test_quantized_layers_are_in_comfyuis_load_list_at_their_stored_size(nodes, quantization):
    from lumina_pack.lumina_core.memory.quant import QUANTIZED_LINEARS
    model = load(nodes, quantization)
    quantized = {n for n, m in model.patcher.model.named_modules() if isinstance(m, QUANTIZED_LINEARS)}
    assert len(quantized) >= 8
    listed = {entry[-3]: entry for entry in model.patcher._load_list()}  # (..., module_mem, name, module, params)
    assert quantized <= set(listed), "ComfyUI would never offload these layers"
    for name in quantized:
        module = listed[name][-2]
        stored = sum(t.numel() * t.element_size() for t in module.state_dict().values())
        assert listed[name][-4] == stored  # ComfyUI counts the int8/int4 bytes, not a float copy
    assert model.patcher.model_size() == nodes.memory.device_bytes(model.engine)
    floats = dict(load(nodes, "none").patcher.model.named_modules())
    float_bytes = sum(floats[n].weight.numel() * floats[n].weight.element_size() for n in quantized)
    stored = sum(t.numel() * t.element_size() for n in quantized for t in listed[n][-2].state_dict().values())
    assert stored < 0.3 * float_bytes  # fp32 -> int8 / int4 (+ scales)


def test_an_offloaded_quantized_layer_computes_what_a_loaded_one_does(nodes):
    """ComfyUI sets comfy_cast_weights on layers it leaves in system memory; they copy their weights to the
    input's device per call (on a CPU-only machine both are the CPU: the GPU test moves them for real)."""
    from lumina_pack.lumina_core.memory.quant import Int4Linear, Int8Linear
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 64)
    x = torch.randn(3, 256)
    for layer in (Int8Linear.from_linear(linear), Int4Linear.from_linear(linear)):
        want, rows = layer(x), layer.forward_rows(x, 8, 24)
        layer.comfy_cast_weights = True
        assert torch.equal(layer(x), want) and torch.equal(layer.forward_rows(x, 8, 24), rows)


def test_host_embedding_table_is_neither_counted_nor_moved(nodes):
    from lumina_pack.lumina_core.memory.placement import move_embeddings_to_host_
    model = load(nodes, "none")
    engine = model.engine
    table = engine.model.embed_tokens.weight.numel() * engine.model.embed_tokens.weight.element_size()
    on_device = nodes.memory.device_bytes(engine)
    move_embeddings_to_host_(engine)
    assert nodes.memory.device_bytes(engine) == on_device - table
    wrapped = nodes.memory.wrap(engine)
    assert wrapped.model_size() == on_device - table
    assert "inner.model.embed_tokens" not in {entry[-3] for entry in wrapped._load_list()}
    # the callback that follows ComfyUI's loads moves the norms, never the table
    nodes.memory._follow_load_device(wrapped, torch.device("meta"))
    assert engine.model.embed_tokens.weight.device.type == "cpu" and engine.model.norm.weight.is_meta
