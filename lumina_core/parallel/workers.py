"""A tensor-parallel worker group that a single-process host (ComfyUI) can hold: one worker process per
device, each loading its shard (tp.py) and running the same decoding loop (worker.py); this parent-side
handle sends requests and receives codes, progress and errors (messages.py).

Workers are started as fresh interpreters (`python -c ...` importing this package as `lumina_core`), not
with multiprocessing's spawn: spawn re-runs the host's main module in every child (ComfyUI's main.py runs
every custom node's prestartup script) and pickles by module name (ComfyUI imports packs under path-like
names a child cannot import). Requests and replies travel over multiprocessing.connection sockets on
127.0.0.1 with a random authkey, as plain dicts and tensors; the ranks meet in a torch.distributed group
(a store the parent holds on a free 127.0.0.1 port, tp.Rendezvous; gloo on CPU, NCCL on GPUs).

Lifetime: close() (also when the handle is garbage collected or the parent exits) stops every worker;
a worker whose parent dies (its parent pid changes) or whose connection closes exits by itself; a worker
that dies makes the next reply a WorkerDied error, and the others are stopped so their memory is freed.
Cancel: rank 0 reports every finished row to the parent and waits for its answer (the parent runs the host's
progress hook and cancel callback on that row first); an all-reduce hands the answer to every rank. All ranks
therefore stop right after the row on which Cancel was seen, as one process does, however busy the machine is
(a stop request polled on the side arrived rows late under load, or after the last row).
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import asdict
from functools import partial
from multiprocessing.connection import Listener, wait

import torch

from ..errors import CheckpointError, GenerationCancelled, InputError, LuminaError
from .messages import DTYPE_NAMES, SJD_FIELDS, recv, send

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository: lumina_core's parent
ERROR_GRACE_S = 5.0  # after one rank fails, how long the others may take to report the same error


class WorkerDied(LuminaError):
    """A worker process of a tensor-parallel group stopped unexpectedly."""


def parse_devices(devices) -> list[str]:
    """'cuda:0,cuda:1' or a list -> device names; all CUDA or all CPU."""
    names = [d.strip() for d in (devices.split(",") if isinstance(devices, str) else devices) if d.strip()]
    if len(names) < 1:
        raise InputError("list at least one device, e.g. 'cuda:0,cuda:1'")
    kinds = set()
    for name in names:
        try:
            kinds.add(torch.device(name).type)
        except RuntimeError:
            raise InputError(f"{name!r} is not a device name; write devices like 'cuda:0,cuda:1' (or 'cpu,cpu')") from None
    if not kinds <= {"cuda", "cpu"} or len(kinds) > 1:
        raise InputError(f"devices must be all CUDA GPUs or all 'cpu', got {', '.join(names)}")
    if "cuda" in kinds:
        indices = [torch.device(n).index or 0 for n in names]
        if len(set(indices)) != len(indices):
            raise InputError(f"each GPU may be listed once (NCCL needs one rank per GPU), got {', '.join(names)}")
        if not torch.cuda.is_available():
            raise InputError(f"{', '.join(names)} asks for CUDA GPUs but PyTorch sees none on this machine (a CPU "
                             "build of PyTorch, or no NVIDIA driver): use the Model Loader, or 'cpu,cpu' to try "
                             "the split on the CPU.")
        if max(indices) >= torch.cuda.device_count():
            raise InputError(f"{', '.join(names)} asks for GPU {max(indices)} but this machine has "
                             f"{torch.cuda.device_count()}")
    return names


class _Processes:
    """The worker processes and connections, kept apart from the handle so a finalizer can stop them."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []
        self.conns: list = []
        self.logs: list[str] = []
        self.listener = None
        self.rendezvous = None  # the group's store: held here, so it outlives every worker

    def stop(self, grace_s: float = 5.0) -> None:
        for conn in self.conns:
            try:
                send(conn, ("close",))
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + grace_s
        for proc in self.procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for conn in self.conns:
            conn.close()
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        if self.rendezvous is not None:
            self.rendezvous.close()
            self.rendezvous = None
        self.conns = []
        for log in self.logs:  # the workers' output, read for the error message of one that died
            try:
                os.remove(log)
            except OSError:
                pass
        self.logs = []


