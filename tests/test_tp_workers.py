"""The tensor-parallel worker group a host holds (lumina_core/parallel/workers.py), on two CPU ranks with gloo: the
same codes as the single-process model for plain, SJD and best-of-N decoding, rank 0's progress, Cancel
stopping both ranks at the same row, a killed worker giving a clear error and stopping the others, and no
worker left behind when the parent exits without closing."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from builders import tiny_checkpoint
from lumina_core import GenerationCancelled, InputError, LuminaMGPT, SJDecoder, best_of_n, generate
from lumina_core.parallel.workers import TPWorkers, WorkerDied, parse_devices

CFG = dict(hidden_size=64, num_attention_heads=8, num_key_value_heads=4, intermediate_size=160)
KW = dict(cfg=3.0, top_k=16, temperature=1.0)


def running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pids, timeout=20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(running(p) for p in pids):
            return True
        time.sleep(0.2)
    return False


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder, _ = tiny_checkpoint(tmp_path_factory.mktemp("tpw") / "ckpt", num_codes=64, shards=2, **CFG)
    return folder


@pytest.fixture(scope="module")
def reference(checkpoint):
    return LuminaMGPT.from_pretrained(checkpoint, dtype=torch.float32)


@pytest.fixture(scope="module")
def group(checkpoint):
    g = TPWorkers(checkpoint, "cpu,cpu", dtype="fp32")
    yield g
    g.close()


def test_group_decodes_like_the_single_process_model(group, reference):
    rows = []
    got = group.generate("a red circle", 32, 32, seed=5, batch_size=2, progress=lambda r, t, c: rows.append((r, t, c.shape)),
                         **KW)
    want = generate(reference, "a red circle", 32, 32, seed=5, batch_size=2, **KW)
    assert torch.equal(got.codes, want.codes) and got.seeds == want.seeds
    assert rows == [(r, 4, (2, r, 4)) for r in range(1, 5)]  # rank 0's progress, with the codes so far
    # sums of 16 guided log-probs, with partial sums in another order: float32 rounding (~1e-6), not the 1e-4
    torch.testing.assert_close(got.stats.logprob, want.stats.logprob, rtol=0, atol=1e-4)
    sjd = SJDecoder(window=6)
    assert torch.equal(group.generate("a red circle", 32, 32, seed=9, decoder=sjd, **KW).codes,
                       generate(reference, "a red circle", 32, 32, seed=9, decoder=sjd, **KW).codes)
    bon = group.best_of_n("a red circle", 32, 32, n=3, seed=2, chunk_size=2, **KW)
    ref = best_of_n(reference, "a red circle", 32, 32, n=3, seed=2, chunk_size=2, **KW)
    assert torch.equal(bon.codes, ref.codes) and bon.best_index == ref.best_index
    auto = group.best_of_n("a red circle", 32, 32, n=3, seed=2, **KW)  # chunk size from every rank's free memory
    assert torch.equal(auto.codes, ref.codes) and auto.chunk_size == 3
    assert group.palette.shape == (64, 3)  # for the sampler's colour previews


def test_group_keeps_rows_like_the_single_process_model(group, reference):
    """Kept rows travel to the workers: shared by a batch, or one set per image, with rank 0's progress showing
    them above the painted rows; early pruning says it needs one device."""
    source = generate(reference, "a red circle", 32, 32, seed=1, batch_size=2, **KW).codes
    rows = []
    for prefix in (source[:1], source):
        got = group.generate("a blue square", 32, 32, seed=3, batch_size=2, prefix_codes=prefix, keep_rows=2,
                             progress=lambda r, t, c: rows.append(c.shape), **KW)
        want = generate(reference, "a blue square", 32, 32, seed=3, batch_size=2, prefix_codes=prefix, keep_rows=2,
                        **KW)
        assert torch.equal(got.codes, want.codes) and torch.equal(got.codes[:, :2], prefix[:, :2].expand(2, -1, -1))
    assert rows[0] == (2, 3, 4)  # two kept rows above the first painted one
    with pytest.raises(InputError, match="Multi-GPU"):
        group.best_of_n("a red circle", 32, 32, n=3, seed=2, prune_after_rows=1, keep=1, **KW)


def test_the_draft_tree_runs_on_the_workers_as_in_one_process(group, reference):
    """SJD with a draft tree (tree attention mask, moved side paths) on both ranks: the single process's codes."""
    tree = SJDecoder(window=8, candidates=3, branch=2)
    assert torch.equal(group.generate("a red circle", 32, 32, seed=9, decoder=tree, **KW).codes,
                       generate(reference, "a red circle", 32, 32, seed=9, decoder=tree, **KW).codes)


