"""Which tasks a checkpoint was trained for: declared in generation_config.json (the demo does), else
the released base / Omni model's lists; other tasks get a warning."""
import json
import os

import torch

from demo import DEMO_CHECKPOINT
from demo.build_demo import DEMO_TASKS, write_generation_config
from lumina_core import TASKS, LuminaMGPT
from lumina_core.decoding.trained_tasks import BASE_TASKS, OMNI_TASKS, read_trained_tasks, task_warning


def test_the_demo_declares_its_three_tasks_and_the_build_writes_them(tmp_path):
    trained = read_trained_tasks(DEMO_CHECKPOINT)
    assert trained.tasks == ("t2i", "pair_canny", "control_canny") == tuple(DEMO_TASKS)
    write_generation_config(str(tmp_path))
    with open(tmp_path / "generation_config.json") as f, \
            open(os.path.join(DEMO_CHECKPOINT, "generation_config.json")) as g:
        assert json.load(f) == json.load(g)  # the shipped file is what the build writes


def test_every_other_task_is_warned_about_on_the_loaded_demo():
    model = LuminaMGPT.from_pretrained(DEMO_CHECKPOINT, dtype=torch.float32)
    for name in TASKS:
        warning = task_warning(model, name)
        if name in DEMO_TASKS:
            assert warning is None
        else:
            assert name in warning and "t2i, pair_canny, control_canny" in warning and "generation_config" in warning


def test_released_checkpoints_fall_back_on_what_upstream_trained(tmp_path):
    base, omni = tmp_path / "Lumina-mGPT-2.0", tmp_path / "Lumina-mGPT-2.0-Omni"
    for folder in (base, omni):
        folder.mkdir()
        # the release's generation_config.json holds generation settings, no task list
        (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [151666]}))
    assert read_trained_tasks(str(base)).tasks == BASE_TASKS
    assert read_trained_tasks(str(omni)).tasks == OMNI_TASKS
    assert read_trained_tasks(str(base)).warning("control_canny") is not None
    assert "Omni" in read_trained_tasks(str(base)).warning("control_canny")  # says how to declare the Omni model
    assert read_trained_tasks(str(omni)).warning("control_canny") is None
    assert read_trained_tasks(str(omni)).warning("control_pose") is not None  # not in the release
    assert set(OMNI_TASKS) <= set(TASKS)


def test_a_declaration_wins_over_the_folder_name_and_unknown_names_are_ignored(tmp_path):
    folder = tmp_path / "my-Omni-finetune"
    folder.mkdir()
    (folder / "generation_config.json").write_text(json.dumps({"tasks": ["t2i", "inpaint"]}))
    trained = read_trained_tasks(str(folder))
    assert trained.tasks == ("t2i",) and trained.warning("control_canny") is not None
