"""What every decoding process beside the daemon shares (``sources[].decode_process = true``): the wire
format both sides speak, one camera's side of its frame slots, and the loop that takes cameras over the
control socket. Two kinds of process use it: NVDEC's (:mod:`daemon.gpu.nvdecchild`, frames in the daemon's
GPU memory) and OpenCV's (:mod:`daemon.cpudecodechild`, frames in shared host memory); the daemon's side is
:mod:`daemon.decodeproc`. It imports no CUDA and no OpenCV.

The daemon hands a process a camera over its control socket (``AF_UNIX``, ``SCM_RIGHTS``): the camera's
settings as JSON and three descriptors, the write end of the camera's record pipe, the read end of its
command pipe, and its slot bytes (a ``memfd``; for OpenCV the frames follow them in the same file). A
camera ends when the daemon closes its command pipe (or at its own error, sent as an ``ERROR`` record);
its thread then lets go of the frame memory and closes the record pipe, which tells the daemon that the
memory may be freed. The process ends when the control socket closes, or with the daemon
(``PR_SET_PDEATHSIG``).

Wire format, per camera, child to daemon (its record pipe): ``MAGIC``, a 4-byte length and a JSON header
(fps, frame count, width and height when known), then 16-byte records ``<BxHIII``: kind, slot, frame
index, width, height. Kinds: ``SIZE`` (the first frame's size: the child then waits for the pool),
``FRAME``, ``END`` (a file's end, or a stream its camera ended), ``ERROR`` (status in the slot field, the
text's length in the index field, the text after it). Daemon to child (its command pipe): JSON lines
``{"pool": ...}``, ``{"rewind": true}``; closing it ends the camera.
"""

from __future__ import annotations

import json
import mmap
import os
import select
import socket
import struct
import threading
import time
from typing import Any, BinaryIO, Callable

from .childproc import EXIT_FINAL, EXIT_RETRYABLE
from .redact import mask_text

__all__ = ["CAMERAS_PER_PROCESS", "CameraFailure", "END", "ERROR", "EXIT_FINAL", "EXIT_RETRYABLE", "FRAME", "MAGIC", "MAX_HEADER",
           "RECORD", "SIZE", "SlotHandover", "Stopped", "serve_cameras"]

CAMERAS_PER_PROCESS = 8
"""Cameras one decoding process serves. Each NVDEC process is a CUDA context, and a GPU has only so many:
on the H200, one process per camera failed past about 76 of them (docs/benchmarks.md). Eight share one
GIL for their decode calls and copies, about 240 frames a second at 1080p30."""

MAGIC = b"TSNV"
RECORD = struct.Struct("<BxHIII")  # kind, slot, index, width, height
SIZE, FRAME, END, ERROR = 1, 2, 3, 4  # ERROR: slot = exit status (1 retry may help, 2 not), index = length of the text after it
MAX_HEADER = 1 << 16
SLOT_POLL_MAX_S = 0.01


class CameraFailure(Exception):
    """A camera's error: its line (sent masked) and whether a retry may help (its status)."""

    def __init__(self, line: str, status: int):
        super().__init__(line)
        self.status = status


class Stopped(Exception):
    """The daemon closed the camera's command pipe: end quietly."""


