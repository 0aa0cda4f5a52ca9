"""Engine builds in a child process (daemon/engine/child.py, issue 11 finding 12): a build no longer
wanted is ended at once, the child dies with its parent, and what the child raised reaches the cache as
in-process (an OSError keeps its errno). Real processes, real signals, real ONNX Runtime builds."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from daemon.config import EngineConfig, ModelConfig
from daemon.engine.builders import OnnxRuntimeBuilder
from daemon.engine.child import BuildCancelled, ChildProcessBuilder, in_child_process
from daemon.errors import BackendError

from .conftest import REPO, SCHEMA_PATH, asset
from .slow_builds import FailingBuilder, slow_to_optimise_model


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] if Path(f"/proc/{pid}/stat").exists() else "X"
    return state not in ("Z", "X")  # a zombie has ended


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)  # polled with a deadline: a process's end has no event to wait on here


def test_a_real_build_runs_in_a_child_and_its_artifact_loads_here(tmp_path):
    model = ModelConfig(path=asset("models/yolov3_tiny_416.onnx"), pipeline="detection")
    builder = in_child_process(OnnxRuntimeBuilder(model, EngineConfig(backend="onnxruntime", max_batch=2)), lambda: False)
    assert isinstance(builder, ChildProcessBuilder)
    progress = []
    output = tmp_path / "model.opt.onnx"
    builder.build(model.path, output, None, lambda fraction, message: progress.append((fraction, message)))
    assert progress[0] == (0.0, "optimising the ONNX graph") and progress[-1] == (1.0, "optimised")
    assert output.stat().st_size > 1_000_000
    backend = builder.load(output)
    assert backend.info.name == "onnxruntime"
    backend.close()
    assert not multiprocessing.active_children()


def test_a_build_no_longer_wanted_ends_its_child_at_once(tmp_path):
    model_path = slow_to_optimise_model(tmp_path / "slow.onnx")
    model = ModelConfig(path=model_path, pipeline="classification")
    cancel, started = threading.Event(), threading.Event()
    builder = in_child_process(OnnxRuntimeBuilder(model, EngineConfig(backend="onnxruntime")), cancel.is_set)
    outcome: list = []

    def build() -> None:
        try:
            builder.build(model_path, tmp_path / "out.onnx", None, lambda fraction, message: started.set())
            outcome.append("finished")
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=build)
    thread.start()
    assert started.wait(60), "the child never began optimising"
    (child,) = multiprocessing.active_children()
    cancelled_at = time.monotonic()
    cancel.set()
    thread.join(30)
    assert time.monotonic() - cancelled_at < 3, "the cancelled build was waited for"
    assert len(outcome) == 1 and isinstance(outcome[0], BuildCancelled), outcome
    assert not alive(child.pid) and not multiprocessing.active_children()


def test_the_child_dies_with_its_parent(tmp_path):
    """kill -9 of the process that started the build takes the build with it (PR_SET_PDEATHSIG)."""
    model_path = slow_to_optimise_model(tmp_path / "slow.onnx")
    script = (
        "import sys, multiprocessing\n"
        "from pathlib import Path\n"
        "from daemon.config import EngineConfig, ModelConfig\n"
        "from daemon.engine.builders import OnnxRuntimeBuilder\n"
        "from daemon.engine.child import in_child_process\n"
        "model = ModelConfig(path=Path(sys.argv[1]), pipeline='classification')\n"
        "builder = in_child_process(OnnxRuntimeBuilder(model, EngineConfig(backend='onnxruntime')), lambda: False)\n"
        "def progress(fraction, message):\n"
        "    print('child', multiprocessing.active_children()[0].pid, flush=True)\n"
        "builder.build(model.path, Path(sys.argv[2]), None, progress)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script, str(model_path), str(tmp_path / "out.onnx")], cwd=REPO, stdout=subprocess.PIPE, text=True)
    line = parent.stdout.readline()
    assert line.startswith("child "), line
    child = int(line.split()[1])
    assert alive(child)
    parent.kill()
    parent.wait(30)
    wait_until(lambda: not alive(child), 10, "the build outlived the process that started it")


@pytest.mark.parametrize("how", ["enospc", "backend", "crash", "killed"])
def test_what_the_child_raised_is_raised_here(tmp_path, how, caplog):
    import errno

    builder = in_child_process(FailingBuilder(how), lambda: False)
    progress = []
    with pytest.raises((OSError, BackendError)) as caught:
        builder.build(tmp_path / "model.onnx", tmp_path / "out.bin", None, lambda fraction, message: progress.append(message))
    assert progress == [f"about to fail: {how}"]
    error = caught.value
    if how == "enospc":
        assert isinstance(error, OSError) and error.errno == errno.ENOSPC and error.filename == str(tmp_path / "out.bin")
    elif how == "backend":
        assert isinstance(error, BackendError) and str(error) == f"{tmp_path / 'model.onnx'}: cannot build (as asked)"
    elif how == "crash":
        assert isinstance(error, BackendError) and "ZeroDivisionError: a bug in the builder" in str(error)
        assert "Traceback" in caplog.text, "the child's traceback is logged for a bug report"
    else:
        assert isinstance(error, BackendError) and "ended with signal SIGKILL before it finished" in str(error)
    assert not multiprocessing.active_children()


def test_a_builder_on_injected_doubles_builds_in_this_process(tmp_path):
    from .test_tensorrt_backend import Fakes

    builder = Fakes("10.16", tmp_path).builder()
    assert builder.child_recipe() is None and in_child_process(builder, lambda: False) is builder


def test_closing_a_provider_ends_its_background_build(tmp_path):
    """A fallback start builds in the background; a reload or a stop closes the provider, which ends the
    build's process instead of waiting for it (it used to wait up to drain_timeout_s, then leave it)."""
    from daemon.engine.lifecycle import EngineProvider

    model_path = slow_to_optimise_model(tmp_path / "slow.onnx", matmuls=25)  # the fallback session folds them too
    model = ModelConfig(path=model_path, pipeline="classification")
    engine = EngineConfig(backend="onnxruntime", max_batch=1, on_missing_engine="fallback", cache_dir=tmp_path / "cache")
    provider = EngineProvider(model, engine)
    fallback = provider.start()
    provider.begin_background_build()
    wait_until(lambda: multiprocessing.active_children(), 30, "the background build never started its process")
    (child,) = multiprocessing.active_children()
    closing = time.monotonic()
    assert provider.close(timeout=60)
    assert time.monotonic() - closing < 5, "close waited for the build"
    assert not alive(child.pid) and provider.status()["state"] == "cancelled"
    validate_engine_status(provider.status())  # heartbeats carry it (a stop during a build once sent one off-schema)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.suffix in (".tmp", ".onnx", ".json")]
    fallback.close()


