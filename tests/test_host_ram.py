"""System memory in a container: the cgroup's limit caps what the machine reports free (real cgroup-shaped files
in a temporary folder stand in for /sys/fs/cgroup)."""
import pytest

from lumina_core.memory import host_ram

GIB = 2 ** 30


def write(folder, **files):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name.replace("_", ".", 1)).write_text(text)


@pytest.fixture
def machine_has(monkeypatch):
    def set_free(n):
        monkeypatch.setattr(host_ram, "machine_ram_free", lambda: n)
    set_free(64 * GIB)
    return set_free


def test_cgroup_v2_limit_caps_free_memory_and_counts_dropable_cache_as_free(tmp_path, machine_has):
    write(tmp_path, memory_max=str(8 * GIB), memory_current=str(5 * GIB),
          memory_stat=f"anon {4 * GIB}\ninactive_file {1 * GIB}\nactive_file 0\n")
    assert host_ram.container_ram_left(str(tmp_path)) == 4 * GIB
    assert host_ram.available_ram(str(tmp_path)) == 4 * GIB       # not the machine's 64 GiB
    machine_has(2 * GIB)
    assert host_ram.available_ram(str(tmp_path)) == 2 * GIB        # the machine itself is the tighter one


def test_cgroup_v2_without_a_limit_leaves_the_machine_figure(tmp_path, machine_has):
    write(tmp_path, memory_max="max", memory_current=str(5 * GIB))
    assert host_ram.container_ram_left(str(tmp_path)) is None
    assert host_ram.available_ram(str(tmp_path)) == 64 * GIB


def test_cgroup_v1_limit_and_its_no_limit_number(tmp_path, machine_has):
    v1 = tmp_path / "memory"
    write(v1, memory_limit_in_bytes=str(6 * GIB), memory_usage_in_bytes=str(3 * GIB),
          memory_stat=f"cache {2 * GIB}\ntotal_inactive_file {GIB // 2}\n")
    assert host_ram.available_ram(str(tmp_path)) == 6 * GIB - (3 * GIB - GIB // 2)
    write(v1, memory_limit_in_bytes="9223372036854771712")          # what v1 writes for "no limit"
    assert host_ram.available_ram(str(tmp_path)) == 64 * GIB


def test_usage_over_the_limit_leaves_nothing_and_unreadable_files_leave_the_machine_figure(tmp_path, machine_has):
    write(tmp_path, memory_max=str(GIB), memory_current=str(2 * GIB))
    assert host_ram.available_ram(str(tmp_path)) == 0
    assert host_ram.available_ram(str(tmp_path / "absent")) == 64 * GIB
    write(tmp_path / "garbled", memory_max="lots", memory_current="some")
    assert host_ram.available_ram(str(tmp_path / "garbled")) == 64 * GIB


def proc(tmp_path, text):
    path = tmp_path / "proc_self_cgroup"
    path.write_text(text)
    return str(path)


def test_a_v2_limit_on_a_parent_counts(tmp_path):
    """Slurm, a systemd slice, or a container's init that moved itself into a child: our own cgroup says max,
    the limit sits above it; the tightest level wins."""
    root = tmp_path / "cg"
    write(root, cgroup_controllers="memory cpu\n")
    write(root / "job_1", memory_max=str(8 * GIB), memory_current=str(3 * GIB))
    write(root / "job_1" / "step_0", memory_max=str(6 * GIB), memory_current=str(3 * GIB))
    write(root / "job_1" / "step_0" / "task_0", memory_max="max", memory_current=str(3 * GIB))
    own = proc(tmp_path, "0::/job_1/step_0/task_0\n")
    assert host_ram.container_ram_left(str(root), own) == 3 * GIB           # step_0's 6 GiB less 3 in use
    write(root / "job_1" / "step_0", memory_max="max")
    assert host_ram.container_ram_left(str(root), own) == 5 * GIB           # then the job's 8 GiB
    write(root / "job_1", memory_max="max")
    assert host_ram.container_ram_left(str(root), own) is None              # no limit anywhere: v1 is not tried


def test_a_namespaced_container_whose_init_moved_into_a_child(tmp_path):
    root = tmp_path / "cg"
    write(root, cgroup_controllers="memory\n", memory_max=str(4 * GIB), memory_current=str(GIB))
    write(root / "init", memory_max="max", memory_current=str(GIB))
    assert host_ram.container_ram_left(str(root), proc(tmp_path, "0::/init\n")) == 3 * GIB


def test_v1_nested_memory_cgroup_and_the_hierarchical_limit(tmp_path):
    root = tmp_path / "cg"
    write(root / "memory", memory_limit_in_bytes="9223372036854771712", memory_usage_in_bytes=str(9 * GIB))
    job = root / "memory" / "slurm" / "job_7"
    write(job, memory_limit_in_bytes=str(5 * GIB), memory_usage_in_bytes=str(2 * GIB))
    own = proc(tmp_path, "12:cpu,cpuacct:/slurm/job_7\n4:memory:/slurm/job_7\n0::/\n")
    assert host_ram.container_ram_left(str(root), own) == 3 * GIB
    # a limit only on the parent shows in the child's memory.stat as hierarchical_memory_limit
    write(job, memory_limit_in_bytes="9223372036854771712",
          memory_stat=f"hierarchical_memory_limit {4 * GIB}\ntotal_inactive_file {GIB}\n")
    assert host_ram.container_ram_left(str(root), own) == 3 * GIB           # 4 less (2 used - 1 dropable)
    # without a cgroup namespace the path is the host's: the mount's own folder is ours
    assert host_ram.container_ram_left(str(root), proc(tmp_path, "4:memory:/docker/abc\n")) is None
    write(root / "memory", memory_limit_in_bytes=str(10 * GIB))
    assert host_ram.container_ram_left(str(root), proc(tmp_path, "4:memory:/docker/abc\n")) == GIB


def test_best_of_n_sizes_cpu_chunks_from_the_container_figure(monkeypatch):
    import torch
    from lumina_core.decoding import best_of_n
    monkeypatch.setattr(best_of_n, "available_ram", lambda: 3 * GIB)
    assert best_of_n.free_bytes(torch.device("cpu")) == int(1.5 * GIB)
