"""Resource probes shared by the benchmarks and the soaks (``scripts/soak``, ``scripts/soak-hostile``):
host RSS, a process's threads and descriptors, GPU memory in use, each thread's CPU clock, and the
least-squares slope that tells growth from noise over a long run."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

__all__ = ["rss_mib", "process_sample", "gpu_used_mib", "thread_clocks", "thread_cpu_by_role", "children_sample", "slope_per_minute"]


def rss_mib(pid: int | str = "self") -> float:
    """Resident memory of a process (this one by default), in MiB; NaN when /proc does not say."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def process_sample(pid: int) -> dict[str, float]:
    """A process's resident memory (MiB): in all, anonymous (where a leak shows) and shared (a decoding
    process's frame slots, which step up once as they are first touched); threads and open file
    descriptors, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    sample = {"rss_mib": int(fields["VmRSS"].split()[0]) / 1024, "threads": int(fields["Threads"]), "open_files": len(os.listdir(f"/proc/{pid}/fd"))}
    for field, key in (("RssAnon", "rss_anon_mib"), ("RssShmem", "rss_shmem_mib")):  # Linux 4.5 and later
        if field in fields:
            sample[key] = int(fields[field].split()[0]) / 1024
    return sample


def _cpu_seconds(stat: str) -> float:
    """utime + stime of a /proc/.../stat line, in seconds (the fields after the parenthesised name)."""
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_by_role(pid: int) -> dict[str, float]:
    """CPU seconds so far of another process's threads, summed by role: the thread name up to its first
    ':' (``capture:cam007`` counts as ``capture``), from /proc/PID/task/*/stat (utime + stime). Native
    threads that name themselves (FFmpeg's, CUDA's) keep their own names; two readings' difference over
    the seconds between them says which threads the time went to."""
    roles: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        role = stat[stat.index("(") + 1 : stat.rindex(")")].split(":", 1)[0]
        roles[role] = roles.get(role, 0.0) + _cpu_seconds(stat)
    return roles


def children_sample(pid: int) -> dict[str, float]:
    """The direct child processes of ``pid`` (the demuxers, decoding processes, analytics workers), summed:
    how many, their CPU seconds so far (utime + stime), resident memory (MiB) and threads, from /proc."""
    children: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children.update(int(child) for child in (task / "children").read_text().split())
        except OSError:
            continue
    cpu = rss = 0.0
    count = threads = 0
    for child in children:
        try:
            stat = Path(f"/proc/{child}/stat").read_text()
            rss += rss_mib(child)
            threads += len(os.listdir(f"/proc/{child}/task"))
        except (OSError, ValueError):  # it ended meanwhile
            continue
        cpu += _cpu_seconds(stat)
        count += 1
    return {"children": count, "children_cpu_s": cpu, "children_rss_mib": rss, "children_threads": threads}


def thread_clocks(wanted: Callable[[str], bool]) -> dict[str, int]:
    """The CPU clock id of each thread of this process whose name ``wanted`` accepts (Linux: a thread's
    ident is its pthread_t), for CPU time per thread over a measured window."""
    return {t.name: time.pthread_getcpuclockid(t.ident) for t in threading.enumerate() if wanted(t.name)}


def gpu_used_mib() -> float:
    """Memory in use on GPU 0 as nvidia-smi reports it (the whole card), in MiB; NaN without nvidia-smi."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10)
        return float(out.stdout.split()[0])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return float("nan")


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, in units per minute; NaN under two points."""
    if len(points) < 2:
        return float("nan")
    t, v = np.array(points, dtype=np.float64).T
    return float(np.polyfit(t / 60.0, v, 1)[0])
