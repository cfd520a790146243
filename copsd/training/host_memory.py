"""This machine's memory as the process sees it: available and total RAM (/proc/meminfo or
psutil, lowered by a cgroup limit), and glibc's allocator told to give freed memory back."""

from __future__ import annotations

import ctypes
from pathlib import Path


def _read_meminfo() -> dict[str, int]:
    out = {}
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            key, _, rest = line.partition(":")
            out[key] = int(rest.split()[0]) * 1024  # kB
    return out


def _cgroup_limit() -> int | None:
    """A container's memory limit (cgroup v2 or v1), when one is set."""
    for p in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            v = Path(p).read_text(encoding="ascii").strip()
        except OSError:
            continue
        if v.isdigit() and int(v) < 2**60:
            return int(v)
    return None


def host_memory() -> tuple[int, int]:
    """(available, total) bytes of host RAM: psutil if installed, else /proc/meminfo; a cgroup
    limit lowers the total."""
    try:
        import psutil

        vm = psutil.virtual_memory()
        available, total = int(vm.available), int(vm.total)
    except ImportError:
        info = _read_meminfo()
        total = info["MemTotal"]
        available = info.get("MemAvailable", info.get("MemFree", total))
    limit = _cgroup_limit()
    if limit is not None:
        total, available = min(total, limit), min(available, limit)
    return available, total


def return_freed_memory() -> bool:
    """On glibc, give every allocation above 128 KiB its own mapping, returned to the OS when freed.
    By default glibc raises that threshold as large blocks are freed (up to 32 MiB) and keeps freed
    blocks below it in its heap, where the many mid-sized tensors of a CPU training step fragment
    it: one forward + backward of SmolLM2-135M over 4 x 2,200 tokens (checkpointing) reached 9.1 GiB
    resident against 2.1 GiB with this set, equally fast (docs/benchmarks.md). True when set."""
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        return False
