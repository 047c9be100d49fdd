"""The shapes generator and its OpenCV judge: ground truth, held-out split, and a judge that is right on
generator images and catches wrong claims."""
import dataclasses

import numpy as np
import pytest

from demo.judge import edge_f1, find_shapes, judge
from demo.shapes import (COLOUR_NAMES, HELD_OUT, HELD_OUT_SET, REGIONS, SHAPES, ObjectSpec, SceneSampler, Spec,
                         held_out_prompts, training_scenes)


def _ground_truth_spec(scene):
    """Every attribute of every shape, as the generator drew it (stricter than the caption; the
    caption's relation is checked through scene.spec, whose object order it refers to)."""
    objs = tuple(ObjectSpec(s.kind, s.colour, s.region, s.size) for s in scene.shapes)
    return Spec(objs, None, scene.background)


def test_judge_is_right_on_generator_images():
    scenes = training_scenes(seed=123, n=400)
    assert {s.kind for s in scenes} == {"single", "pair", "relation", "count"}
    for scene in scenes:
        img = scene.render()
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        assert judge(img, scene.spec).all_ok, scene.caption
        assert judge(img, _ground_truth_spec(scene)).all_ok, scene.caption


def _blob(draw) -> np.ndarray:
    import cv2
    img = np.full((64, 64, 3), (0, 0, 255), np.uint8)
    draw(cv2, img, (255, 0, 0))
    return img


@pytest.mark.parametrize("name,draw", [
    ("ellipse 1.6:1", lambda cv2, a, c: cv2.ellipse(a, (32, 32), (16, 10), 0, 0, 360, c, -1)),
    ("rotated ellipse", lambda cv2, a, c: cv2.ellipse(a, (32, 32), (16, 10), 30, 0, 360, c, -1)),
    ("two merged discs", lambda cv2, a, c: (cv2.circle(a, (26, 32), 10, c, -1), cv2.circle(a, (38, 32), 10, c, -1))),
    ("triangle pointing down", lambda cv2, a, c: cv2.fillPoly(a, [np.array([[18, 20], [46, 20], [32, 46]])], c)),
    ("rectangle 1.5:1", lambda cv2, a, c: cv2.rectangle(a, (17, 22), (47, 42), c, -1)),
    ("pentagon", lambda cv2, a, c: cv2.fillPoly(a, [np.stack([32 + 15 * np.cos(t), 32 + 15 * np.sin(t)], 1).astype(
        np.int32) for t in [np.linspace(0, 2 * np.pi, 6)[:-1] - np.pi / 2]], c)),
])
def test_judge_does_not_call_other_blobs_circles_or_squares(name, draw):
    """Only the vocabulary's shapes get a name: ovals, bars, merged blobs and other polygons are 'unknown'
    (a lenient judge would flatter a model that draws blobs)."""
    (found,), _ = find_shapes(_blob(draw))
    assert found.kind == "unknown", (name, found)


def test_judge_accepts_float_images():
    scene = training_scenes(seed=5, n=1)[0]
    assert judge(scene.render().astype(np.float32) / 255.0, scene.spec).all_ok


@pytest.mark.parametrize("field, wrong", [("kind", "other"), ("colour", "other"), ("region", "other")])
def test_judge_catches_a_wrong_claim(field, wrong):
    rng = np.random.default_rng(0)
    sampler = SceneSampler(rng)
    values = {"kind": SHAPES, "colour": COLOUR_NAMES, "region": REGIONS}[field]
    for _ in range(20):
        scene = sampler.single(p_drop=0.0)
        truth = _ground_truth_spec(scene)
        obj = truth.objects[0]
        other = next(v for v in values if v != getattr(obj, field))
        lie = dataclasses.replace(truth, objects=(dataclasses.replace(obj, **{field: other}),))
        assert judge(scene.render(), truth).all_ok
        assert not judge(scene.render(), lie).all_ok


def test_judge_catches_wrong_count_relation_and_background():
    sampler = SceneSampler(np.random.default_rng(1))
    scene = sampler.pair(p_drop=0.0, relation="left of")
    img = scene.render()
    assert judge(img, scene.spec).all_ok
    flipped = dataclasses.replace(scene.spec, relation="right of")
    assert not judge(img, flipped).relation_ok
    three = dataclasses.replace(scene.spec, objects=scene.spec.objects + (ObjectSpec(None),))
    assert not judge(img, three).count_ok
    other_bg = next(c for c in COLOUR_NAMES if c != scene.background)
    assert not judge(img, dataclasses.replace(scene.spec, background=other_bg)).background_ok
    blank = np.empty_like(img)
    blank[:] = img[0, 0]
    found, _ = find_shapes(blank)
    assert found == [] and not judge(blank, scene.spec).all_ok


def test_held_out_triples_never_appear_in_training_images():
    assert len(HELD_OUT) == 16  # 10% of 8 colours x 4 shapes x 5 regions
    assert {c for c, _, _ in HELD_OUT} <= set(COLOUR_NAMES) and {s for _, s, _ in HELD_OUT} <= set(SHAPES)
    scenes = training_scenes(seed=7, n=3000)
    seen = {s.triple for scene in scenes for s in scene.shapes}
    assert not seen & HELD_OUT_SET
    assert len(seen) >= 140  # every other triple is trained on
    prompts = held_out_prompts()
    assert len(prompts) == 32 and all(text.split()[1] in COLOUR_NAMES for text, _ in prompts)


def test_generator_is_deterministic():
    a = training_scenes(seed=42, n=20)
    b = training_scenes(seed=42, n=20)
    assert [s.caption for s in a] == [s.caption for s in b]
    assert all(np.array_equal(x.render(), y.render()) for x, y in zip(a, b))
    assert [s.caption for s in training_scenes(seed=43, n=20)] != [s.caption for s in a]


def test_edge_f1():
    scene = training_scenes(seed=9, n=1)[0]
    img = scene.render()
    assert edge_f1(scene.edges(), img) == pytest.approx(1.0)
    shifted = np.roll(img, 1, axis=1)
    assert 0.8 < edge_f1(scene.edges(), shifted) <= 1.0  # within the 2 px tolerance
    far = np.roll(img, (12, 12), axis=(0, 1))
    assert edge_f1(scene.edges(), far) < 0.5
    blank = np.zeros_like(img)
    assert edge_f1(scene.edges(), blank) == 0.0
