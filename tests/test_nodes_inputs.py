"""What a user (or a hostile API client) feeds the nodes, called in this process as ComfyUI's executor
calls them: NaN and infinite floats, tasks the checkpoint was not trained for, preview sizes, the
statistics event, and decoding a whole dual-panel canvas."""
import inspect
import math

import pytest
import torch

from node_fixtures import model, nodes, one_thread, vq  # noqa: F401 (fixtures)

BAD_FLOATS = (math.nan, math.inf, -math.inf)


@pytest.fixture
def events(nodes, monkeypatch):
    """The websocket events the sampler sends (to the client that queued the prompt)."""
    sent = []
    monkeypatch.setattr(nodes.progress, "send_event", lambda event, data: sent.append((event, data)))
    return sent


def sample(nodes, model, **kw):
    sampler = nodes.compat.node_with_hidden(nodes.sampler.Sampler, unique_id="7")
    args = dict(prompt="a red circle", task="t2i", width=64, height=64, seed=0, cfg=4.0, top_k=4096,
                temperature=1.0, batch_size=1)
    args.update(kw)
    return sampler.execute(model, **args).args[0]


def float_nodes(nodes):
    found = [(node, name) for node in nodes.NODES for name in nodes.validation.float_inputs(node)]
    assert {name for _, name in found} >= {"cfg", "temperature", "top_p", "top_n_sigma"}
    return found


def test_every_float_input_of_every_node_rejects_nan_and_infinities_at_queue_time(nodes):
    """Every float input goes through the node's validate_inputs (ComfyUI's own min/max check lets NaN
    through), so a node that adds a float input without checking it fails here."""
    for node, name in float_nodes(nodes):
        takes = inspect.getfullargspec(node.validate_inputs).args
        assert name in takes, f"{node.__name__}.validate_inputs does not check its float input {name}"
        defaults = {i.id: i.default for i in node.define_schema().inputs if i.id in takes}
        assert node.validate_inputs(**defaults) is True, node.__name__
        for bad in BAD_FLOATS:
            problem = node.validate_inputs(**{**defaults, name: bad})
            assert isinstance(problem, str) and problem.startswith(f"{name} must be a finite number"), problem
        low, high = nodes.validation.float_inputs(node)[name]
        # taking the input in validate_inputs turns ComfyUI's range check off: ours does it instead
        assert isinstance(node.validate_inputs(**{**defaults, name: high + 1}), str)
        assert isinstance(node.validate_inputs(**{**defaults, name: low - 1}), str)
        assert node.validate_inputs(**{**defaults, name: None}) is True  # linked: known only at run time


@pytest.mark.parametrize("name", ["cfg", "temperature"])
def test_a_linked_nan_is_rejected_when_the_sampler_runs(nodes, model, events, name):
    from lumina_pack.lumina_core import InputError
    with pytest.raises(InputError, match=f"^{name} must be a finite number between .*, got nan"):
        sample(nodes, model, **{name: math.nan})
    assert not events  # rejected before any row was generated


def test_a_linked_nan_is_rejected_by_the_sampling_settings(nodes):
    from lumina_pack.lumina_core import InputError
    with pytest.raises(InputError, match="top_p must be a finite number"):
        nodes.settings.SamplingSettings.execute(math.nan, 0.0, 0, "plain")
    with pytest.raises(InputError, match="top_n_sigma must be a finite number"):
        nodes.settings.SamplingSettings.execute(1.0, math.inf, 0, "plain")


def test_engine_options_reject_nan_too():
    from lumina_pack.lumina_core import InputError, SamplingOptions
    for name in ("cfg", "temperature", "top_p", "top_n_sigma"):
        with pytest.raises(InputError, match=f"{name} must be a finite number"):
            SamplingOptions(**{name: math.nan}).validated()


def test_untrained_task_is_warned_in_the_log_and_the_stats_event(nodes, model, vq, events, caplog):
    """The tiny checkpoint declares no tasks and is not named Omni: the base model's list applies, which
    has no control tasks."""
    condition = nodes.condition.ConditionEncoder.execute(vq, torch.rand(1, 64, 64, 3), "canny", 64, 64, 100,
                                                         200).args[0]
    with caplog.at_level("WARNING"):
        sample(nodes, model, task="control_canny", condition=condition)
    assert "'control_canny' is not one this checkpoint was trained for" in caplog.text
    stats = [data for event, data in events if event == nodes.progress.STATS_EVENT]
    assert stats and all("control_canny" in s["warning"] for s in stats)
    events.clear()
    caplog.clear()
    sample(nodes, model, task="pair_canny")
    assert "trained for" not in caplog.text
    assert all(data["warning"] is None for _, data in events)


def test_preview_is_never_enlarged_and_plain_decoding_reports_no_tokens_per_forward(nodes, model, vq, events,
                                                                                    monkeypatch):
    """ComfyUI fits a preview into its max size, enlarging small ones ("512 x 512" under a 64x64 image)."""
    import comfy.utils
    previews = []
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK",
                        lambda value, total, preview, node_id=None: previews.append(preview))
    sample(nodes, model, image_tokenizer=vq)
    shown = [p for p in previews if p is not None]
    assert shown and all(p[1].size == (64, 64) and p[2] == 64 for p in shown)
    stats = [data for event, data in events if event == nodes.progress.STATS_EVENT]
    assert stats[-1]["done"] and all(s["tokens_per_forward"] is None for s in stats)


def test_full_canvas_of_a_dual_panel_task_is_decoded_panel_by_panel(nodes, model, vq):
    tokens = sample(nodes, model, task="pair_canny", seed=3)
    decode = nodes.decode.Decode.execute
    full, image, edges = (decode(tokens, vq, p).args[0] for p in ("full canvas", "output", "other panel"))
    assert full.shape == (1, 128, 64, 3)
    assert torch.equal(full, torch.cat([image, edges], dim=1))  # pair_*: the image is the upper panel


def test_dual_panel_previews_decode_panel_by_panel_too(nodes, model, vq, monkeypatch):
    """The last preview of a pair_* run is the decoded canvas, panel by panel, as Decode shows it."""
    import comfy.utils
    import numpy as np
    previews = []
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK",
                        lambda value, total, preview, node_id=None: previews.append(preview))
    tokens = sample(nodes, model, task="pair_canny", seed=4, image_tokenizer=vq)
    last = np.asarray([p for p in previews if p is not None][-1][1], dtype=np.int16)
    full = nodes.decode.Decode.execute(tokens, vq, "full canvas").args[0][0]
    assert last.shape == (128, 64, 3)
    assert np.abs(last - (full.numpy() * 255).round()).max() <= 1


def test_sjd_settings_take_the_smallest_window_and_say_when_a_tree_needs_more(nodes):
    from lumina_pack.lumina_core import InputError
    settings = nodes.settings.SJDSettings.execute(window=2, init="random", mode="exact", draft_tree="off").args[0]
    assert settings["window"] == 2
    assert nodes.settings.SJDSettings.execute(window=2, init="random", mode="upstream").args[0]["window"] == 2
    with pytest.raises(InputError, match="window >= 3.*draft_tree to off"):
        nodes.settings.SJDSettings.execute(window=2, init="random", mode="exact", draft_tree="4 candidates")
