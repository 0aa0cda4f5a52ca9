"""The GIL switch interval the daemon runs with (``daemon.switch_interval_ms``).

Process-wide, so the daemon and the benchmarks that run its pipeline set it, never library code. Every
reader, the batcher, the completer and the publisher share one GIL; a thread that wants it waits up to
this long before the holder is asked to let go. Python's 5 ms default let a hundred NVDEC readers keep
the completer waiting: 1 ms took 96 cameras on the H200 from 10.3 % dropped (p95 372 ms) to 1.1 %
(p95 82 ms), back to back on one machine (docs/benchmarks.md). Longer intervals were worse still.
"""

from __future__ import annotations

import sys

__all__ = ["apply_switch_interval", "default_switch_interval_ms"]


def default_switch_interval_ms() -> float:
    from .config import DaemonConfig

    return DaemonConfig().switch_interval_ms


def apply_switch_interval(milliseconds: float | None = None) -> None:
    """Set the interval (``None``: the daemon's default, for the benchmarks)."""
    sys.setswitchinterval((default_switch_interval_ms() if milliseconds is None else milliseconds) / 1000)
