"""ComfyUI memory management on a real GPU (run with LUMINA_TEST_CUDA=1 on a CUDA machine; CI has none):
the transformer loads through load_models_gpu, is evicted when another model needs the memory, loads
partially (low-VRAM) with identical output, and leaves no KV cache behind."""
import os

import pytest
import torch

from conftest import TINY_CHECKPOINT, TINY_IMAGE_TOKENIZER

pytestmark = pytest.mark.skipif(os.environ.get("LUMINA_TEST_CUDA") != "1" or not torch.cuda.is_available(),
                                reason="GPU check: set LUMINA_TEST_CUDA=1 on a CUDA machine")


@pytest.fixture(scope="module")
def nodes(pack):
    from lumina_pack import nodes
    return nodes


def sample(nodes, model, seed=0, size=256, **kw):
    sampler = nodes.compat.node_with_hidden(nodes.sampler.Sampler, unique_id="1")
    return sampler.execute(model, prompt="a red circle", task="t2i", width=size, height=size, seed=seed, cfg=4.0,
                           top_k=4096, temperature=1.0, batch_size=2, **kw).args[0]


def weight_devices(model) -> set:
    return {p.device.type for n, p in model.engine.named_parameters() if n.endswith("proj.weight")}


def test_load_evict_partial_and_free_on_gpu(nodes):
    import comfy.model_management as mm
    device = mm.get_torch_device()
    assert device.type == "cuda"
    model = nodes.loaders.ModelLoader.execute(TINY_CHECKPOINT, "auto", "sdpa").args[0]
    vq = nodes.loaders.ImageTokenizerLoader.execute(TINY_IMAGE_TOKENIZER).args[0]
    assert model.engine.compute_dtype == torch.bfloat16  # auto picks bf16 on this GPU
    assert weight_devices(model) == {"cpu"}  # loaded to the offload device; the sampler asks ComfyUI to move it

    full = sample(nodes, model, seed=1, image_tokenizer=vq).codes
    assert weight_devices(model) == {"cuda"} and model.engine.device.type == "cuda"
    assert any(lm.model is model.patcher for lm in mm.current_loaded_models)
    image = nodes.decode.Decode.execute(sample(nodes, model, seed=1), vq, "output").args[0]
    assert image.shape == (2, 256, 256, 3) and 0 <= float(image.min()) and float(image.max()) <= 1

    # another model needs (more than) all the memory: ComfyUI offloads ours
    mm.free_memory(10 * mm.get_total_memory(device), device)
    assert model.patcher.loaded_size() == 0 and weight_devices(model) == {"cpu"}

    # the sampler loads it again; the KV cache is gone after each generation
    torch.cuda.synchronize()
    sample(nodes, model, seed=1)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    again = sample(nodes, model, seed=1, size=512).codes
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated(device) > before  # the generation's KV cache lived on the GPU...
    assert torch.cuda.memory_allocated(device) == before      # ...and was freed afterwards
    assert again.shape == (2, 64, 64)

    # low-VRAM: only some layers on the GPU, the rest cast in per use; same codes as the full load
    patcher = model.patcher
    mm.free_memory(10 * mm.get_total_memory(device), device)
    patcher.patch_model(device_to=device, lowvram_model_memory=64 << 10)
    try:
        assert patcher.model.model_lowvram and "cpu" in weight_devices(model)
        assert model.engine.device.type == "cuda" and model.engine.rotary.cos.device.type == "cuda"
        from lumina_pack.lumina_core import generate
        partial = generate(model.engine, "a red circle", 256, 256, seed=1, batch_size=2, cfg=4.0, top_k=4096).codes
        assert torch.equal(partial, full)
    finally:
        patcher.unpatch_model(patcher.offload_device)


def test_speed_settings_use_cuda_graphs_with_identical_greedy_codes(nodes):
    model = nodes.loaders.ModelLoader.execute(TINY_CHECKPOINT, "fp32", "sdpa").args[0]
    speed = nodes.settings.SpeedSettings.execute(True, False, 64).args[0]
    sampler = nodes.compat.node_with_hidden(nodes.sampler.Sampler, unique_id="1")
    kw = dict(prompt="a red circle", task="t2i", width=128, height=128, seed=2, cfg=4.0, top_k=1, temperature=1.0,
              batch_size=2)
    eager = sampler.execute(model, **kw).args[0].codes
    graphed = sampler.execute(model, speed=speed, **kw).args[0].codes
    step, note = nodes.settings.step_function(speed, model.engine)
    assert note is None and isinstance(step, nodes.settings.StepRunner) and step.use_graphs
    assert torch.equal(graphed, eager)