def _log_tail(path: str, lines: int = 12) -> str:
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:]).strip()
    except OSError:
        return ""


class TPWorkers:
    """Parent-side handle of a tensor-parallel group serving one checkpoint folder.

    It answers `tokenizer` and `config` (what prompt planning needs) itself and runs `generate` /
    `best_of_n` (the keyword arguments of lumina_core.generate / best_of_n) on the workers.
    """

    def __init__(self, path: str, devices, dtype: str = "auto", quantization: str = "none", attention: str = "sdpa",
                 threads: int | None = None, start_timeout_s: float = 900.0):
        from ..model.config import read_config
        from ..model.tokenizer import TextTokenizer
        from ..decoding.trained_tasks import read_trained_tasks
        self.devices = parse_devices(devices)
        if dtype != "auto" and dtype not in DTYPE_NAMES:
            raise InputError(f"dtype must be 'auto' or one of {list(DTYPE_NAMES)}, got {dtype!r}")
        self.path = path
        self.config = read_config(path)
        from .tp import check_divisible
        check_divisible(self.config, len(self.devices))
        self.tokenizer = TextTokenizer.from_pretrained(path)
        self.trained_tasks = read_trained_tasks(path)  # the sampler warns on other tasks, as for one device
        self.world = len(self.devices)
        self._p = _Processes()
        self._finalizer = weakref.finalize(self, _Processes.stop, self._p)
        try:
            self._start(dtype, quantization, attention, threads, start_timeout_s)
        except BaseException:
            self.close()
            raise

    # --- lifetime
    def _start(self, dtype, quantization, attention, threads, timeout_s) -> None:
        from .tp import Rendezvous
        p = self._p
        authkey = secrets.token_bytes(32)
        p.listener = Listener(("127.0.0.1", 0), authkey=authkey)
        p.rendezvous = Rendezvous()
        port = p.rendezvous.port
        if threads is None and self.devices[0] == "cpu":
            threads = max(1, (os.cpu_count() or 1) // self.world)
        code = f"import sys; sys.path.insert(0, {ROOT!r}); from lumina_core.parallel.worker import worker_main; worker_main()"
        for rank, device in enumerate(self.devices):
            header = {"rank": rank, "world": self.world, "device": device, "port": port, "path": self.path,
                      "dtype": dtype, "quantization": quantization, "attention": attention, "threads": threads,
                      "address": list(p.listener.address), "authkey": authkey.hex(), "parent_pid": os.getpid()}
            fd, log = tempfile.mkstemp(prefix=f"lumina-tp-rank{rank}-", suffix=".log")
            with os.fdopen(fd, "w") as log_file:
                proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=log_file,
                                        stderr=subprocess.STDOUT, cwd=ROOT)
            proc.stdin.write((json.dumps(header) + "\n").encode())
            proc.stdin.close()
            p.procs.append(proc)
            p.logs.append(log)
        # accept the connections (a worker that fails to start never connects: watch the processes meanwhile)
        by_rank: dict[int, object] = {}
        accepted = []
        accept = threading.Thread(target=lambda: accepted.extend(p.listener.accept() for _ in self.devices), daemon=True)
        accept.start()
        deadline = time.monotonic() + timeout_s
        while accept.is_alive():
            accept.join(0.2)
            for rank, proc in enumerate(p.procs):
                if proc.poll() is not None:
                    raise self._died(rank, "while starting")
            if time.monotonic() > deadline:
                raise WorkerDied(f"the Multi-GPU workers did not start within {timeout_s:.0f} s")
        for conn in accepted:
            kind, rank = recv(conn)
            by_rank[rank] = conn
        p.conns = [by_rank[r] for r in range(self.world)]
        replies = self._collect(timeout_s=timeout_s, doing="loading")
        self.info = [r[1] for r in replies]
        self.palette = self.info[0].get("palette")
        self.pids = [proc.pid for proc in p.procs]

    def close(self) -> None:
        """Stop every worker (idempotent)."""
        self._finalizer()

    @property
    def alive(self) -> bool:
        return self._finalizer.alive and all(proc.poll() is None for proc in self._p.procs)

    def _died(self, rank: int, when: str) -> WorkerDied:
        proc = self._p.procs[rank]
        try:
            code = proc.wait(2.0)
        except subprocess.TimeoutExpired:
            code = None
        how = ("killed by signal %d" % -code) if code is not None and code < 0 else f"exit code {code}"
        tail = _log_tail(self._p.logs[rank]) if rank < len(self._p.logs) else ""
        self.close()
        return WorkerDied(f"Multi-GPU worker {rank} ({self.devices[rank]}) stopped unexpectedly {when} ({how}). All "
                          f"workers were stopped and their memory freed; run the Multi-GPU Loader again."
                          + (f"\nIts last output:\n{tail}" if tail else ""))

    # --- requests
    def _collect(self, progress=None, cancel=None, timeout_s: float | None = None, doing: str = "generation") -> list:
        """Wait for one reply from every rank, answering each row rank 0 reports: progress(...), then cancel()."""
        p = self._p
        replies: list = [None] * self.world
        interrupted = None
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        deadline_error = None
        while any(r is None for r in replies):
            pending = [p.conns[r] for r in range(self.world) if replies[r] is None]
            for conn in wait(pending, timeout=0.1):
                rank = p.conns.index(conn)
                try:
                    msg = recv(conn)
                except (EOFError, OSError):
                    raise self._died(rank, "while working") from None
                if msg[0] == "progress":  # rank 0 waits for the answer: go on, or stop after this row
                    if progress is not None and interrupted is None:
                        try:
                            progress(msg[1], msg[2], msg[3])
                        except BaseException as e:  # a host's progress hook raises its interrupt (ComfyUI does):
                            interrupted = e         # stop the workers and wait for their replies first, or
                            #                         this run's replies would answer the next request
                    stop = interrupted is not None
                    if not stop and cancel is not None:
                        try:
                            stop = bool(cancel())
                        except BaseException as e:  # a host's interrupt exception: stop the workers, then raise it
                            interrupted, stop = e, True
                    try:
                        send(conn, ("answer", stop))
                    except OSError:  # rank 0 is gone: found below
                        pass
                else:
                    replies[rank] = msg
                    if msg[0] == "error" and deadline_error is None:  # the others get a moment to fail alike
                        deadline_error = time.monotonic() + ERROR_GRACE_S
            for rank, proc in enumerate(p.procs):
                if replies[rank] is None and proc.poll() is not None:
                    raise self._died(rank, "while working")
            if deadline_error is not None and time.monotonic() > deadline_error:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise WorkerDied(f"the Multi-GPU workers did not answer within {timeout_s:.0f} s")
        errors = [r for r in replies if r is not None and r[0] == "error"]
        if errors:
            name, text, trace = errors[0][1], errors[0][2], errors[0][3]
            if len(errors) < self.world:  # only some ranks failed (others may wait in a collective): start afresh
                rank = replies.index(errors[0])
                self.close()
                raise WorkerDied(f"Multi-GPU worker {rank} ({self.devices[rank]}) failed while {doing} ({name}: "
                                 f"{text}); all workers were stopped, run the Multi-GPU Loader again.\n{trace}")
            if name in ("InputError", "CheckpointError"):
                raise (InputError if name == "InputError" else CheckpointError)(text)
            raise LuminaError(f"Multi-GPU {doing} failed ({name}: {text})\n{trace}")
        if interrupted is not None:
            raise interrupted
        if any(r[0] == "cancelled" for r in replies):
            raise GenerationCancelled(next(r[1] for r in replies if r[0] == "cancelled"))
        return replies

    def _request(self, op: str, req: dict, progress=None, cancel=None) -> dict:
        if not self.alive:
            for rank, proc in enumerate(self._p.procs):
                if proc.poll() is not None and self._finalizer.alive:
                    raise self._died(rank, "between requests")
            raise WorkerDied("this Multi-GPU model was closed; run the Multi-GPU Loader again")
        for conn in self._p.conns:
            send(conn, (op, req))
        return self._collect(progress, cancel, doing={"generate": "generation", "chunk_size": "sizing best-of-N chunks"}[op])[0][1]

    def generate(self, prompt: str, width: int = 768, height: int = 768, *, task="t2i", seed: int = 0,
                 batch_size: int = 1, seeds: list[int] | None = None, cfg: float = 4.0, top_k: int = 4096,
                 temperature: float = 1.0, top_p: float = 1.0, top_n_sigma: float = 0.0, cfg_mode: str = "plain",
                 guidance_top_k: int = 0, sampling=None, condition_codes=None, subject_description=None,
                 prefix_codes=None, keep_rows: int | None = None, decoder=None, speed: dict | None = None,
                 progress=None, cancel=None, condition_image=None, image_tokenizer=None):
        """lumina_core.generate on the workers; returns a GenerationResult. speed: the Speed Settings
        (cuda_graphs, compile_layers, bucket), applied by every worker to its own shard."""
        from ..decoding.generate import GenerationResult, encode_condition, plan_each_prefix, sampling_and_seeds
        from ..decoding.sampler import DecodeStats
        if condition_image is not None:  # encoded here: the workers hold only the transformer
            if condition_codes is not None:
                raise InputError("pass either condition_image or condition_codes, not both")
            condition_codes = encode_condition(image_tokenizer, condition_image, width, height // 2)
        opts, seeds = sampling_and_seeds(sampling, seeds, seed, batch_size, cfg=cfg, top_k=top_k,
                                         temperature=temperature, top_p=top_p, top_n_sigma=top_n_sigma,
                                         cfg_mode=cfg_mode, guidance_top_k=guidance_top_k)
        plan = plan_each_prefix(self, prompt, width, height, task, condition_codes=condition_codes,
                                subject_description=subject_description, prefix_codes=prefix_codes,
                                keep_rows=keep_rows, n_images=len(seeds))[0][0]  # bad requests fail here
        req = {"prompt": prompt, "width": width, "height": height, "task": plan.task.name, "seeds": list(seeds),
               "sampling": asdict(opts), "condition_codes": condition_codes,
               "subject_description": subject_description, "prefix_codes": prefix_codes, "keep_rows": keep_rows,
               "sjd": _sjd_settings(decoder), "speed": speed}
        out = self._request("generate", req, progress, cancel)
        stats = DecodeStats(**out["stats"])
        return GenerationResult(codes=out["codes"], layout=plan.layout, task=plan.task, seeds=list(seeds),
                                prompt=plan.text, stats=stats)

    def best_of_n(self, prompt: str, width: int = 768, height: int = 768, *, n: int = 4, seed: int = 0,
                  scorer=None, chunk_size: int | None = None, speed: dict | None = None, **kwargs):
        """lumina_core.best_of_n with candidates generated on the workers and scored here; chunk_size 0 or
        None: as many as fit the rank with the least room."""
        from ..decoding.best_of_n import best_of_n

        def fit(max_len, use_cfg, window, n):
            return self._request("chunk_size", {"max_len": max_len, "use_cfg": use_cfg, "window": window,
                                                "n": n})["chunk_size"]

        return best_of_n(self, prompt, width, height, n=n, seed=seed, scorer=scorer, chunk_size=chunk_size or None,
                         generate_fn=partial(self.generate, speed=speed), chunk_size_fn=fit, **kwargs)


def _sjd_settings(decoder) -> dict | None:
    """An SJDecoder as the plain settings the workers rebuild it from (their own step function)."""
    if decoder is None:
        return None
    if not all(hasattr(decoder, f) for f in SJD_FIELDS):
        raise InputError(f"a Multi-GPU model decodes plainly or with SJD; {type(decoder).__name__} is not supported")
    return {f: getattr(decoder, f) for f in SJD_FIELDS}


