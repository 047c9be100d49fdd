"""System memory left for us: the smaller of what the machine has free and what our container may still use.

psutil and sysconf see the whole machine; inside a container (Docker, a cloud notebook, systemd's MemoryMax) the
kernel kills the process long before that figure is reached. The cgroup files say the container's limit and
use; page cache the kernel can drop (inactive files) is not counted as used, as `docker stats` does.
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


def container_ram_left(cgroup_root: str = CGROUP_ROOT) -> int | None:
    """Bytes the container may still use, or None without a limit (or where the files cannot be read)."""
    for folder, limit_file, usage_file, inactive_key in _cgroup_folders(cgroup_root):
        limit = _read_int(os.path.join(folder, limit_file))
        usage = _read_int(os.path.join(folder, usage_file))
        if limit is None or usage is None:
            continue
        if limit >= NO_LIMIT:
            return None
        inactive = _stat(os.path.join(folder, "memory.stat")).get(inactive_key, 0)
        return max(0, limit - max(0, usage - inactive))
    return None


def _cgroup_folders(root: str):
    """(folder, limit file, usage file, memory.stat key) to try: cgroup v2 first, then v1."""
    own = _own_v2_path()
    v2 = [os.path.join(root, own.lstrip("/"))] if own not in (None, "/") else []
    for folder in v2 + [root]:
        yield folder, "memory.max", "memory.current", "inactive_file"
    yield os.path.join(root, "memory"), "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"


def _own_v2_path() -> str | None:
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        pass
    return None


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
