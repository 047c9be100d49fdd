"""MoVQGAN: key layout of the released 270M model, round trips through both file formats, quantiser, decode shapes."""
import pytest
import torch
from safetensors.torch import save_file

from builders import tiny_movqgan
from lumina_core import CheckpointError, InputError, MoVQGAN, decode_images
from lumina_core.image.movqgan import MoVQGANConfig, infer_config


def _meta_state(cfg):
    with torch.device("meta"):
        return MoVQGAN(cfg).state_dict()


def test_270m_architecture_matches_the_release():
    """The default config is movqgan_270M: 270.67M parameters and the key names of the original file."""
    state = _meta_state(MoVQGANConfig())
    n = sum(v.numel() for v in state.values())
    assert abs(n - 270.67e6) < 0.05e6
    enc = sum(v.numel() for k, v in state.items() if k.startswith("encoder."))
    dec = sum(v.numel() for k, v in state.items() if k.startswith("decoder."))
    assert abs(enc - 109.5e6) < 0.1e6 and abs(dec - 161.1e6) < 0.1e6
    for key in ["encoder.down.3.attn.1.proj_out.weight", "encoder.down.1.block.0.nin_shortcut.weight",
                "encoder.down.3.block.0.nin_shortcut.bias", "encoder.down.2.downsample.conv.weight",
                "encoder.mid.attn_1.q.weight", "decoder.mid.block_1.norm1.conv_y.weight",
                "decoder.mid.block_1.norm1.norm_layer.weight", "decoder.up.0.block.0.nin_shortcut.weight",
                "decoder.up.2.block.0.nin_shortcut.weight", "decoder.up.3.attn.2.norm.conv_b.bias",
                "decoder.up.1.upsample.conv.weight", "decoder.norm_out.conv_y.weight", "quantize.embedding.weight",
                "quant_conv.weight", "post_quant_conv.bias"]:
        assert key in state, key
    assert "decoder.up.0.upsample.conv.weight" not in state and "encoder.down.3.downsample.conv.weight" not in state
    assert tuple(state["quantize.embedding.weight"].shape) == (16384, 4)


@pytest.mark.parametrize("cfg", [
    MoVQGANConfig(),
    MoVQGANConfig(ch=128, ch_mult=(1, 2, 2, 4), num_res_blocks=2, n_embed=16384),  # 67M-style
    MoVQGANConfig(ch=32, ch_mult=(1, 2, 4), num_res_blocks=1, attn_levels=(), decoder_attn_levels=(2,), n_embed=100,
                  embed_dim=3, z_channels=3),
])
def test_hyper_parameters_are_inferred_from_shapes(cfg):
    assert infer_config(_meta_state(cfg)) == cfg


def test_round_trip_through_ckpt_and_safetensors(tmp_path):
    vq = tiny_movqgan()
    sd = vq.state_dict_for_save()
    torch.save(sd, tmp_path / "m.ckpt")
    save_file(sd, str(tmp_path / "m.safetensors"))
    x = torch.rand(2, 3, 64, 96) * 2 - 1
    ref_codes = vq.encode(x)
    ref_img = vq.decode(ref_codes)
    for name in ("m.ckpt", "m.safetensors"):
        loaded = MoVQGAN.from_file(str(tmp_path / name))
        assert loaded.config == vq.config
        assert torch.equal(loaded.encode(x), ref_codes)
        assert torch.allclose(loaded.decode(ref_codes), ref_img, atol=1e-5)


def test_ckpt_with_state_dict_wrapper_loads(tmp_path):
    vq = tiny_movqgan()
    torch.save({"state_dict": vq.state_dict_for_save()}, tmp_path / "wrapped.ckpt")
    assert MoVQGAN.from_file(str(tmp_path / "wrapped.ckpt")).config == vq.config


def test_pickle_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("executed!",))
    torch.save({"x": Evil()}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="weights-only"):
        MoVQGAN.from_file(str(tmp_path / "evil.ckpt"))


def test_strict_loading_names_a_wrong_tensor(tmp_path):
    sd = tiny_movqgan().state_dict_for_save()
    sd["decoder.conv_out.bias"] = torch.zeros(5)
    save_file(sd, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError, match="decoder.conv_out"):
        MoVQGAN.from_file(str(tmp_path / "bad.safetensors"))
    sd = tiny_movqgan().state_dict_for_save()
    del sd["encoder.mid.attn_1.q.bias"]
    save_file(sd, str(tmp_path / "missing.safetensors"))
    with pytest.raises(CheckpointError, match="encoder.mid.attn_1.q.bias"):
        MoVQGAN.from_file(str(tmp_path / "missing.safetensors"))


