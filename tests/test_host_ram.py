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


def test_best_of_n_sizes_cpu_chunks_from_the_container_figure(monkeypatch):
    import torch
    from lumina_core.decoding import best_of_n
    monkeypatch.setattr(best_of_n, "available_ram", lambda: 3 * GIB)
    assert best_of_n.free_bytes(torch.device("cpu")) == int(1.5 * GIB)