def test_speed_settings_run_each_workers_bucketed_step(group, reference):
    """The Speed Settings reach the workers: a StepRunner per rank (CUDA graphs only on CUDA; here the same
    bucketed step eagerly), exact for plain and SJD decoding."""
    speed = {"cuda_graphs": True, "compile_layers": False, "bucket": 16}
    want = generate(reference, "a red circle", 32, 32, seed=4, batch_size=2, **KW)
    got = group.generate("a red circle", 32, 32, seed=4, batch_size=2, speed=speed, **KW)
    assert torch.equal(got.codes, want.codes)
    assert got.stats.extra["step"] == "StepRunner(bucket=16, graphs=False)"
    sjd = SJDecoder(window=6)
    assert torch.equal(group.generate("a red circle", 32, 32, seed=9, decoder=sjd, speed=speed, **KW).codes,
                       generate(reference, "a red circle", 32, 32, seed=9, decoder=sjd, **KW).codes)


def test_bad_requests_fail_in_the_parent_with_the_engines_error(group):
    with pytest.raises(InputError, match="multiple of"):
        group.generate("a red circle", 33, 32)
    with pytest.raises(InputError, match="all CUDA GPUs or all 'cpu'"):
        parse_devices("cpu,cuda:0")


def test_cancel_stops_both_ranks_after_the_row_it_was_seen_on(group, reference):
    """Rank 0 waits for the parent's answer to every row, so Cancel seen on row 2 stops every rank right after
    row 2, as one process does, whatever else the machine is doing (a cancel polled on the side arrived rows
    late under load, and a short image ran to its end)."""
    rows = []

    def cancel():
        return len(rows) >= 2

    with pytest.raises(GenerationCancelled, match="after 2 of 8 rows"):
        group.generate("a red circle", 64, 64, seed=1, progress=lambda r, t, c: rows.append(r), cancel=cancel, **KW)
    assert rows == [1, 2]
    sjd_rows = []  # SJD reports rows as they complete, several at once when a window crosses row ends
    with pytest.raises(GenerationCancelled) as stopped:
        group.generate("a red circle", 64, 64, seed=1, decoder=SJDecoder(window=6), cancel=lambda: len(sjd_rows) >= 2,
                       progress=lambda r, t, c: sjd_rows.append(r), **KW)
    assert len(sjd_rows) == 2 and f"after {sjd_rows[-1]} of 8 rows" in str(stopped.value)
    # both ranks stopped (each answered) and stay in step: the next request is exact again
    assert group.alive
    assert torch.equal(group.generate("a red circle", 32, 32, seed=1, **KW).codes,
                       generate(reference, "a red circle", 32, 32, seed=1, **KW).codes)


def test_a_host_interrupt_is_raised_after_the_workers_stopped(group):
    class Interrupted(Exception):
        pass

    calls = []

    def cancel():
        calls.append(1)
        raise Interrupted()

    with pytest.raises(Interrupted):
        group.generate("a red circle", 32, 32, seed=1, cancel=cancel, **KW)
    assert len(calls) == 1 and group.alive
    assert group.generate("a red circle", 32, 32, seed=1, **KW).codes.shape == (1, 4, 4)


def test_an_interrupt_raised_by_the_progress_hook_leaves_the_workers_in_step(group, reference):
    """ComfyUI's progress hook raises its interrupt when the user presses Cancel: the workers must be stopped
    and their replies taken, or the next request would receive this run's codes."""
    class Interrupted(Exception):
        pass

    def progress(rows, total, codes):
        raise Interrupted()

    with pytest.raises(Interrupted):
        group.generate("a red circle", 64, 64, seed=3, progress=progress, **KW)
    got = group.generate("a red circle", 32, 32, seed=4, **KW).codes
    assert got.shape == (1, 4, 4)
    assert torch.equal(got, generate(reference, "a red circle", 32, 32, seed=4, **KW).codes)


def test_a_worker_killed_mid_generation_gives_a_clear_error_and_stops_the_others(group):
    """Rank 1 dies after the first row while rank 0 waits for it in a collective."""
    pids = list(group.pids)

    def kill_rank1(rows, total, codes):
        if rows == 1:
            os.kill(pids[1], signal.SIGKILL)

    with pytest.raises(WorkerDied, match=r"worker 1 \(cpu\) stopped unexpectedly while working \(killed by signal 9\)"
                                         r".*Loader again"):
        group.generate("a red circle", 64, 64, seed=1, progress=kill_rank1, **KW)
    assert wait_gone(pids), "a worker outlived its group"
    with pytest.raises(WorkerDied, match="closed"):
        group.generate("a red circle", 32, 32, seed=1, **KW)


def test_workers_exit_when_the_parent_dies_without_closing(checkpoint, tmp_path):
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {os.getcwd()!r})
        from lumina_core.parallel.workers import TPWorkers
        g = TPWorkers({checkpoint!r}, "cpu,cpu", dtype="fp32")
        print(*g.pids, flush=True)
        os._exit(0)  # no close(), no atexit: as if the host were killed
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 2, out.stderr
    assert wait_gone(pids), "workers outlived their parent"
