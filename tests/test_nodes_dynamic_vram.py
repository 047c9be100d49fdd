"""ComfyUI 0.33's dynamic VRAM, on the CPU: with `comfy.memory_management.aimdo_enabled = True` (what
ComfyUI's start-up sets on an NVIDIA GPU) comfy.ops layers hold no weight until loaded; the loader must give
the same model and codes. And the patchers our models go through are the ones we chose."""
import pytest
import torch

from conftest import TINY_CHECKPOINT, TINY_IMAGE_TOKENIZER

DEMO = "demo: lumina-mgpt2-shapes-demo"


@pytest.fixture(scope="module")
def nodes(pack):
    from lumina_pack import nodes
    return nodes


def greedy_codes(nodes, model, size=64, seed=3):
    sampler = nodes.compat.node_with_hidden(nodes.sampler.Sampler, unique_id="1")
    out = sampler.execute(model, prompt="a red circle on a blue background", task="t2i", width=size, height=size,
                          seed=seed, cfg=1.5, top_k=0, temperature=0.5, batch_size=1).args[0]
    return out.codes


def test_host_has_dynamic_vram_or_says_it_has_none(nodes):
    """0.33 (tested by scripts/test.sh on both hosts) has the flag; 0.3.75 has neither flag nor patcher."""
    try:
        import comfy.memory_management
    except ImportError:
        assert nodes.compat.DYNAMIC_PATCHER is None and not nodes.compat.dynamic_vram_enabled()
        return
    assert hasattr(comfy.memory_management, "aimdo_enabled") and nodes.compat.DYNAMIC_PATCHER is not None


@pytest.mark.parametrize("checkpoint", [TINY_CHECKPOINT, DEMO])
def test_loader_gives_the_same_codes_with_dynamic_vram_layers(nodes, checkpoint, monkeypatch):
    if nodes.compat.DYNAMIC_PATCHER is None:  # reported as skipped, not passed: scripts/test.sh runs it on 0.33
        pytest.skip(f"ComfyUI {nodes.compat.COMFYUI_VERSION} has no dynamic VRAM (no lazy layers to load into)")
    import comfy.memory_management
    import comfy.ops
    plain = nodes.loaders.ModelLoader.execute(checkpoint, "auto", "sdpa").args[0]
    want = greedy_codes(nodes, plain)
    monkeypatch.setattr(comfy.memory_management, "aimdo_enabled", True)
    probe = comfy.ops.disable_weight_init.Linear(4, 4, bias=False)
    assert probe.weight is None, "0.33's comfy.ops should build Linear layers without a weight under dynamic VRAM"
    dynamic = nodes.loaders.ModelLoader.execute(checkpoint, "auto", "sdpa").args[0]
    engine = dynamic.engine
    assert all(not p.is_meta for p in engine.parameters())
    for name, p in plain.engine.named_parameters():
        assert torch.equal(p, engine.get_parameter(name)), name
    assert torch.equal(greedy_codes(nodes, dynamic), want)


def test_every_weight_layer_is_a_comfy_ops_layer(nodes):
    """ComfyUI can offload, cast and (on 0.33) manage only layers it built: every Linear and Embedding of the
    transformer must come from comfy.ops."""
    import comfy.ops
    model = nodes.loaders.ModelLoader.execute(TINY_CHECKPOINT, "auto", "sdpa").args[0]
    layers = [(n, m) for n, m in model.engine.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))]
    assert len(layers) > 8
    ops = (comfy.ops.disable_weight_init.Linear, comfy.ops.disable_weight_init.Embedding)
    foreign = [n for n, m in layers if not isinstance(m, ops) or not hasattr(m, "comfy_cast_weights")]
    assert not foreign, f"not comfy.ops layers: {foreign[:5]}"


def test_models_go_through_the_patchers_we_chose(nodes, monkeypatch):
    """The transformer: the legacy ModelPatcher on purpose (see nodes/memory.py), even where ComfyUI's
    default is another; the MoVQGAN: whatever ComfyUI's CoreModelPatcher is at run time."""
    import comfy.model_patcher

    class HostDefault(comfy.model_patcher.ModelPatcher):
        """Stands for the host's CoreModelPatcher (ModelPatcherDynamic on a 0.33 GPU start; on the CPU that
        class hands back a plain ModelPatcher, so it cannot be used itself here)."""

    monkeypatch.setattr(comfy.model_patcher, "CoreModelPatcher", HostDefault, raising=False)
    model = nodes.loaders.ModelLoader.execute(TINY_CHECKPOINT, "auto", "sdpa").args[0]
    vq = nodes.loaders.ImageTokenizerLoader.execute(TINY_IMAGE_TOKENIZER).args[0]
    assert type(model.patcher) is comfy.model_patcher.ModelPatcher
    assert type(vq.patcher) is HostDefault
    # ComfyUI sees the whole transformer's weights as its size (what it evicts other models for)
    weights = sum(p.numel() * p.element_size() for p in model.engine.parameters())
    assert model.patcher.model_size() >= weights
