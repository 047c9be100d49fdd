"""Fetch the official checkpoints from the Hugging Face Hub into a model folder, with byte progress.

Each file goes through `huggingface_hub.hf_hub_download(local_dir=...)`, so an interrupted download
resumes and a complete file is not fetched again. The download runs in a worker thread; the caller's
thread polls it, so `progress` and `cancel` are always called from the caller's thread.
"""
from __future__ import annotations

import concurrent.futures
import glob
import json
import os
from dataclasses import dataclass
from typing import Callable

from ..errors import InputError
from .files import RELEASED_IMAGE_TOKENIZER

ProgressFn = Callable[[int, int, str], None]   # (bytes done, bytes total, file being fetched)
CancelFn = Callable[[], None]                   # raises to stop

TRANSFORMER_BASE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                          "model.safetensors.index.json")
OPTIONAL_FILES = {"generation_config.json"}  # sampling defaults only; skipped if a repo lacks it


@dataclass(frozen=True)
class Source:
    repo_id: str
    folder: str | None        # sub-folder of the model folder (a transformer), or None (a single file)
    files: tuple[str, ...]    # fixed files; a transformer's shards come from its index


OFFICIAL = {
    "Lumina-mGPT-2.0 (text-to-image)": Source("Alpha-VLLM/Lumina-mGPT-2.0", "Lumina-mGPT-2.0", TRANSFORMER_BASE_FILES),
    "Lumina-mGPT-2.0-Omni (all tasks)": Source("Alpha-VLLM/Lumina-mGPT-2.0-Omni", "Lumina-mGPT-2.0-Omni",
                                               TRANSFORMER_BASE_FILES),
    "MoVQGAN 270M (image tokenizer)": Source("ai-forever/MoVQGAN", None, (RELEASED_IMAGE_TOKENIZER,)),
}


def _shards(folder: str) -> list[str]:
    with open(os.path.join(folder, "model.safetensors.index.json"), "r", encoding="utf-8") as f:
        return sorted(set(json.load(f)["weight_map"].values()))


def _partial_bytes(target: str) -> int:
    """Bytes already written to unfinished downloads in `target` (huggingface_hub's *.incomplete files)."""
    pattern = os.path.join(target, ".cache", "huggingface", "download", "**", "*.incomplete")
    return sum(os.path.getsize(p) for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))


class _Fetcher:
    def __init__(self, source: Source, target: str, endpoint, token, progress, cancel, poll_seconds):
        self.source, self.target, self.endpoint, self.token = source, target, endpoint, token
        self.progress, self.cancel, self.poll = progress, cancel, poll_seconds
        self.done = 0
        self.total = 0

    def sizes(self, files: list[str]) -> dict[str, int]:
        """Size of each file on the Hub; optional files the repo lacks are left out."""
        from huggingface_hub import get_hf_file_metadata, hf_hub_url
        from huggingface_hub.utils import EntryNotFoundError
        out = {}
        for f in files:
            url = hf_hub_url(self.source.repo_id, f, endpoint=self.endpoint)
            try:
                out[f] = get_hf_file_metadata(url, token=self.token).size or 0
            except EntryNotFoundError:
                if f not in OPTIONAL_FILES:
                    raise
        return out

    def fetch(self, files: list[str]) -> None:
        from huggingface_hub import hf_hub_download
        sizes = self.sizes(files)
        self.total += sum(sizes.values())
        pool = concurrent.futures.ThreadPoolExecutor(1)
        try:
            for filename, size in sizes.items():
                job = pool.submit(hf_hub_download, self.source.repo_id, filename, local_dir=self.target,
                                  endpoint=self.endpoint, token=self.token)
                while True:
                    try:
                        job.result(timeout=self.poll)
                        break
                    except concurrent.futures.TimeoutError:
                        self.report(self.done + _partial_bytes(self.target), filename)
                self.done += size
                self.report(self.done, filename)
        finally:
            pool.shutdown(wait=False)  # after a cancel, the file being fetched finishes on its own

    def report(self, done: int, filename: str) -> None:
        if self.cancel is not None:
            self.cancel()
        if self.progress is not None:
            self.progress(min(done, self.total), self.total, filename)


def download(name: str, models_dir: str, *, endpoint: str | None = None, token=None,
             progress: ProgressFn | None = None, cancel: CancelFn | None = None,
             poll_seconds: float = 0.5) -> str:
    """Download OFFICIAL[name] into `models_dir`; returns the checkpoint folder or file.

    `endpoint` defaults to huggingface_hub's (HF_ENDPOINT). `cancel` is called between polls and
    should raise to stop; a file being fetched then finishes in the background and is kept.
    """
    if name not in OFFICIAL:
        raise InputError(f"unknown checkpoint {name!r}; choose one of: {', '.join(OFFICIAL)}")
    source = OFFICIAL[name]
    target = os.path.join(models_dir, source.folder) if source.folder else models_dir
    os.makedirs(target, exist_ok=True)
    fetcher = _Fetcher(source, target, endpoint, token, progress, cancel, poll_seconds)
    fetcher.fetch(list(source.files))
    if source.folder is None:
        return os.path.join(target, source.files[0])
    fetcher.fetch(_shards(target))
    return target
