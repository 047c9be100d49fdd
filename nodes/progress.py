"""Sampler feedback: a ProgressBar step per token row, throttled previews, live statistics for the web
extension, and Cancel.

The engine calls `on_rows(rows_done, total_rows, codes_so_far)` after every row and `cancel()` between
rows. Best-of-N reports rows across all its chunks (total = chunks x rows per image); `codes_so_far` is
always the current chunk's [images, rows, w].
"""
from __future__ import annotations

import time

import comfy.model_management as mm
import comfy.utils
from comfy.cli_args import args

from ..lumina_core.image.preview import PreviewSchedule, decoded_preview, embedding_palette, palette_preview

STATS_EVENT = "lumina_mgpt2.stats"


def send_event(event: str, data: dict) -> None:
    """Send a websocket event to the client that queued the prompt (no-op outside a ComfyUI server)."""
    try:
        from server import PromptServer
    except ImportError:
        return
    instance = getattr(PromptServer, "instance", None)
    if instance is not None:
        instance.send_sync(event, data, instance.client_id)


class SamplerProgress:
    def __init__(self, node_id: str | None, model, rows_per_image: int, codes_per_row: int, image_tokenizer=None,
                 forwards=None, clock=time.monotonic, warning: str | None = None, panel_rows: int | None = None,
                 kept=None):
        """rows_per_image: rows the sampler paints; kept: the rows kept above them (codes [k, w] of the first
        image, or None), shown at once and above every preview (the engine's codes so far include them)."""
        self.node_id, self.model, self.image_tokenizer = node_id, model, image_tokenizer
        self.warning = warning  # e.g. a task the checkpoint was not trained for; shown with the stats
        self.panel_rows = panel_rows  # dual-panel tasks: previews decode panel by panel, as Decode does
        self.rows_per_image, self.codes_per_row = rows_per_image, codes_per_row
        self.forwards = forwards  # a CountingForward (SJD) for live tokens per forward, or None
        self.clock = clock
        self.started = clock()
        self.schedule = None
        self.total = rows_per_image
        self.tokens = 0  # image codes produced so far, all images together
        self.last_rows = 0
        self.kept_rows = 0 if kept is None else kept.shape[0]
        self.pbar = comfy.utils.ProgressBar(rows_per_image, node_id=node_id)
        if kept is not None:  # the kept rows are the picture's start: show them before the first row is painted
            self.pbar.update_absolute(0, rows_per_image, self.preview(kept))

    # --- engine callbacks
    def on_rows(self, rows_done: int, total_rows: int, codes) -> None:
        if self.schedule is None:
            self.schedule = PreviewSchedule(total_rows)
        self.total = total_rows
        self.tokens += (rows_done - self.last_rows) * self.codes_per_row * codes.shape[0]
        self.last_rows = rows_done
        preview = self.preview(codes[0]) if self.schedule.due(rows_done) else None
        self.pbar.update_absolute(rows_done, total_rows, preview)
        live = rows_done * self.codes_per_row / max(1, self.forwards.calls) if self.forwards is not None else None
        self.send_stats(rows_done, done=False, tokens_per_forward=live)

    def cancel(self) -> bool:
        mm.throw_exception_if_processing_interrupted()
        return False

    def finish(self, tokens_per_forward: float | None) -> None:
        self.send_stats(self.total, done=True, tokens_per_forward=tokens_per_forward)

    # --- helpers
    def preview(self, codes):
        """The first image of the current batch, kept rows and rows done so far, on its full-size canvas."""
        rows = self.rows_per_image + self.kept_rows
        if self.image_tokenizer is not None:
            image = decoded_preview(self.image_tokenizer, codes, rows, self.panel_rows)
        else:
            if self.model.preview_palette is None:
                self.model.preview_palette = embedding_palette(self.model.engine)
            image = palette_preview(self.model.preview_palette, codes, rows)
        # ComfyUI fits a preview into max_size, enlarging small ones, and the UI labels it with the enlarged
        # size ("512 x 512" for a 64x64 image): never enlarge, so the label is the image's real size.
        return ("JPEG", image, min(args.preview_size, max(image.size)))

    def send_stats(self, rows: int, done: bool, tokens_per_forward: float | None) -> None:
        elapsed = max(self.clock() - self.started, 1e-6)
        rate = rows / elapsed
        send_event(STATS_EVENT, {
            "node": self.node_id, "rows": rows, "total": self.total, "tokens_per_s": self.tokens / elapsed,
            "tokens_per_forward": tokens_per_forward, "elapsed_s": elapsed, "done": done,
            "eta_s": 0.0 if done else (self.total - rows) / rate if rate > 0 else None, "warning": self.warning,
            "memory": getattr(self.model.engine, "memory_plan", None),  # weights and cache format (memory_plan.py)
        })
