"""bench/shapes_eval: fixed prompt sets, a pluggable sampling method, reproducible scores, a markdown table."""
import pytest

from bench import shapes_eval as se
from demo import load_demo


def test_prompt_sets_cover_every_category_with_enough_images():
    cases = se.build_cases(n=200)
    for category in se.CATEGORIES:
        mine = [c for c in cases if c.category == category]
        assert sum(len(c.seeds) for c in mine) >= 200, category
        assert len({c.caption for c in mine}) == len(mine)  # distinct prompts
    seeds = [(c.category, s) for c in cases for s in c.seeds]
    assert len(seeds) == len(set(seeds))
    assert se.build_cases(n=200) == cases  # fixed, not random per run
    colours = [c for c in cases if c.category == "colours"]
    assert se.build_cases(n=200, categories=["colours"]) == colours  # and independent of the other categories
    held = [c for c in cases if c.category == "held_out"]
    assert all(c.spec.background and c.spec.objects[0].region for c in held)
    assert all(c.condition is not None for c in cases if c.category == "edge")


@pytest.fixture(scope="module")
def demo():
    return load_demo()


def test_evaluate_is_reproducible_and_uses_the_registered_method(demo):
    model, movqgan, _ = demo
    calls = []

    def counting(model, prompt, **kw):
        calls.append(kw["task"])
        return se.plain(model, prompt, **kw)

    se.register_method("counting_plain", counting)
    try:
        cases = [c for c in se.build_cases(n=2, prompts_per_category=1) if c.category in ("colours", "edge")]
        setting = se.Setting(method="counting_plain", cfg=2.0)
        first = se.evaluate(model, movqgan, cases, setting)
        second = se.evaluate(model, movqgan, cases, setting)
    finally:
        del se.METHODS["counting_plain"]
    assert calls.count("t2i") == 2 and calls.count("control_canny") == 2
    for key in ("colours", "edge"):
        assert 0.0 <= first[key] <= 1.0 and first[key] == second[key]
    table = se.markdown_table([(setting, first)])
    assert "counting_plain cfg=2" in table and "edge F1" in table and "colours" in table
