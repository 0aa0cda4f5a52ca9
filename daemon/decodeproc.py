"""The daemon's side of its decoding processes (``sources[].decode_process = true``): a camera is decoded in
a process beside the daemon, and the daemon's reader only takes a 16-byte record per frame.

Why: every reader thread of the daemon shares one GIL with the batcher, the completer and the publisher.
With 96 NVDEC cameras on the H200 the readers used 1.0-1.4 cores under that GIL (decode calls, frame
copies, event records, packet reads), and they were the limit once tracking had moved out; with 45
OpenCV cameras the batcher took 1 ms per frame gathering them, waiting for the GIL behind 45 readers
(docs/benchmarks.md). A decoding process has a GIL of its own and serves up to
:data:`daemon.decodechild.CAMERAS_PER_PROCESS` cameras, one thread each.

How: the daemon makes a camera's frame pool when the child reports the first frame's size and tells the
child where it is; the memory stays the daemon's, freed only after the child let go of it (the camera's
record pipe closed) and the last frame came back. Which slots are free is a byte per slot in shared memory
(a ``memfd``): the child sets it when it fills the slot, the daemon clears it when the frame's batch has
completed or the queue dropped it — a byte written under the GIL, no system call. A full pool is
backpressure: the child waits for a slot. A stall (no frame within the read timeout) or the camera's
error reads as "no frame": the reader reconnects with its backoff, as for the other producers, and the
error (URL masked) is logged. The kinds: :class:`daemon.gpu.nvdecproc.NvdecProcessProducer` (NV12 in the
daemon's GPU memory, shared through CUDA IPC) and :class:`daemon.cpudecodeproc.OpenCvProcessProducer`
(BGR in shared host memory). The wire format is :mod:`daemon.decodechild`'s.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import socket
import struct
import threading
import time
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from .capture import file_pts_ms
from .childproc import EXIT_FINAL, PipeReader, SourceChild
from .decodechild import CAMERAS_PER_PROCESS, END, ERROR, FRAME, MAGIC, MAX_HEADER, RECORD, SIZE
from .errors import SourceError
from .redact import mask_url

__all__ = ["ProcessProducer", "SlotAccounts", "hosts"]

log = logging.getLogger("trtstream.capture")

START_ALLOWANCE_S = 20.0
"""Beyond the source's own timeouts, how long the child may take to start (Python, PyNvVideoCodec, a CUDA
context): many cameras starting at once on a busy machine take seconds each."""

STARTING_AT_ONCE = 4
"""Cameras starting in the decoding processes at the same time (until their first frame, or their
failure): 96 cameras starting together on the H200 made 96 CUDA contexts and NVDEC decoders at once, and
most of them failed or missed their deadline; started a few at a time, each takes well under a second."""

STOP_CHECK_S = 0.1
"""How often a reader waiting for its next frame looks whether it was stopped."""

RELEASE_WAIT_S = 120.0
"""How long a closed camera's memory waits for its decoding thread to let go (a thread in a network read
ends within its read timeout). Past it the memory is left allocated, logged: freeing memory a child may
still write into would be worse than keeping it."""

_start_turns = threading.BoundedSemaphore(STARTING_AT_ONCE)  # the daemon's: shared by every camera's reader


class _Host:
    """One decoding process and its control socket; ``cameras``: how many it serves now."""

    def __init__(self, module: str, what: str, gpu: int):
        self.module, self.gpu = module, gpu
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.child = SourceChild(module, what, "decoding", pass_fds=(theirs.fileno(),))
            self.child.send({"control_fd": theirs.fileno(), "gpu": gpu}, last=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.control = ours
        self.cameras = 0

    @property
    def alive(self) -> bool:
        return self.child.process.poll() is None

    def stop(self) -> None:
        """Tell the process to end now (its control socket closes, SIGTERM); :meth:`reap` waits for it."""
        self.control.close()
        self.child.terminate()

    def reap(self) -> None:
        self.child.stop()


class _Hosts:
    """The daemon's decoding processes: a camera goes to the one with the fewest cameras that has room, or a
    new one; a process whose last camera left is stopped (its CUDA context freed). Shared by the readers
    (one lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hosts: list[_Host] = []
        self._started = 0
        self._lost = 0
        # Processes are started from one thread that lives as long as the daemon: the kernel kills a child
        # when the *thread* that started it ends (PR_SET_PDEATHSIG), and a camera's reader thread, which
        # would otherwise start it, ends with its camera while the process serves others.
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode-spawner")

    def take(self, module: str, what: str, gpu: int) -> _Host:
        """A process of ``module`` (``what``: its name in errors) for one more camera on ``gpu``."""
        with self._lock:
            for host in [h for h in self._hosts if not h.alive]:  # died: its cameras reconnect, each to another
                self._hosts.remove(host)
                self._lost += 1
                self._stop(host)
            room = [h for h in self._hosts if h.module == module and h.gpu == gpu and h.cameras < CAMERAS_PER_PROCESS]
            host = min(room, key=lambda h: h.cameras) if room else None
            if host is None:
                host = self._spawner.submit(_Host, module, what, gpu).result()
                self._hosts.append(host)
                self._started += 1
            host.cameras += 1
            return host

    def give_back(self, host: _Host) -> None:
        with self._lock:
            host.cameras -= 1
            if host.cameras > 0:
                return
            if host in self._hosts:
                self._hosts.remove(host)
                if not host.alive:
                    self._lost += 1
        self._stop(host)

    def _stop(self, host: _Host) -> None:
        """End ``host`` without making the camera that left last wait for it: a process with a CUDA context
        and NVDEC decoders takes a while to exit (at a daemon's stop, a dozen of them one after another took
        longer than the readers' 2 s), so it is reaped on the spawner's thread; :meth:`wait_stopped` waits
        (the daemon's stop: ``service.DECODING_STOP_S``)."""
        host.stop()
        self._spawner.submit(host.reap)

    def wait_stopped(self, timeout: float) -> bool:
        """True once every process stopped so far has been reaped (the spawner's queue is in order), False
        after ``timeout`` seconds; at the daemon's stop, after its readers, so that it ends after its children."""
        done, _ = futures.wait([self._spawner.submit(lambda: None)], timeout)
        return bool(done)

    @property
    def processes(self) -> int:
        with self._lock:
            return len(self._hosts)

    def status(self) -> dict[str, int]:
        """The heartbeat's ``decoding_processes`` (empty while none ever started): how many run, the cameras
        they serve, how many were started, and how many died (their cameras reconnected to another)."""
        with self._lock:
            if not self._started:
                return {}
            return {"processes": len(self._hosts), "cameras": sum(h.cameras for h in self._hosts), "started": self._started,
                    "lost": self._lost}


hosts = _Hosts()
"""The decoding processes of this daemon."""


class SlotAccounts:
    """What every frame pool of a decoding process keeps: the free/busy byte per slot (shared with the
    child) and how many frames are still out (queued or in a batch). Closing is two steps: :meth:`detach`
    when the camera closes (no byte is written after it: its shared memory goes), :meth:`let_go` once the
    decoding thread no longer writes into the memory; :meth:`_free` runs after both and the last frame's
    return, never under a batch that reads it. Subclasses own the memory and free it there."""

    def __init__(self, flags: mmap.mmap):
        self._flags = flags
        self._lock = threading.Lock()
        self._out = 0
        self._detached = False
        self._let_go = False

    def _taken(self) -> None:
        with self._lock:
            self._out += 1

    def _returned(self, slot: int) -> None:
        with self._lock:
            self._out -= 1
            if not self._detached:
                self._flags[slot] = 0  # the child may fill it again
            done = self._detached and self._let_go and self._out == 0
        if done:
            self._free()

    def detach(self) -> None:
        with self._lock:
            self._detached = True

    def let_go(self) -> None:
        with self._lock:
            self._detached = self._let_go = True
            done = self._out == 0
        if done:
            self._free()

    def _free(self) -> None:
        raise NotImplementedError


class FramePool(Protocol):
    """One camera's frames on the daemon's side, as a :class:`ProcessProducer` uses them."""

    width: int
    height: int

    def image(self, slot: int) -> Any:
        """The frame in ``slot`` as the pipeline takes it; released once its batch completed."""

    def detach(self) -> None:
        """The camera closed: no slot byte is written after this."""

    def let_go(self) -> None:
        """The child no longer writes into the memory: free it once the last frame is back."""


def _free_when_let_go(pool: FramePool, records: Any, pipe: PipeReader, shown: str) -> None:
    """A closed camera's memory: freed once its decoding thread closed its end of the record pipe (it
    let go of the memory), and its frames still in the pipeline came back (:meth:`FramePool.let_go`)."""
    deadline = time.monotonic() + RELEASE_WAIT_S
    while not pipe.eof and time.monotonic() < deadline:
        pipe.take(1 << 16, deadline)  # records of a camera that is gone: read and forgotten
    records.close()
    if pipe.eof:
        pool.let_go()
    else:
        log.warning("%s: its decoding thread did not let go of its frame memory within %g s; that memory stays allocated",
                    shown, RELEASE_WAIT_S)


class ProcessProducer:
    """A file or network stream decoded in a decoding process (module docstring): the reader's
    :class:`daemon.capture.FrameProducer`. Subclasses name the child (``CHILD``, ``CHILD_WHAT``) and make
    the frame pool (:meth:`_start_pool`). One owner, the source's reader thread; frames it hands out are
    released from any thread."""

    CHILD = ""
    CHILD_WHAT = ""

    def __init__(self, uri: str, *, stream: bool, slots: int, open_timeout_s: float, read_timeout_s: float,
                 settings: dict[str, Any], gpu: int = 0, stop: threading.Event | None = None):
        """``settings``: what the child needs beyond the URL, the slots and the timeouts (its decoder's
        options). ``stop``: the reader's; set while this waits for its turn to start (``STARTING_AT_ONCE``),
        it gives up (SourceError, retryable: the reader is stopping anyway)."""
        self._shown = mask_url(uri)
        self._holds_start_turn = False
        while not _start_turns.acquire(timeout=0.1):
            if stop is not None and stop.is_set():
                raise SourceError(f"{self._shown}: stopped while waiting to start its decoding process", retryable=True)
        self._holds_start_turn = True
        self._stop = stop or threading.Event()
        self._stream = stream
        self._slots = slots
        self._read_timeout_s = read_timeout_s
        self._pool: FramePool | None = None
        self._grabbed: tuple[int, int] | None = None  # (slot, index) of the frame grab() took
        self._host: _Host | None = None
        self._commands: Any = None
        self._pipe: PipeReader | None = None
        self._flags_fd = -1
        try:
            self._flags_fd = os.memfd_create("trtstream-decode-slots", os.MFD_CLOEXEC)
            os.ftruncate(self._flags_fd, slots)
            self._flags = mmap.mmap(self._flags_fd, slots)
            self._host = hosts.take(self.CHILD, self.CHILD_WHAT, gpu)
            records_r, records_w = os.pipe2(os.O_CLOEXEC)
            commands_r, commands_w = os.pipe2(os.O_CLOEXEC)
            self._records = os.fdopen(records_r, "rb", buffering=0)
            self._commands = os.fdopen(commands_w, "wb")
            self._pipe = PipeReader(records_r)
            settings = {**settings, "url": uri, "stream": stream, "slots": slots, "gpu": gpu, "open_timeout_s": open_timeout_s,
                        "read_timeout_s": read_timeout_s}
            try:
                socket.send_fds(self._host.control, [json.dumps(settings).encode()], [records_w, commands_r, self._flags_fd])
            except OSError:
                pass  # it died: the header's failure below says why
            finally:
                os.close(records_w)
                os.close(commands_r)
            deadline = time.monotonic() + open_timeout_s + read_timeout_s + START_ALLOWANCE_S
            head = self._take(len(MAGIC) + 4, deadline)
            if head is not None and head[:1] == bytes([ERROR]):
                raise self._error(head)
            if head is None or head[:4] != MAGIC:
                raise self._failure("its decoding process sent no stream header")
            (length,) = struct.unpack("<I", head[4:])
            body = self._take(length, deadline) if length <= MAX_HEADER else None
            try:
                fields = json.loads(body) if body is not None else None
                self.fps = float(fields["fps"]) if fields and fields.get("fps") else None
                self._size = (int(fields["width"]), int(fields["height"]))
            except (ValueError, KeyError, TypeError):
                fields = None
            if fields is None:
                raise self._failure("its decoding process sent a broken stream header")
            self._first_deadline: float | None = deadline  # the first frame may need the decoder's start as well
        except BaseException:
            self.close()
            raise

    # -- FrameProducer --------------------------------------------------------------------------------------
    def grab(self) -> bool:
        self._drop_grabbed()
        while True:
            wait = self._read_timeout_s
            if self._first_deadline is not None:
                wait = max(wait, self._first_deadline - time.monotonic())
            record = self._take(RECORD.size, time.monotonic() + wait)
            if record is None:
                if not self._stop.is_set():
                    log.warning("%s", self._failure(f"no frame within {wait:g} s" if not self._pipe.eof else "its decoding process ended"))
                return False
            kind, slot, index, width, height = RECORD.unpack(record)
            if kind == FRAME and self._pool is not None and slot < self._slots:
                self._first_deadline = None
                self._started()
                self._grabbed = (slot, index)
                return True
            if kind == SIZE and self._pool is None:
                if not self._start_pool(width, height):
                    return False
                continue
            if kind == END:  # a file's end, or a stream its camera ended: the reader loops or reconnects
                if self._stream:
                    log.info("%s: the camera ended its stream", self._shown)
                return False
            if kind == ERROR:
                log.warning("%s", self._error(record))
                return False
            log.warning("%s: the decoding process sent a broken record (kind %d); reconnecting", self._shown, kind)
            return False

    def retrieve(self):
        grabbed, self._grabbed = self._grabbed, None
        if grabbed is None or self._pool is None:
            return None, None
        slot, index = grabbed
        pts = file_pts_ms(index * 1000.0 / self.fps) if not self._stream and self.fps else None
        return self._pool.image(slot), pts

    @property
    def width(self) -> int:
        return self._pool.width if self._pool is not None else self._size[0]

    @property
    def height(self) -> int:
        return self._pool.height if self._pool is not None else self._size[1]

    def rewind(self) -> bool:
        """Files: the child waits at the end for this; False for streams or a child that is gone."""
        return not self._stream and self._command({"rewind": True})

    def close(self) -> None:
        """End the camera's thread in its decoding process (its command pipe closes), free its memory once
        that thread let go of it and no frame holds it, and give the process back (stopped with its last
        camera); idempotent."""
        self._started()
        self._drop_grabbed()
        if self._commands is not None and not self._commands.closed:
            try:
                self._commands.close()  # the camera's thread in the decoding process ends
            except OSError:
                pass
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.detach()  # its slot bytes are closed below
        if self._pipe is not None and not self._records.closed:
            records, pipe = self._records, self._pipe
            if pool is None:
                records.close()
            else:  # free the memory only once the child let go of it: its end of the record pipe closed
                threading.Thread(target=_free_when_let_go, args=(pool, records, pipe, self._shown), name="decode-release", daemon=True).start()
        if self._host is not None:
            host, self._host = self._host, None
            hosts.give_back(host)
        self._close_flags()

    # -- internals ------------------------------------------------------------------------------------------
    def _started(self) -> None:
        """Its first frame came (or it failed, or closed): the next camera's child may start."""
        if self._holds_start_turn:
            self._holds_start_turn = False
            _start_turns.release()

    def _drop_grabbed(self) -> None:
        """A frame grabbed and not retrieved (the reader skipped it: a full queue) goes back at once."""
        grabbed, self._grabbed = self._grabbed, None
        if grabbed is not None and self._pool is not None:
            self._pool.image(grabbed[0]).release()

    def _start_pool(self, width: int, height: int) -> bool:
        """Make the frame pool for frames of ``width`` x ``height`` and tell the child (``{"pool": ...}``);
        False (logged): the reader reconnects."""
        raise NotImplementedError

    def _take(self, count: int, deadline: float) -> bytes | None:
        """``count`` bytes of the camera's records by ``deadline``, or None then, at the pipe's end, or once
        the reader is stopped: at shutdown the pipeline stops taking frames, the child finds no free slot
        and sends nothing, and a reader waiting out its whole read timeout (or a camera's open) would
        outlive the daemon's join."""
        while True:
            taken = self._pipe.take(count, min(deadline, time.monotonic() + STOP_CHECK_S))
            if taken is not None or self._pipe.eof or self._stop.is_set() or time.monotonic() >= deadline:
                return taken

    def _command(self, message: dict[str, Any]) -> bool:
        try:
            self._commands.write(json.dumps(message).encode() + b"\n")
            self._commands.flush()
            return True
        except (OSError, ValueError):  # the camera's thread or its process is gone: the next read says why
            return False

    def _error(self, head: bytes) -> SourceError:
        """The camera's ERROR record (``head``: the part of it read so far) and its text, as the
        SourceError it stands for."""
        if len(head) < RECORD.size:
            head += self._pipe.take(RECORD.size - len(head), time.monotonic() + 5.0) or b""
        if len(head) < RECORD.size:
            return SourceError(f"{self._shown}: its decoding process sent a broken error record", retryable=True)
        _, status, length, _, _ = RECORD.unpack(head)
        text = (self._pipe.take(length, time.monotonic() + 5.0) or b"") if length else b""
        return SourceError(f"{self._shown}: {text.decode(errors='replace')}", retryable=status != EXIT_FINAL)

    def _failure(self, what: str) -> SourceError:
        """No record came: the camera stalled, or its decoding process died (its own error line, then)."""
        host = self._host
        if host is not None and self._pipe is not None and self._pipe.eof:
            if host.child.exit_status(2.0) is not None:  # its end of the pipe closes just before the process is reaped
                return host.child.failure(what, self._shown)
            return SourceError(f"{self._shown}: its decoding thread ended without a word (a bug: please report it)", retryable=True)
        return SourceError(f"{self._shown}: {what}", retryable=True)

    def _close_flags(self) -> None:
        if self._flags_fd >= 0:
            self._flags.close()
            os.close(self._flags_fd)
            self._flags_fd = -1
