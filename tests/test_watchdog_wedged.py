"""The systemd watchdog stops being fed when inference hangs (a real daemon, a real engine, really stuck).

The engine is a real ONNX model whose Loop runs once for a dark frame and 10**15 times for a bright
one; the source is a real video file that turns from dark to bright. So inference genuinely wedges
inside ONNX Runtime's native code, the way a hung GPU call would, while every thread of the daemon
keeps running: exactly the case WATCHDOG=1 exists to catch."""

from __future__ import annotations

import signal
import subprocess
import textwrap
import time

import cv2
import numpy as np
import pytest

from daemon.netaddr import free_loopback_port

from .conftest import daemon_under_notify_socket


def hanging_classifier(path) -> None:
    onnx = pytest.importorskip("onnx", reason="needs the 'convert' extra (onnx) to build the model")
    from onnx import TensorProto, helper

    body = helper.make_graph(
        [helper.make_node("Add", ["v_in", "one"], ["v_out"]), helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "spin",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [])],
        [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])],
    )
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["mean"], keepdims=0),
        helper.make_node("Greater", ["mean", "half"], ["bright"]),
        helper.make_node("Where", ["bright", "forever", "once"], ["trips"]),
        helper.make_node("Loop", ["trips", "true", "zero"], ["spun"], body=body),
        helper.make_node("ReduceMean", ["input"], ["pooled"], axes=[2, 3], keepdims=0),
        helper.make_node("Mul", ["spun", "zero"], ["nothing"]),
        helper.make_node("Add", ["pooled", "nothing"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "hangs-on-bright-frames",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        [
            helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
            helper.make_tensor("forever", TensorProto.INT64, [], [10**15]),
            helper.make_tensor("once", TensorProto.INT64, [], [1]),
            helper.make_tensor("true", TensorProto.BOOL, [], [True]),
            helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        ],
    )
    # IR 8 (opset 17's): onnx 1.23 writes IR 14 by default, newer than Python 3.10's last ONNX Runtime (1.23) reads.
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))


def dark_then_bright_video(path, dark: int, bright: int) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 64))
    for value in [10] * dark + [245] * bright:
        writer.write(np.full((64, 64, 3), value, np.uint8))
    writer.release()


def _stderr(process) -> str:
    process.send_signal(signal.SIGKILL)
    return process.communicate(timeout=30)[1][-3000:]


def test_watchdog_pings_stop_when_inference_hangs(tmp_path):
    hanging_classifier(tmp_path / "hang.onnx")
    dark_then_bright_video(tmp_path / "clip.avi", dark=40, bright=40)
    port = free_loopback_port()
    config = tmp_path / "daemon.toml"
    config.write_text(textwrap.dedent(f"""
        [[sources]]
        id = "cam"
        uri = "{tmp_path / 'clip.avi'}"
        pace = true
        [model]
        path = "{tmp_path / 'hang.onnx'}"
        pipeline = "classification"
        labels = ["r", "g", "b"]
        [model.classification]
        resize_short = 16
        top_k = 1
        [engine]
        max_batch = 1
        max_wait_ms = 0
        warmup = false
        use_cache = false
        [publisher]
        endpoints = ["tcp://127.0.0.1:{port}"]
        heartbeat_interval_s = 0.5
        [watchdog]
        stall_s = 2
        [control]
        enabled = false
    """))
    with daemon_under_notify_socket(tmp_path, config, watchdog_usec=1_000_000, stdout=subprocess.DEVNULL) as (process, notify):
        pings: list[float] = []
        try:
            started = time.monotonic()
            notify.settimeout(1.0)
            while time.monotonic() - started < 20:  # the clip turns bright after 4 s; keep listening well past it
                try:
                    first = notify.recv(4096).decode().split("\n")[0]
                except TimeoutError:
                    continue
                if first == "WATCHDOG=1":
                    pings.append(time.monotonic() - started)
            assert len([t for t in pings if t < 4]) >= 3, f"pings while dark frames flowed: {pings}\n{_stderr(process)}"
            last = max(pings)
            assert last < 4 + 2 + 2, f"pings went on after inference hung (last at {last:.1f}s): {pings}"
            assert process.poll() is None, "the daemon itself is still running: only the watchdog says it is wedged"
        finally:
            process.send_signal(signal.SIGKILL)
            _, stderr = process.communicate(timeout=30)
    assert "watchdog" in stderr.lower(), stderr[-2000:]
