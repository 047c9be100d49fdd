"""Which tasks a checkpoint was trained for, and the warning when a request asks for another.

A checkpoint may declare its tasks in generation_config.json ("tasks": ["t2i", ...]); the shapes demo
does. The released checkpoints declare nothing, so we fall back on what upstream says they were
trained on: the base model on text-to-image (its README also uses it for image pairs), the Omni model
on everything in the paper's Table 3. A task outside the list still runs (the model may surprise), but
its images are usually unrelated to the task, so the sampler says so.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

from .tasks import TASKS

log = logging.getLogger(__name__)

GENERATION_CONFIG = "generation_config.json"
TASKS_KEY = "tasks"

# Alpha-VLLM/Lumina-mGPT-2.0: trained for text-to-image; upstream's README runs it for image pairs too.
BASE_TASKS = ("t2i", "pair_depth", "pair_canny", "pair_hed", "pair_pose")
# Alpha-VLLM/Lumina-mGPT-2.0-Omni: all-in-one (T2I, subject, editing, depth/canny control, dense
# prediction). Left out: control_hed/pose (no such task in the release) and dense_hed/pose (no template
# or data published). edit was trained (OmniEdit) though our template for it is a guess.
OMNI_TASKS = BASE_TASKS + ("control_depth", "control_canny", "subject", "dense_depth", "dense_canny", "edit")
OMNI_MARK = "omni"  # the Download node's folder for the Omni checkpoint is Lumina-mGPT-2.0-Omni


@dataclass(frozen=True)
class TrainedTasks:
    tasks: tuple[str, ...]
    source: str   # where the list comes from, for the warning

    def warning(self, task: str) -> str | None:
        """None if `task` is one of them, else what to tell the user."""
        if task in self.tasks:
            return None
        return (f"task {task!r} is not one this checkpoint was trained for ({', '.join(self.tasks)}; {self.source}): "
                "expect images that do not follow the task.")


def read_trained_tasks(folder: str) -> TrainedTasks:
    """The checkpoint's own declaration, else the released model's list that the folder name points to."""
    name = os.path.basename(os.path.normpath(folder))
    declared = _declared(os.path.join(folder, GENERATION_CONFIG))
    if declared is not None:
        return TrainedTasks(declared, f"declared in {name}/{GENERATION_CONFIG}")
    if OMNI_MARK in name.lower():
        return TrainedTasks(OMNI_TASKS, f"{name} declares none, so the Omni model's list is assumed")
    return TrainedTasks(BASE_TASKS, f"{name} declares none, so the base model's list is assumed; for the Omni "
                                    f"checkpoint add \"{TASKS_KEY}\" to its {GENERATION_CONFIG} or keep 'Omni' "
                                    "in its folder name")


def _declared(path: str) -> tuple[str, ...] | None:
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None  # no or unreadable generation config: sampling defaults only, never needed to run
    listed = config.get(TASKS_KEY) if isinstance(config, dict) else None
    if not isinstance(listed, list) or not all(isinstance(t, str) for t in listed):
        return None
    unknown = [t for t in listed if t not in TASKS]
    if unknown:
        log.warning("%s lists tasks this pack does not know: %s (ignored)", path, ", ".join(unknown))
    return tuple(t for t in listed if t in TASKS)


def task_warning(model, task: str) -> str | None:
    """The warning for running `task` on `model` (a loaded LuminaMGPT, or a worker group), or None. The list
    is read from the checkpoint folder the model came from, once; models built in memory (no folder) have no
    list and get no warning."""
    trained = getattr(model, "trained_tasks", None)
    if trained is None and getattr(model, "source_path", None):
        trained = model.trained_tasks = read_trained_tasks(model.source_path)
    return trained.warning(task) if trained is not None else None