def test_truncated_file_is_reported(tmp_path):
    save_file(tiny_movqgan().state_dict_for_save(), str(tmp_path / "t.safetensors"))
    data = (tmp_path / "t.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[:1000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        MoVQGAN.from_file(str(tmp_path / "t.safetensors"))
    torch.save(tiny_movqgan().state_dict_for_save(), tmp_path / "t.ckpt")
    data = (tmp_path / "t.ckpt").read_bytes()
    (tmp_path / "t.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="complete MoVQGAN"):
        MoVQGAN.from_file(str(tmp_path / "t.ckpt"))


def test_quantizer_picks_nearest_code_by_hand():
    vq = tiny_movqgan(num_codes=4)
    book = torch.tensor([[0., 0, 0, 0], [1, 0, 0, 0], [0, 2, 0, 0], [0, 0, -3, 1]])
    vq.quantize.embedding.weight.data.copy_(book)
    z = torch.tensor([[0.1, 0, 0, 0], [0.9, 0.2, 0, 0], [0, 1.2, 0, 0], [0, 0, -1.6, 0.5], [0.4, 0.9, 0, 0]])
    # by hand: nearest by squared L2 -> 0, 1, 2, 3, and [0.4, 0.9]: d0=0.97, d1=1.17, d2=1.37 -> 0
    codes = vq.quantize.nearest(z.t().reshape(1, 4, 1, 5))
    assert codes.flatten().tolist() == [0, 1, 2, 3, 0]
    assert torch.equal(vq.quantize.lookup(codes).reshape(4, 5).t()[:4], book)


def test_decode_non_square_batched_grids():
    vq = tiny_movqgan()
    codes = torch.randint(0, 64, (3, 5, 9), generator=torch.Generator().manual_seed(0))
    img = vq.decode(codes)
    assert img.shape == (3, 3, 40, 72)
    # batching does not mix images: the convolutions pick other kernels for another batch size, whose float32
    # rounding reaches ~1e-5 on some draws; mixing images would move pixels by tenths
    assert torch.allclose(vq.decode(codes[1:2]), img[1:2], atol=1e-4)
    with pytest.raises(ValueError, match="codes must lie in"):
        vq.decode(torch.full((1, 2, 2), 64))


def test_encode_rejects_sizes_off_the_grid():
    vq = tiny_movqgan()
    with pytest.raises(ValueError, match="multiple of 8"):
        vq.encode(torch.zeros(1, 3, 60, 64))


def test_decode_images_reports_progress_and_stops_on_cancel():
    from lumina_core import GenerationCancelled, decode_images
    vq = tiny_movqgan(16)
    codes = torch.randint(0, 16, (5, 2, 2), generator=torch.Generator().manual_seed(0))
    seen = []
    images = decode_images(vq, codes, batch=2, progress=lambda done, total: seen.append((done, total)))
    assert images.shape == (5, 16, 16, 3) and seen == [(2, 5), (4, 5), (5, 5)]
    asked = []
    with pytest.raises(GenerationCancelled, match="after 2 of 5"):
        decode_images(vq, codes, batch=2, cancel=lambda: asked.append(1) or len(asked) > 1)


def test_a_dual_panel_canvas_decodes_panel_by_panel():
    """Decoded in one pass, the canvas's panels share the decoder's group-norm statistics and a white
    given panel comes out pink next to a magenta one; panel by panel it stays what it is alone."""
    from demo import DEMO_MOVQGAN
    vq = MoVQGAN.from_file(DEMO_MOVQGAN)
    white = torch.ones(1, 3, 64, 64)
    other = torch.tensor([0.8, -1.0, 0.6]).view(1, 3, 1, 1).expand(1, 3, 64, 64).clone()
    other[:, :, 16:48, 16:48] = torch.tensor([-1.0, 0.5, -1.0]).view(1, 3, 1, 1)
    canvas = torch.cat([vq.encode(white), vq.encode(other)], dim=1)            # [1, 16, 8]: upper, lower
    alone = torch.cat([decode_images(vq, canvas[:, :8]), decode_images(vq, canvas[:, 8:])], dim=1)
    by_panel = decode_images(vq, canvas, panels=2)
    assert by_panel.shape == (1, 128, 64, 3) and torch.equal(by_panel, alone)
    assert by_panel[0, :64].mean(dim=(0, 1)).min() > 0.9                     # white stays white
    assert (decode_images(vq, canvas)[0, :64] - alone[0, :64]).abs().max() > 0.1  # why: one pass tints it
    with pytest.raises(InputError, match="do not split into 2 panels"):
        decode_images(vq, canvas[:, :7], panels=2)
