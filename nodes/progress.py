"""Sampler feedback: a ProgressBar step per token row, throttled previews, live statistics for the web
extension, and Cancel.

The engine calls `on_rows(rows_done, total_rows, codes_so_far)` after every row and `cancel()` between
rows; the decoders raise InterruptProcessingException through `cancel` when the user presses Cancel.
"""
from __future__ import annotations

import time

import comfy.model_management as mm
import comfy.utils
from comfy.cli_args import args

from ..lumina_core.preview import PreviewSchedule, decoded_preview, embedding_palette, palette_preview

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
    """One per sampler run. `passes` > 1 when the engine generates the images in several chunks (best-of-N);
    each chunk reports its rows from 1 again."""

    def __init__(self, node_id: str | None, model, rows_per_pass: int, codes_per_row: int, images: int,
                 passes: int = 1, image_tokenizer=None, forwards=None, clock=time.monotonic):
        self.node_id, self.model, self.image_tokenizer = node_id, model, image_tokenizer
        self.forwards = forwards  # a CountingForward (SJD) for live tokens per forward, or None
        self.rows_per_pass, self.codes_per_row = rows_per_pass, codes_per_row
        self.images_per_pass = -(-images // passes)
        self.total = rows_per_pass * passes
        self.offset = 0
        self.last_rows = 0
        self.clock = clock
        self.started = clock()
        self.schedule = PreviewSchedule(rows_per_pass)
        self.pbar = comfy.utils.ProgressBar(self.total, node_id=node_id)
        self.images = images

    # --- engine callbacks
    def on_rows(self, rows_done: int, total_rows: int, codes) -> None:
        if rows_done < self.last_rows:  # a new chunk of candidates started
            self.offset += self.rows_per_pass
            self.schedule = PreviewSchedule(self.rows_per_pass)
        self.last_rows = rows_done
        preview = self.preview(codes[0], total_rows) if self.schedule.due(rows_done) else None
        self.pbar.update_absolute(self.offset + rows_done, self.total, preview)
        live = rows_done * self.codes_per_row / max(1, self.forwards.calls) if self.forwards is not None else None
        self.send_stats(self.offset + rows_done, done=False, tokens_per_forward=live)

    def cancel(self) -> bool:
        mm.throw_exception_if_processing_interrupted()
        return False

    def finish(self, stats) -> None:
        self.send_stats(self.total, done=True, tokens_per_forward=stats.tokens_per_forward)

    # --- helpers
    def preview(self, codes, total_rows: int):
        if self.image_tokenizer is not None:
            image = decoded_preview(self.image_tokenizer, codes, total_rows)
        else:
            if self.model.preview_palette is None:
                self.model.preview_palette = embedding_palette(self.model.engine)
            image = palette_preview(self.model.preview_palette, codes, total_rows)
        return ("JPEG", image, args.preview_size)

    def send_stats(self, rows: int, done: bool, tokens_per_forward: float | None = None) -> None:
        elapsed = max(self.clock() - self.started, 1e-6)
        tokens = rows * self.codes_per_row * self.images_per_pass
        rate = rows / elapsed
        send_event(STATS_EVENT, {
            "node": self.node_id, "rows": rows, "total": self.total, "images": self.images,
            "tokens_per_s": tokens / elapsed, "tokens_per_forward": tokens_per_forward,
            "eta_s": 0.0 if done else (self.total - rows) / rate if rate > 0 else None,
            "elapsed_s": elapsed, "done": done,
        })