def test_dynamic_vram_as_comfyui_033_starts_on_a_gpu(nodes, monkeypatch):
    """ComfyUI 0.33 on NVIDIA: comfy-aimdo initialised, CoreModelPatcher = ModelPatcherDynamic, lazy comfy.ops
    layers. The transformer still goes through the legacy ModelPatcher (nodes/memory.py says why), the MoVQGAN
    through ModelPatcherDynamic; codes and pixels equal those of the legacy path. (0.3.75 has no dynamic VRAM:
    the test checks that the compatibility module says so.)"""
    import comfy.model_management as mm
    import comfy.model_patcher
    if nodes.compat.DYNAMIC_PATCHER is None:
        assert not nodes.compat.dynamic_vram_enabled()
        pytest.skip(f"ComfyUI {nodes.compat.COMFYUI_VERSION} has no dynamic VRAM; run on the 0.33 host")
    import comfy.memory_management
    import comfy_aimdo.control
    legacy_model = nodes.loaders.ModelLoader.execute(TINY_CHECKPOINT, "auto", "sdpa").args[0]
    legacy_vq = nodes.loaders.ImageTokenizerLoader.execute(TINY_IMAGE_TOKENIZER).args[0]
    want = sample(nodes, legacy_model, seed=4, size=128, image_tokenizer=legacy_vq)
    want_pixels = nodes.decode.Decode.execute(want, legacy_vq, "output").args[0]
    mm.free_memory(10 * mm.get_total_memory(mm.get_torch_device()), mm.get_torch_device())

    device = mm.get_torch_device()
    assert comfy_aimdo.control.init_devices([device.index or 0]), "comfy-aimdo did not initialise on this GPU"
    monkeypatch.setattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcherDynamic)
    monkeypatch.setattr(comfy.memory_management, "aimdo_enabled", True)
    model = nodes.loaders.ModelLoader.execute(TINY_CHECKPOINT, "auto", "sdpa").args[0]
    vq = nodes.loaders.ImageTokenizerLoader.execute(TINY_IMAGE_TOKENIZER).args[0]
    assert type(model.patcher) is comfy.model_patcher.ModelPatcher
    assert isinstance(vq.patcher, comfy.model_patcher.ModelPatcherDynamic)
    got = sample(nodes, model, seed=4, size=128, image_tokenizer=vq)
    assert torch.equal(got.codes, want.codes)
    pixels = nodes.decode.Decode.execute(got, vq, "output").args[0]
    assert torch.allclose(pixels, want_pixels, atol=1e-3)


@pytest.mark.parametrize("quantization", ["int8", "int4"])
def test_quantized_model_loads_partially_with_identical_codes(nodes, quantization):
    """Low-VRAM partial loading of a quantized model: ComfyUI leaves some quantized layers in system memory
    (comfy_cast_weights) and they are copied in per call; the codes equal those of the full load."""
    import comfy.model_management as mm
    from lumina_pack.lumina_core import generate
    device = mm.get_torch_device()
    model = nodes.loaders.ModelLoader.execute(TINY_CHECKPOINT, "auto", "sdpa", quantization).args[0]
    full = sample(nodes, model, seed=3, size=128).codes
    patcher = model.patcher
    mm.free_memory(10 * mm.get_total_memory(device), device)
    patcher.patch_model(device_to=device, lowvram_model_memory=64 << 10)
    try:
        offloaded = [m for m in model.engine.modules() if getattr(m, "comfy_cast_weights", False)]
        assert patcher.model.model_lowvram and offloaded
        assert any(b.device.type == "cpu" for m in offloaded for b in m.buffers())
        partial = generate(model.engine, "a red circle", 128, 128, seed=3, batch_size=2, cfg=4.0, top_k=4096).codes
        assert torch.equal(partial, full)
    finally:
        patcher.unpatch_model(patcher.offload_device)
