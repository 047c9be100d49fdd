"""Resumable training: one file per stage holds everything a stage needs to go on where it stopped
(weights, optimiser, step, losses, RNG state, seconds spent), written atomically so a build killed
mid-write keeps its previous snapshot. Loaded with torch.load(weights_only=True): tensors and plain
containers only, nothing in the file is executed.
"""
from __future__ import annotations

import os
import time

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


class Stage:
    """The resumable bookkeeping of one training stage: its losses, the step it starts from and the seconds
    spent in all runs. `parts` maps snapshot keys to what the stage must restore (anything with
    state_dict / load_state_dict: model, optimiser, EMA codebook, RNG); without `path` nothing is saved."""

    def __init__(self, name: str, path: str | None, config: dict, steps: int, parts: dict, log=None):
        self.path, self.config, self.steps, self.parts = path, config, steps, parts
        self.losses: list[float] = []
        self.start, self._spent = 0, 0.0
        state = load_state(path, config)
        if state is not None:
            for key, part in parts.items():
                part.load_state_dict(state[key])
            self.losses, self.start, self._spent = list(state["losses"]), state["step"], state["seconds"]
            if log and self.start < steps:
                log(f"{name}: resuming at step {self.start}/{steps} from {path}")
        self._t0 = time.perf_counter()

    def seconds(self) -> float:
        return self._spent + time.perf_counter() - self._t0

    def save(self, step: int) -> None:
        if self.path:
            save_state(self.path, {"config": self.config, "step": step, "losses": self.losses,
                                   "seconds": self.seconds(), **{k: p.state_dict() for k, p in self.parts.items()}})

    def after_step(self, step: int, every: int) -> bool:
        """Save after 0-based `step` when it completes a multiple of `every`; True when it saved."""
        if every and (step + 1) % every == 0:
            self.save(step + 1)
            return True
        return False

    def finish(self) -> None:
        """The final snapshot (a finished stage is loaded, not retrained, by the next run)."""
        if self.start < self.steps:
            self.save(self.steps)


class GeneratorState:
    """A torch.Generator as a snapshot part."""

    def __init__(self, generator):
        self.generator = generator

    def state_dict(self):
        return self.generator.get_state()

    def load_state_dict(self, state):
        self.generator.set_state(state)
