"""What the daemon's helper processes share: dying with the daemon, and reading their pipes without
holding the GIL while they work.

Three kinds of child use this: the network demuxer (:mod:`daemon.demux`), the analytics workers
(:mod:`daemon.analytics.workers`) and the NVDEC decoding processes (:mod:`daemon.gpu.nvdecproc`). Each is
``python -m <module>``, not ``multiprocessing``: no re-import of the daemon's ``__main__``, settings on
stdin (never on the command line, where ``ps`` shows them), stderr to a file so a chatty child never
blocks on it, and the kernel kills it when the daemon goes.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import time

__all__ = ["PipeReader", "die_with_parent"]


def die_with_parent() -> None:
    """PR_SET_PDEATHSIG: the kernel kills this process when the daemon's thread that started it ends
    (a crashed daemon leaves no child behind)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class PipeReader:
    """Exact-size reads from a child's pipe with a deadline: ``poll`` and ``os.read`` both release the GIL
    while the child works, and one read takes whatever is there (many small records per system call).
    One owner: the thread that reads this child's answers."""

    def __init__(self, fd: int):
        self._fd = fd
        self._poll = select.poll()  # not select(): descriptors above 1023 are normal here (daemon/limits.py)
        self._poll.register(fd, select.POLLIN)
        self._buffer = bytearray()
        self.eof = False  # the child closed its end (exited); what came before it is still read

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def take(self, count: int, deadline: float) -> bytes | None:
        """``count`` bytes, or None at the deadline or the end of the pipe (what came stays buffered). It
        always looks once, even past the deadline: a reader that was busy elsewhere until then is late
        itself, and the answer may be waiting."""
        while len(self._buffer) < count:
            if self.eof:
                return None
            remaining = max(0.0, deadline - time.monotonic())
            if not self._poll.poll(remaining * 1000):
                return None
            chunk = os.read(self._fd, 1 << 20)
            if not chunk:
                self.eof = True
                continue
            self._buffer += chunk
        taken = bytes(self._buffer[:count])
        del self._buffer[:count]
        return taken
