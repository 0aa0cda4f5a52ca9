"""Resource probes shared by the benchmarks and ``scripts/soak``: host RSS, GPU memory in use, and the
least-squares slope that tells growth from noise over a long run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

__all__ = ["rss_mib", "gpu_used_mib", "slope_per_minute"]


def rss_mib(pid: int | str = "self") -> float:
    """Resident memory of a process (this one by default), in MiB; NaN when /proc does not say."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


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
