"""System memory left for us: the smaller of what the machine has free and what our container may still use.

psutil and sysconf see the whole machine; inside a container (Docker, a cloud notebook, systemd's MemoryMax) the
kernel kills the process long before that figure is reached. The cgroup files say the container's limit and
use (v2, or v1's memory controller; our cgroup and its parents); page cache the kernel can drop (inactive
files) is not counted as used, as `docker stats` does.
"""
from __future__ import annotations

import os

CGROUP_ROOT = "/sys/fs/cgroup"
NO_LIMIT = 2 ** 60  # cgroup v1 writes "no limit" as a huge page-rounded number


def available_ram(cgroup_root: str = CGROUP_ROOT) -> int:
    """Free system memory in bytes, capped by the container's room when there is a memory limit."""
    free = machine_ram_free()
    room = container_ram_left(cgroup_root)
    return free if room is None else min(free, room)


def machine_ram_free() -> int:
    """psutil where installed (as ComfyUI counts); sysconf on Linux; else 4 GiB."""
    try:
        import psutil
        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # Windows has no sysconf, macOS lacks SC_AVPHYS_PAGES
        return 4 * 2 ** 30


def container_ram_left(cgroup_root: str = CGROUP_ROOT, proc_cgroup: str = "/proc/self/cgroup") -> int | None:
    """Bytes the container may still use, or None without a limit (or where the files cannot be read). The
    tightest limit over our cgroup and its parents counts: a limit often sits on a parent (a Slurm job, a
    systemd slice, a container whose init moved itself into a child cgroup)."""
    v2_path, v1_path = _own_paths(proc_cgroup)
    rooms = [room for folder in _up_from(cgroup_root, v2_path)
             if (room := _room(folder, "memory.max", "memory.current", "inactive_file")) is not None]
    if rooms or os.path.exists(os.path.join(cgroup_root, "cgroup.controllers")):  # cgroup v2
        return min(rooms) if rooms else None
    v1 = os.path.join(cgroup_root, "memory")
    for folder in _up_from(v1, v1_path):
        room = _room(folder, "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
        stat = _stat(os.path.join(folder, "memory.stat"))
        if stat.get("hierarchical_memory_limit", NO_LIMIT) < NO_LIMIT:  # the limit in force, parents included
            usage = _read_int(os.path.join(folder, "memory.usage_in_bytes"))
            if usage is not None:
                hierarchical = max(0, stat["hierarchical_memory_limit"] - max(0, usage - stat.get("total_inactive_file", 0)))
                room = hierarchical if room is None else min(room, hierarchical)
        if room is not None:
            rooms.append(room)
    return min(rooms) if rooms else None


def _room(folder: str, limit_file: str, usage_file: str, inactive_key: str) -> int | None:
    """What a cgroup folder with a limit leaves (None: no such files, or no limit)."""
    limit = _read_int(os.path.join(folder, limit_file))
    usage = _read_int(os.path.join(folder, usage_file))
    if limit is None or usage is None or limit >= NO_LIMIT:
        return None
    inactive = _stat(os.path.join(folder, "memory.stat")).get(inactive_key, 0)
    return max(0, limit - max(0, usage - inactive))


def _up_from(base: str, own: str | None) -> list[str]:
    """Our cgroup's folder under `base` and every parent up to `base` itself (only those that exist: without
    a cgroup namespace the path is the host's, and `base` is already ours)."""
    parts = [p for p in (own or "").split("/") if p]
    folders = [os.path.join(base, *parts[:i]) for i in range(len(parts), 0, -1)]
    return [f for f in folders if os.path.isdir(f)] + [base]


def _own_paths(proc_cgroup: str) -> tuple[str | None, str | None]:
    """(our cgroup v2 path, our v1 memory controller's path) from /proc/self/cgroup."""
    v2 = v1 = None
    try:
        with open(proc_cgroup) as f:
            for line in f:
                _, controllers, path = line.strip().split(":", 2)
                if controllers == "":
                    v2 = path
                elif "memory" in controllers.split(","):
                    v1 = path
    except (OSError, ValueError):
        pass
    return v2, v1


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    if text == "max":  # cgroup v2: no limit
        return NO_LIMIT
    try:
        return int(text)
    except ValueError:
        return None


def _stat(path: str) -> dict[str, int]:
    out = {}
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(" ")
                if value.strip().isdigit():
                    out[key] = int(value)
    except OSError:
        pass
    return out
