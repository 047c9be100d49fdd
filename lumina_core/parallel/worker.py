"""One worker process of a tensor-parallel group (started by workers.TPWorkers as a fresh interpreter): it joins
the group, loads its shard, then serves the parent's requests until told to close or until the parent is gone.
At every finished row rank 0 reports progress and waits for the parent's go/stop answer, which an all-reduce
hands to every rank (workers.py says why)."""
from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from multiprocessing.connection import Client

import torch

from ..errors import GenerationCancelled, InputError
from .messages import DTYPE_NAMES, recv, send


def _watch_parent(parent_pid: int) -> None:
    """Exit when the parent is gone (this process is re-parented), even in the middle of a generation."""
    def watch():
        while True:
            if os.getppid() != parent_pid:
                os._exit(3)
            time.sleep(0.5)
    threading.Thread(target=watch, daemon=True, name="lumina-tp-parent-watch").start()


def _weight_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return DTYPE_NAMES[name]


class _Worker:
    def __init__(self, conn, header: dict):
        from . import tp
        from ..model.transformer import LuminaMGPT
        self.conn, self.rank, self.world = conn, header["rank"], header["world"]
        self.device = torch.device(header["device"])
        if header.get("threads"):
            torch.set_num_threads(header["threads"])
        self.shard = tp.init_group(self.rank, self.world, header["port"], self.device)
        dtype = _weight_dtype(header["dtype"], self.device)
        self.model = tp.load_sharded(LuminaMGPT, header["path"], self.shard, dtype=dtype, device=self.device,
                                     attention=header["attention"], quantize=tp.quantizer(header["quantization"], dtype, self.shard))
        if self.model.tokenizer is None:
            raise InputError(f"{header['path']} has no tokenizer.json")
        self.closing = False
        self.answer_due = False  # rank 0 reported a row and the parent's go/stop answer has not been read
        self._runner, self._runner_key = None, None

    def step_function(self, speed: dict | None):
        """A StepRunner for the Speed Settings (CUDA graphs / compiled layers only on CUDA; on the CPU the same
        bucketed step runs eagerly), kept between requests; None without settings."""
        if not speed:
            return None
        from ..decoding.fast import StepRunner, compile_layers
        cuda = self.device.type == "cuda"
        key = (int(speed["bucket"]), bool(speed["cuda_graphs"]) and cuda, bool(speed["compile_layers"]) and cuda)
        if key != self._runner_key:
            compile_layers(self.model, enable=key[2])
            self._runner, self._runner_key = StepRunner(self.model, bucket=key[0], graphs=key[1]), key
        return self._runner

    def info(self) -> dict:
        from . import tp
        from ..image.preview import embedding_palette
        out = {"resident_bytes": tp.resident_weight_bytes(self.model), "pid": os.getpid()}
        if self.rank == 0:
            out["palette"] = embedding_palette(self.model)
        return out

    # --- callbacks every rank runs at the same points of the loop
    def progress(self, rows: int, total: int, codes: torch.Tensor) -> None:
        if self.rank == 0:
            send(self.conn, ("progress", rows, total, codes.cpu()))
            self.answer_due = True

    def cancel(self) -> bool:
        import torch.distributed as dist
        stop = self.parent_says_stop() if self.rank == 0 else False
        flag = torch.tensor([int(stop)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def parent_says_stop(self) -> bool:
        """The parent's answer to the last row reported (waited for), and any close request already here."""
        stop = False
        while self.answer_due or self.conn.poll():
            try:
                msg = recv(self.conn)
            except (EOFError, OSError):  # the parent is gone: stop with the others, then exit
                msg = ("close",)
            if msg[0] == "answer":
                self.answer_due, stop = False, stop or bool(msg[1])
            elif msg[0] == "close":
                self.answer_due, self.closing, stop = False, True, True
        return stop

    # --- requests
    def generate(self, req: dict) -> dict:
        from ..decoding.fast import FastPlain
        from ..decoding.generate import generate
        from ..decoding.logits import SamplingOptions
        from ..decoding.sjd import SJDecoder
        step = self.step_function(req.get("speed"))
        if req.get("sjd"):
            decoder = SJDecoder(**req["sjd"], forward=step)
        else:
            decoder = FastPlain(step) if step is not None else None
        res = generate(self.model, req["prompt"], req["width"], req["height"], task=req["task"], seeds=req["seeds"],
                       sampling=SamplingOptions(**req["sampling"]), condition_codes=req.get("condition_codes"),
                       subject_description=req.get("subject_description"), prefix_codes=req.get("prefix_codes"),
                       keep_rows=req.get("keep_rows"), decoder=decoder,
                       progress=self.progress, cancel=self.cancel)
        st = res.stats
        stats = {"forwards": st.forwards, "image_tokens": st.image_tokens, "prefill_tokens": st.prefill_tokens,
                 "seconds": st.seconds, "logprob": None if st.logprob is None else st.logprob.cpu(),
                 "extra": dict(st.extra)}
        if step is not None:  # which step function ran, for the log and tests
            stats["extra"]["step"] = f"StepRunner(bucket={step.bucket}, graphs={step.use_graphs})"
        return {"codes": res.codes, "stats": stats} if self.rank == 0 else {}

    def chunk_size(self, req: dict) -> dict:
        """Best-of-N candidates per batch that fit on every rank's device (the smallest)."""
        import torch.distributed as dist
        from ..decoding.best_of_n import RESERVE_BYTES, bytes_per_image, free_bytes
        from ..memory.kv_cache import KVCache
        model, cfg = self.model, self.model.config
        per_image = bytes_per_image(model, req["max_len"], req["use_cfg"], req["window"])
        # best_of_n sizes the KV cache from the config (every head); this rank caches only its own
        full_kv = KVCache.estimate_bytes(cfg, 2 if req["use_cfg"] else 1, req["max_len"], model.compute_dtype)
        per_image -= full_kv - full_kv * model.local_kv_heads // cfg.num_key_value_heads
        size = max(1, min(req["n"], (free_bytes(self.device) - RESERVE_BYTES) // per_image))
        t = torch.tensor([size], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return {"chunk_size": int(t.item())}

    def serve(self) -> None:
        handlers = {"generate": self.generate, "chunk_size": self.chunk_size}
        while not self.closing:
            try:
                msg = recv(self.conn)
            except (EOFError, OSError):
                return
            op = msg[0]
            if op == "close":
                return
            if op not in handlers:  # e.g. a stop request that came after its run had ended
                continue
            try:
                reply = ("result", handlers[op](msg[1]))
            except GenerationCancelled as e:
                reply = ("cancelled", str(e))
            except Exception as e:
                reply = ("error", type(e).__name__, str(e), traceback.format_exc())
            self.answer_due = False
            try:
                send(self.conn, reply)
            except OSError:  # the parent closed the connection
                return


def worker_main() -> None:
    """Entry point of a worker process: the header (JSON) comes on stdin."""
    header = json.loads(sys.stdin.readline())
    _watch_parent(header["parent_pid"])
    conn = Client(tuple(header["address"]), authkey=bytes.fromhex(header["authkey"]))
    send(conn, ("hello", header["rank"]))
    try:
        worker = _Worker(conn, header)
        send(conn, ("ready", worker.info()))
    except Exception as e:
        send(conn, ("error", type(e).__name__, str(e), traceback.format_exc()))
        return
    try:
        worker.serve()
    finally:
        from .tp import leave_group
        leave_group()
