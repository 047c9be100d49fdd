"""The shipped demo model: real file layout, loaded by the public API, and it draws what it is asked for
(checked by the benchmark's judge), including a colour/shape/region combination it never saw."""
import json
import os

import numpy as np
import pytest
import torch

from demo import DEMO_CHECKPOINT, DEMO_MOVQGAN, DEMO_ROOT, generation_defaults, load_demo
from demo.judge import judge
from demo.shapes import HELD_OUT, held_out_prompts, training_scenes
from demo.train_movqgan import to_signed
from lumina_core import LuminaMGPT, MoVQGAN, TextTokenizer, decode_images, generate
from lumina_core.tokenizer import IMAGE_END, IMAGE_START, ROW_END, TURN_SEPARATOR, grid_token_name


@pytest.fixture(scope="module")
def demo():
    return load_demo()


def test_shipped_files_are_the_released_layout_and_small():
    names = sorted(os.listdir(DEMO_CHECKPOINT))
    for required in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                     "generation_config.json", "README.md"):
        assert required in names
    total = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(DEMO_ROOT) for f in fs)
    assert total < 25 * 2 ** 20
    with open(os.path.join(DEMO_CHECKPOINT, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["model_type"] == "chameleon"
    tok = TextTokenizer.from_pretrained(DEMO_CHECKPOINT)
    for name in (IMAGE_START, IMAGE_END, ROW_END, TURN_SEPARATOR, grid_token_name(2), grid_token_name(4)):
        assert tok.token_to_id(name) is not None, name
    assert "DEMO" in open(os.path.join(DEMO_CHECKPOINT, "README.md")).read()


def test_loads_through_the_public_api(demo):
    model, movqgan, defaults = demo
    assert isinstance(model, LuminaMGPT) and isinstance(movqgan, MoVQGAN)
    assert model.tokenizer.special.num_image_codes == movqgan.num_codes
    assert movqgan.downsample_factor == 8
    bf16 = LuminaMGPT.from_pretrained(DEMO_CHECKPOINT, dtype=torch.bfloat16)  # what a host loads by default
    assert bf16.compute_dtype == torch.bfloat16
    assert {"cfg", "top_k", "temperature", "width", "height"} <= set(defaults)
    assert defaults == generation_defaults()


def test_movqgan_reconstructs_generator_images():
    movqgan = MoVQGAN.from_file(DEMO_MOVQGAN)
    images = np.stack([s.render() for s in training_scenes(seed=321, n=8)])
    codes = movqgan.encode(to_signed(images))
    recon = (decode_images(movqgan, codes) * 255).numpy()
    mse = ((recon - images.astype(np.float32)) / 255) ** 2
    psnr = 10 * np.log10(1 / mse.mean(axis=(1, 2, 3)))
    assert psnr.mean() > 24, psnr
    assert codes.unique().numel() > 50


def _verdicts(demo, prompt_index: int, seeds):
    model, movqgan, d = demo
    text, spec = held_out_prompts()[prompt_index]
    assert (spec.objects[0].colour, spec.objects[0].kind, spec.objects[0].region) in HELD_OUT
    res = generate(model, text, d["width"], d["height"], seeds=seeds, cfg=d["cfg"], top_k=d["top_k"],
                   temperature=d["temperature"])
    images = decode_images(movqgan, res.codes)
    assert images.shape == (len(seeds), 64, 64, 3) and 0 <= images.min() and images.max() <= 1
    return res, [judge(img, spec) for img in images]


def test_generates_a_held_out_prompt_that_the_judge_accepts(demo):
    """A colour/shape/region triple that no training image contained ('a black circle at the bottom on
    a purple background'), with the demo's defaults: many images right in every attribute (measured
    9 of 16, the rest round blobs the strict judge will not call circles; a random or prompt-blind model
    essentially never gets colour, shape, region and background all right)."""
    seeds = list(range(16))
    res, verdicts = _verdicts(demo, 0, seeds)
    assert sum(v.all_ok for v in verdicts) >= 6, [(v.found, v.background) for v in verdicts]
    for attr in ("colours_ok", "regions_ok", "background_ok", "count_ok"):
        assert sum(getattr(v, attr) for v in verdicts) >= 14, attr
    model, _, d = demo
    text = held_out_prompts()[0][0]
    again = generate(model, text, d["width"], d["height"], seeds=seeds[5:6], cfg=d["cfg"], top_k=d["top_k"],
                     temperature=d["temperature"])
    assert torch.equal(again.codes[0], res.codes[5])  # a seed is the same image at any batch size


def test_held_out_diamond_gets_colour_region_and_background(demo):
    """Composition on a second held-out triple. The shape is not asserted: the demo's known weakness
    (BENCHMARKS.md) is that diamonds come out round (the MoVQGAN alone turns half of all diamonds
    into circles, and the transformer mostly draws circles; measured 0 of 16 here)."""
    _, verdicts = _verdicts(demo, 2, list(range(16)))
    for attr in ("colours_ok", "regions_ok", "background_ok", "count_ok"):
        assert sum(getattr(v, attr) for v in verdicts) >= 12, attr
