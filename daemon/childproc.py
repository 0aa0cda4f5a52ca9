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
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, BinaryIO

from .errors import SourceError
from .redact import mask_text

__all__ = ["EXIT_FINAL", "EXIT_RETRYABLE", "PipeReader", "SourceChild", "child_environment", "child_stdio", "die_with_parent"]

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXIT_RETRYABLE, EXIT_FINAL = 1, 2
"""A source child's exit status on an error a retry may mend, and on one it cannot (0: a clean end)."""


def child_environment() -> dict[str, str]:
    """The environment a helper process starts with: the daemon's, with one thread for the numeric
    libraries (OpenBLAS, OpenMP, MKL). OpenBLAS starts a thread per core when numpy is imported (one more
    thread on a 2-core machine, none with ``OPENBLAS_NUM_THREADS=1``), and a helper does no large linear
    algebra: on a 16-core box a dozen decoding processes and workers would hold 180 idle threads. An
    explicit setting in the daemon's environment is kept."""
    env = dict(os.environ)
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(name, "1")
    return env


def die_with_parent() -> None:
    """PR_SET_PDEATHSIG: the kernel kills this process when the daemon's thread that started it ends
    (a crashed daemon leaves no child behind)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def child_stdio() -> BinaryIO:
    """A source child's start: die with the daemon, end at SIGTERM even inside a C call that waits for the
    network, and its records on a descriptor of their own (returned), with fd 1 made stderr so that a
    library printing to stdout cannot break their framing."""
    die_with_parent()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


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


class SourceChild:
    """The daemon's side of a camera's helper process (``python -m module``): its stdin for JSON lines,
    its stdout read through a :class:`PipeReader`, its stderr in a file (a chatty child never blocks on
    it), and the :class:`SourceError` that names what went wrong with the child's own words. ``shown``:
    the source as logs show it (masked). One owner: the source's reader thread."""

    def __init__(self, module: str, shown: str, what: str, pass_fds: tuple[int, ...] = ()):
        self.shown = shown
        self._errors = tempfile.TemporaryFile()
        try:
            self.process = subprocess.Popen([sys.executable, "-m", module], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=child_environment(),
                                            stderr=self._errors, pass_fds=pass_fds, cwd=_REPO)
        except OSError as exc:  # out of processes or descriptors: the next attempt may succeed
            self._errors.close()
            raise SourceError(f"{shown}: cannot start its {what} process: {exc}", retryable=True) from None
        self.pipe = PipeReader(self.process.stdout.fileno())

    def send(self, message: dict[str, Any], last: bool = False) -> bool:
        """One JSON line to the child (``last``: then its stdin closes); False when it is gone (its stderr
        says why, read by :meth:`failure`)."""
        try:
            self.process.stdin.write(json.dumps(message).encode() + b"\n")
            if last:
                self.process.stdin.close()
            else:
                self.process.stdin.flush()
            return True
        except (OSError, ValueError):
            return False

    def exit_status(self, timeout: float) -> int | None:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def failure(self, what: str, shown: str | None = None) -> SourceError:
        """What went wrong: the child's own error when it exited with one (masked, as one line: library
        errors span lines, and the last alone, "at NvDecoder.cpp:430", says nothing), else ``what``;
        naming ``shown`` (default: this child's source; a process several cameras share names the one
        asking)."""
        shown = self.shown if shown is None else shown
        status = self.process.poll()
        if status is None and self.pipe.eof:
            status = self.exit_status(2.0)
        said = ""
        if status is not None and not self._errors.closed:
            self._errors.seek(0)
            text = " ".join(line.strip() for line in self._errors.read().decode(errors="replace").splitlines() if line.strip())
            said = mask_text(text) if len(text) <= 400 else "..." + mask_text(text[-400:])
        if said:
            return SourceError(f"{shown}: {said}", retryable=status != EXIT_FINAL)
        return SourceError(f"{shown}: {what}", retryable=True)

    def terminate(self) -> None:
        """SIGTERM, if it still runs (a child ends at once: :func:`child_stdio`); :meth:`stop` reaps it."""
        if self.process.poll() is None:
            self.process.terminate()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL; the pipes and the error file closed. Idempotent."""
        process = self.process
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(2.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for pipe in (process.stdin, process.stdout, self._errors):
            if pipe is not None and not pipe.closed:
                pipe.close()
