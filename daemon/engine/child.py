"""Engine builds in a child process, so that a stop never waits for one.

A TensorRT build runs for minutes inside native code that cannot be interrupted: in the daemon's own
process a SIGTERM was seen only once the build returned (after systemd's ``TimeoutStopSec`` had
SIGKILLed it), and the daemon then went on to bind its sockets and start its sources before stopping
(issue 11, finding 12). Here the build runs in a child process started with ``spawn`` (no forked copy of
the daemon's threads, CUDA context or sockets); the parent relays its progress and polls, every
0.2 s, whether the build is still wanted. When it is not (the daemon stops, a reload replaced the
model) the child is terminated (SIGTERM, then SIGKILL after 5 s) and :class:`BuildCancelled` raised:
the cache removes the partial artifact as for any failed build. The child also asks the kernel to kill
it when its parent dies (``PR_SET_PDEATHSIG``), so a daemon killed with -9 leaves no build behind.

A builder runs in a child when it can say how to make itself there (``child_recipe``: a module-level
factory and picklable arguments); builders on injected test doubles return None and build in-process.
"""

from __future__ import annotations

import errno
import logging
import multiprocessing
import signal
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from ..backends.base import InferenceBackend
from ..childproc import die_with_parent
from ..errors import BackendError, TrtstreamError
from .artifact import ArtifactBuilder, Progress

__all__ = ["BuildCancelled", "ChildProcessBuilder", "in_child_process"]

log = logging.getLogger("trtstream.engine")

POLL_S = 0.2  # how often the parent looks whether the build is still wanted
TERMINATE_GRACE_S = 5.0
STOP_GRACE_S = 2.0  # how long a child's SIGTERM waits for the daemon's own (see _stop_follows_a_sigterm)

Recipe = tuple[Callable[..., ArtifactBuilder], tuple]


class BuildCancelled(BackendError):
    """The build was no longer wanted (stop, reload) and its process was ended."""


def in_child_process(builder: ArtifactBuilder, cancelled: Callable[[], bool]) -> ArtifactBuilder:
    """``builder`` building in a child process that ends when ``cancelled()`` turns true; ``builder``
    itself when it cannot be made in another process (test doubles)."""
    recipe = builder.child_recipe()
    return builder if recipe is None else ChildProcessBuilder(builder, recipe, cancelled)


class ChildProcessBuilder:
    """An :class:`~daemon.engine.artifact.ArtifactBuilder` whose ``build`` runs in a child process; the
    fingerprint and ``load`` stay here (loading needs this process's CUDA context)."""

    def __init__(self, builder: ArtifactBuilder, recipe: Recipe, cancelled: Callable[[], bool]):
        self._builder = builder
        self._recipe = recipe
        self._cancelled = cancelled
        self.backend = builder.backend
        self.artifact_suffix = builder.artifact_suffix
        self.uses_timing_cache = builder.uses_timing_cache

    def fingerprint(self) -> dict[str, Any]:
        return self._builder.fingerprint()

    def load(self, artifact_path: Path) -> InferenceBackend:
        return self._builder.load(artifact_path)

    def child_recipe(self) -> Recipe | None:
        return None  # already the child's parent

    def build(self, model_path: Path, output_path: Path, timing_cache_path: Path | None, progress: Progress) -> None:
        context = multiprocessing.get_context("spawn")
        receive, send = context.Pipe(duplex=False)
        process = context.Process(
            target=_child_main, args=(self._recipe, model_path, output_path, timing_cache_path, send),
            name=f"trtstream-{self.backend}-build", daemon=True,
        )  # fmt: skip
        process.start()
        send.close()  # the child holds the only writing end: its exit ends the pipe
        outcome: tuple | None = None
        try:
            while outcome is None:
                if self._cancelled():
                    _end(process)
                    raise BuildCancelled(f"the {self.backend} engine build was stopped")
                if not receive.poll(POLL_S):
                    if not process.is_alive() and not receive.poll(0):
                        break
                    continue
                try:
                    message = receive.recv()
                except EOFError:
                    break
                if message[0] == "progress":
                    progress(message[1], message[2])
                else:
                    outcome = message
        finally:
            receive.close()
            if process.is_alive() and outcome is None:
                _end(process)
            process.join(TERMINATE_GRACE_S)
        if outcome is None and (self._cancelled() or _stop_follows_a_sigterm(process.exitcode, self._cancelled)):
            # The child ended without a word and the build is no longer wanted: a stop reached both (systemd's
            # KillMode=control-group signals the whole unit at once), not a crash of the build.
            raise BuildCancelled(f"the {self.backend} engine build was stopped")
        _raise_for(outcome, process.exitcode, self.backend)


def _stop_follows_a_sigterm(exitcode: int | None, cancelled: Callable[[], bool], grace_s: float = STOP_GRACE_S) -> bool:
    """Whether a child ended by SIGTERM is part of a stop of the whole unit: the daemon's own SIGTERM may
    come a moment after the child's (the kernel signals them one by one, and the daemon can see its child
    gone first), so wait up to ``grace_s`` for the stop before calling it a failed build (without this
    wait, tests/test_exit_status_and_signals.py failed once in .ci/run's Python 3.10 leg: exit 1)."""
    if exitcode != -signal.SIGTERM:
        return False
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if cancelled():
            return True
        time.sleep(0.01)  # the stop is another thread's signal handler setting a flag: polled with a deadline
    return cancelled()


def _raise_for(outcome: tuple | None, exitcode: int | None, backend: str) -> None:
    """Return if the child built the artifact; else raise what it raised (OSError keeps its errno, so the
    cache's full-disk and read-only paths work as in-process)."""
    if outcome is not None and outcome[0] == "done":
        return
    if outcome is None:
        how = f"signal {signal.Signals(-exitcode).name}" if exitcode is not None and exitcode < 0 else f"exit code {exitcode}"
        raise BackendError(f"the {backend} engine build process ended with {how} before it finished")
    kind = outcome[0]
    if kind == "oserror":
        _, number, message, filename = outcome
        raise OSError(number, message, filename)
    if kind == "backend":
        raise BackendError(outcome[1])
    log.error("the %s engine build crashed:\n%s", backend, outcome[1])
    raise BackendError(f"the {backend} engine build crashed: {outcome[1].strip().splitlines()[-1]}")


def _end(process: Any) -> None:
    process.terminate()
    process.join(TERMINATE_GRACE_S)
    if process.is_alive():
        process.kill()
        process.join(TERMINATE_GRACE_S)


def _child_main(recipe: Recipe, model_path: Path, output_path: Path, timing_cache_path: Path | None, send: Any) -> None:
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C reaches the whole group: the parent decides
    started = time.monotonic()
    try:
        factory, args = recipe
        builder = factory(*args)
        builder.build(model_path, output_path, timing_cache_path, lambda fraction, message: send.send(("progress", fraction, message)))
        send.send(("done", time.monotonic() - started))
    except OSError as exc:
        send.send(("oserror", exc.errno if exc.errno is not None else errno.EIO, exc.strerror or str(exc), exc.filename))
    except TrtstreamError as exc:  # BackendError (CudaError too), a UserError and the like: one line for the user
        send.send(("backend", str(exc)))
    except BaseException:
        send.send(("crash", traceback.format_exc()))
    finally:
        send.close()
