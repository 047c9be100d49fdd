"""Resumable training: one file per stage holds everything a stage needs to go on where it stopped
(weights, optimiser, step, losses, RNG state, seconds spent), written atomically so a build killed
mid-write keeps its previous snapshot. Loaded with torch.load(weights_only=True): tensors and plain
containers only, nothing in the file is executed.
"""
from __future__ import annotations

import os

import torch


class StaleSnapshot(RuntimeError):
    """A snapshot written with other settings than this run's: resuming it would mix two recipes."""


def save_state(path: str, state: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state(path: str | None, config: dict) -> dict | None:
    """The stage's snapshot, or None if there is none. `config` is this run's settings; a snapshot
    made with others is refused (say which file to delete) rather than silently continued."""
    if not path or not os.path.isfile(path):
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if _plain(state.get("config")) != _plain(config):
        raise StaleSnapshot(f"{path} was written by a run with other settings ({state.get('config')}); "
                            "delete it (or run build_demo with --fresh) to train this stage from scratch")
    return state


def _plain(value):
    """Tuples and lists compare equal (a saved tuple may come back as a list)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
