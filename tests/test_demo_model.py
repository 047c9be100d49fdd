"""The shipped demo model: real file layout, loaded by the public API, and it draws what it is asked for
(checked by the benchmark's judge), including a colour/shape/region combination it never saw."""
import json
import os

import numpy as np
import pytest
import torch

from demo import DEMO_CHECKPOINT, DEMO_MOVQGAN, DEMO_ROOT, DEMO_VERIFIER, generation_defaults, load_demo
from demo.build_demo import STATE_DIR
from demo.judge import judge
from demo.shapes import HELD_OUT, held_out_prompts, training_scenes
from demo.train_movqgan import to_signed
from lumina_core import LuminaMGPT, MoVQGAN, TextTokenizer, decode_images, generate
from lumina_core.model.tokenizer import IMAGE_END, IMAGE_START, ROW_END, TURN_SEPARATOR, grid_token_name


HELD_OUT_CLAIM = 0.496      # BENCHMARKS.md, held-out all-right at the defaults
VERIFIER_RATE = 0.70        # held-out triples, the build measured 0.72 (training_report.json)


@pytest.fixture(scope="module")
def demo():
    return load_demo()


def test_shipped_files_are_the_released_layout_and_small():
    names = sorted(os.listdir(DEMO_CHECKPOINT))
    for required in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                     "generation_config.json", "README.md"):
        assert required in names
    shipped = [os.path.join(dp, f) for dp, _, fs in os.walk(DEMO_ROOT) for f in fs
               if STATE_DIR not in os.path.relpath(dp, DEMO_ROOT).split(os.sep)]  # build snapshots do not ship
    assert sum(os.path.getsize(p) for p in shipped) < 25 * 2 ** 20
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
    a purple background'), with the demo's defaults: most images right in every attribute (v3 measured
    14 of 16, v2 9 of 16; a random or prompt-blind model essentially never gets colour, shape, region and
    background all right)."""
    seeds = list(range(16))
    res, verdicts = _verdicts(demo, 0, seeds)
    assert sum(v.all_ok for v in verdicts) >= 11, [(v.found, v.background) for v in verdicts]
    for attr in ("colours_ok", "regions_ok", "background_ok", "count_ok"):
        assert sum(getattr(v, attr) for v in verdicts) >= 14, attr
    model, _, d = demo
    text = held_out_prompts()[0][0]
    again = generate(model, text, d["width"], d["height"], seeds=seeds[5:6], cfg=d["cfg"], top_k=d["top_k"],
                     temperature=d["temperature"])
    assert torch.equal(again.codes[0], res.codes[5])  # a seed is the same image at any batch size


def test_held_out_diamond_gets_colour_region_and_background(demo):
    """Composition on a second held-out triple. The shape is not asserted: the demo's known weakness
    (BENCHMARKS.md) is that diamonds come out round (the MoVQGAN alone rounds 13 of 21 diamond round
    trips, and the transformer mostly draws rounded shapes; v3 measured 0 of 16 here, colour, region,
    background and count 16 of 16)."""
    _, verdicts = _verdicts(demo, 2, list(range(16)))
    for attr in ("colours_ok", "regions_ok", "background_ok", "count_ok"):
        assert sum(getattr(v, attr) for v in verdicts) >= 12, attr


def test_held_out_prompts_are_right_at_the_rate_benchmarks_claims(demo):
    """BENCHMARKS.md claims HELD_OUT_CLAIM of held-out prompts all right at the defaults (n = 224, the
    benchmark's seeds). Here every held-out prompt on other seeds (100, 101, 102): 96 images, which must come within
    3 standard errors of the claim, and each attribute but the shape must be right in most of them."""
    model, movqgan, d = demo
    verdicts = []
    for text, spec in held_out_prompts():
        res = generate(model, text, d["width"], d["height"], seeds=[100, 101, 102], cfg=d["cfg"], top_k=d["top_k"],
                       temperature=d["temperature"])
        verdicts += [judge(img, spec) for img in decode_images(movqgan, res.codes)]
    rate = sum(v.all_ok for v in verdicts) / len(verdicts)
    margin = 3 * (HELD_OUT_CLAIM * (1 - HELD_OUT_CLAIM) / len(verdicts)) ** 0.5
    assert rate >= HELD_OUT_CLAIM - margin, rate
    for attr in ("colours_ok", "regions_ok", "background_ok", "count_ok"):
        assert sum(getattr(v, attr) for v in verdicts) / len(verdicts) >= 0.8, attr


# ----------------------------------------------------------------------------- the best-of-N verifier
VERIFIER = os.path.join(DEMO_ROOT, DEMO_VERIFIER)


def test_the_verifier_is_a_small_clip_folder_the_pack_lists():
    from lumina_core.model.files import DEMO_PREFIX, list_clip_folders
    with open(os.path.join(VERIFIER, "config.json")) as f:
        assert json.load(f)["model_type"] == "clip"
    assert list_clip_folders([])[DEMO_PREFIX + DEMO_VERIFIER] == VERIFIER  # what the Best-of-N node offers
    size = sum(os.path.getsize(os.path.join(VERIFIER, f)) for f in os.listdir(VERIFIER))
    assert size < 8 * 2 ** 20


def test_the_verifier_ranks_the_true_caption_above_a_hard_negative():
    """On scenes the verifier never trained on (another seed than the build's own measurement), each
    round-tripped through the shipped MoVQGAN as best-of-N sees them, the true caption scores above the
    same caption with one claim made false. The build measured VERIFIER_RATE on held-out-triple scenes
    (training_report.json); a fresh sample of 64 must come within 3 standard errors of it."""
    from demo.train_verifier import ranking_accuracy
    with open(os.path.join(DEMO_CHECKPOINT, "training_report.json")) as f:
        claimed = json.load(f)["verifier"]["held_out_triples"]["true_caption_ranked_first"]
    assert claimed >= VERIFIER_RATE
    movqgan = MoVQGAN.from_file(DEMO_MOVQGAN)
    got = ranking_accuracy(VERIFIER, n=64, seed=2027, held_out_only=True, movqgan=movqgan)["true_caption_ranked_first"]
    margin = 3 * (claimed * (1 - claimed) / 64) ** 0.5
    assert got >= claimed - margin, (got, claimed)
    assert got > 0.6  # far from the 0.5 of a verifier that cannot read
