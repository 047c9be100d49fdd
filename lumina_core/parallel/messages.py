"""What the parent of a worker group and its workers say to each other: plain dicts and tensors, pickled over
multiprocessing.connection sockets on 127.0.0.1, and the names requests use for dtypes and SJD settings."""
from __future__ import annotations

import pickle

import torch

DTYPE_NAMES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SJD_FIELDS = ("window", "init", "mode", "coupled", "candidates", "branch", "levels", "relaxed")


def send(conn, msg) -> None:
    """Plain pickle over the socket: torch.multiprocessing's tensor sharing (fds, shared memory) is for
    processes of one multiprocessing context, which these are not."""
    conn.send_bytes(pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL))


def recv(conn):
    return pickle.loads(conn.recv_bytes())