class SlotHandover:
    """One camera's side in a decoding process: the slots it may fill (the shared bytes), the records it
    writes and the commands it reads. Subclasses own the frame memory and fill a slot. One thread: the
    camera's."""

    def __init__(self, settings: dict[str, Any], records: int, commands: int, flags_fd: int):
        """``records``, ``commands``, ``flags_fd``: the camera's descriptors, owned from here on."""
        self._out: BinaryIO = os.fdopen(records, "wb")
        self._commands: BinaryIO = os.fdopen(commands, "rb")
        self._hang_up = select.poll()  # the daemon closed the command pipe: the camera is gone
        self._hang_up.register(commands, select.POLLIN | select.POLLHUP)
        self._slots = int(settings["slots"])
        self._flags_fd = flags_fd
        self._flags = mmap.mmap(flags_fd, self._slots)
        self._size = (0, 0)
        self._index = 0

    def header(self, fps: float | None, width: int, height: int, frames: int = 0) -> None:
        body = json.dumps({"fps": fps, "width": width, "height": height, "frames": frames}).encode()
        self._out.write(MAGIC + struct.pack("<I", len(body)) + body)
        self._out.flush()

    def announce(self, slot: int, width: int, height: int) -> None:
        """The frame in ``slot`` is complete: it is the daemon's until it clears the slot's byte."""
        self._flags[slot] = 1
        self._out.write(RECORD.pack(FRAME, slot, self._index, width, height))
        self._out.flush()
        self._index += 1

    def error(self, line: str, status: int) -> None:
        text = mask_text(line).encode()[:4000]
        self._out.write(RECORD.pack(ERROR, status, len(text), 0, 0) + text)
        self._out.flush()

    def stream_ended(self) -> None:
        """A network camera ended its stream (its demuxer's clean end)."""
        self._out.write(RECORD.pack(END, 0, self._index, *self._size))
        self._out.flush()

    def end(self) -> bool:
        """A file's end: say so, then wait for the daemon. True: rewind; False: it closed the pipe."""
        self._out.write(RECORD.pack(END, 0, self._index, *self._size))
        self._out.flush()
        try:
            message = self.next_command()
        except Stopped:
            return False
        if message.get("rewind"):
            self._index = 0
            return True
        return False

    def ask_for_pool(self, width: int, height: int) -> dict[str, Any]:
        """The first frame's size to the daemon, and its answer: the pool it made for it."""
        self._out.write(RECORD.pack(SIZE, 0, 0, width, height))
        self._out.flush()
        message = self.next_command()
        if "pool" not in message:
            raise CameraFailure("the daemon sent no frame pool", EXIT_RETRYABLE)
        self._size = (width, height)
        return message

    def free_slot(self) -> int:
        """A slot the daemon gave back; waits (polling the shared bytes) while all are out. A file runs
        ahead of its paced reader until the pool is full and then waits here most of the time, so the
        poll slows down to ``SLOT_POLL_MAX_S``: 2000 polls a second in each of 80 processes cost 8 cores
        on the H200. A camera's frames arrive at its rate and rarely find the pool full."""
        pause = 0.0005
        while True:
            slot = self._flags.find(b"\x00")
            if 0 <= slot < self._slots:
                return slot
            if self._hang_up.poll(0):  # a command now is a hang-up or a protocol error: either way, stop
                raise Stopped()
            time.sleep(pause)
            pause = min(pause * 2, SLOT_POLL_MAX_S)

    def next_command(self) -> dict[str, Any]:
        line = self._commands.readline()
        if not line:
            raise Stopped()
        return json.loads(line)

    def close(self) -> None:
        """The pipes, last: the record pipe's end tells the daemon it may free the frame memory (a
        subclass lets go of that memory first)."""
        self._flags.close()
        if self._flags_fd >= 0:
            os.close(self._flags_fd)
            self._flags_fd = -1
        for pipe in (self._out, self._commands):
            try:
                pipe.close()
            except OSError:
                pass


def _report(handover: SlotHandover | None, records: int, line: str, status: int) -> None:
    """A camera's error to its reader: through its handover, or straight onto its record pipe when it
    failed before it had one."""
    try:
        if handover is not None:
            handover.error(line, status)
        else:
            text = mask_text(line).encode()[:4000]
            os.write(records, RECORD.pack(ERROR, status, len(text), 0, 0) + text)
    except OSError:  # the daemon closed the camera meanwhile
        pass


def serve_camera(settings: dict[str, Any], fds: list[int], handover_of: Callable[[dict[str, Any], int, int, int], SlotHandover],
                 decode: Callable[[dict[str, Any], Any], None]) -> None:
    """One camera, start to end, on its own thread: its handover made by ``handover_of``, then
    ``decode(settings, handover)`` until the camera ends or fails. Every end but the daemon's own hang-up
    is sent as a record (``END`` from ``decode``, or ``ERROR`` with the reason), so that no camera stops
    without its reader being told why."""
    records, commands, flags_fd = fds
    handover = None
    try:
        handover = handover_of(settings, records, commands, flags_fd)  # it owns the descriptors once made
        decode(settings, handover)
    except (Stopped, BrokenPipeError):  # the daemon let the camera go: it closed the camera's pipes
        pass
    except CameraFailure as exc:
        _report(handover, records, str(exc), exc.status)
    except Exception as exc:  # the decoder's errors outside its own calls: this camera ends, the others go on
        _report(handover, records, f"{type(exc).__name__}: {exc}", EXIT_RETRYABLE)
    finally:
        if handover is not None:
            handover.close()
        else:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass


def serve_cameras(control: socket.socket, start: Callable[[dict[str, Any], list[int]], None]) -> int:
    """Cameras over the control socket until it closes: each on a thread of its own, ``start(settings,
    fds)``. Returns the process's exit status (0: the daemon closed the socket)."""
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, 1 << 16, 3)
        except OSError:
            return 0
        if not message:
            return 0  # the daemon closed the control socket
        if len(fds) != 3:
            for fd in fds:
                os.close(fd)
            continue
        threading.Thread(target=start, args=(json.loads(message), fds), name="camera", daemon=True).start()