def validate_engine_status(status: dict) -> None:
    """``status`` against the heartbeat's ``engine`` field in the published JSON Schema."""
    import json

    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.validate(status, {**schema["$defs"]["heartbeat"]["properties"]["engine"], "$defs": schema["$defs"]})


def test_a_child_ended_by_sigterm_waits_a_moment_for_the_daemon_s_own_stop():
    """systemd's KillMode=control-group signals the build's process and the daemon one by one: the daemon
    may see its child gone before its own SIGTERM has set the stop. A SIGTERM'd child waits for that stop
    (a stop, exit 0) up to a grace; any other end, or no stop within it, is a failed build."""
    import signal
    import threading
    import time

    from daemon.engine.child import _stop_follows_a_sigterm

    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    assert _stop_follows_a_sigterm(-signal.SIGTERM, stop.is_set, grace_s=5.0)
    assert time.monotonic() - started < 4.0, "it returns when the stop comes, not at the end of the grace"
    assert not _stop_follows_a_sigterm(-signal.SIGKILL, lambda: True), "only SIGTERM is a stop's signal"
    assert not _stop_follows_a_sigterm(1, lambda: True)
    assert not _stop_follows_a_sigterm(-signal.SIGTERM, lambda: False, grace_s=0.1), "no stop within the grace: a failed build"
