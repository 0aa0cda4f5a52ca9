"""ZeroMQ sends made without giving up Python's GIL (``ctypes.PyDLL`` on the libzmq that pyzmq loaded).

Why: pyzmq releases the GIL around every ``zmq_msg_send`` and takes it back afterwards. A non-blocking send
returns in a microsecond, but getting the GIL back waits until whoever took it lets go, and with a reader
thread per camera someone always has. The publisher sends two parts per result, so with a hundred cameras
it queues behind the readers twice per result: the 96-camera soak that received 1593 of 2880 results/s
had its publisher starved that way (docs/benchmarks.md). Measured on the 2-core development machine, a
thread sending 2-part messages on a PUB socket beside threads that release and retake the GIL (what
readers do in their native calls): 0 / 8 / 48 such threads, pyzmq 371 k / 96 k / 46 k messages/s, these
sends 525 k / 261 k / 59 k. The sends are ``ZMQ_DONTWAIT`` (they never block), so keeping the GIL costs
the other threads nothing but the copy into the message.

It must be the very library pyzmq uses (a socket pointer means nothing to another copy of libzmq), so it
is found among the libraries this process has loaded, not by name on the loader's path. Where that fails
(not Linux, a libzmq linked statically into pyzmq) :func:`sender_for` returns None and the publisher
keeps pyzmq's sends.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import sys
from pathlib import Path
from typing import Any

import zmq

__all__ = ["LOADER", "GilHoldingSender", "sender_for", "unavailable_reason", "DONTWAIT", "SNDMORE"]

log = logging.getLogger(__name__)

LOADER = ctypes.PyDLL  # functions called with the GIL held (ctypes.CDLL's release it)
DONTWAIT, SNDMORE = zmq.DONTWAIT, zmq.SNDMORE  # libzmq's own values (1, 2), as pyzmq defines them


def _loaded_libzmq() -> str:
    """The path of the libzmq pyzmq uses, among the libraries this process has mapped: the one bundled in
    pyzmq's wheel (``pyzmq.libs/``) when there is one, else the only libzmq mapped. Two copies and neither
    pyzmq's own: refused, since a socket of one given to the other would crash the process."""
    if not sys.platform.startswith("linux"):
        raise OSError("finding the loaded libzmq needs /proc/self/maps (Linux)")
    mapped = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and "/libzmq" in fields[5] and fields[5] not in mapped:
            mapped.append(fields[5])
    bundled = str(Path(zmq.__file__).resolve().parent.parent / "pyzmq.libs") + "/"
    ours = [path for path in mapped if path.startswith(bundled)]
    if len(ours) == 1:
        return ours[0]
    if len(mapped) == 1:
        return mapped[0]
    if not mapped:
        raise OSError("pyzmq's libzmq is not a shared library this process has loaded")
    raise OSError(f"several libzmq copies are loaded ({', '.join(mapped)}) and none is pyzmq's own")


@functools.cache
def _bound() -> tuple[tuple[Any, Any] | None, str | None]:
    """``(zmq_send, zmq_errno)`` bound once, or None and why not. (Two threads asking first may both bind:
    the same library, the same functions.)"""
    try:
        library = LOADER(_loaded_libzmq())
        send, error = library.zmq_send, library.zmq_errno
    except (OSError, AttributeError) as exc:
        return None, str(exc)
    send.argtypes, send.restype = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    error.argtypes, error.restype = [], ctypes.c_int
    return (send, error), None


def unavailable_reason() -> str | None:
    """Why the GIL-holding sends cannot be used here, or None."""
    return _bound()[1]


class GilHoldingSender:
    """Sends on one pyzmq socket through libzmq directly. Like the socket, for its owner thread only."""

    def __init__(self, socket: zmq.Socket, functions: tuple[Any, Any]):
        self._socket = socket  # kept alive: its handle is only valid while pyzmq holds it open
        self._handle = socket.underlying
        self._send, self._errno = functions

    def send(self, data: bytes, flags: int) -> bool:
        """One part (``flags``: ``DONTWAIT``, with ``SNDMORE`` when more parts follow). False when ZeroMQ
        would block (the message is not queued); another failure raises ``zmq.ZMQError``."""
        if self._send(self._handle, data, len(data), flags) >= 0:
            return True
        code = self._errno()
        if code == errno.EAGAIN:
            return False
        raise zmq.ZMQError(code)


def sender_for(socket: zmq.Socket) -> GilHoldingSender | None:
    """A GIL-holding sender for ``socket``, or None where libzmq cannot be bound that way (logged once)."""
    functions, reason = _bound()
    if functions is None:
        log.info("ZeroMQ sends release the GIL (pyzmq's): %s", reason)
        return None
    return GilHoldingSender(socket, functions)
