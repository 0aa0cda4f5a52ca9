"""The daemon under a stand-in for systemd: a real $NOTIFY_SOCKET datagram socket bound by the test,
$WATCHDOG_USEC set, then READY=1 after warm-up, WATCHDOG=1 while frames flow, `status` and `latest` over
the control socket (mode 0600), a real Prometheus scrape, STOPPING=1 on SIGTERM and exit 0."""

from __future__ import annotations

import signal
import stat
import textwrap
import time
import urllib.request

from daemon.control import query
from daemon.netaddr import free_loopback_port

from .conftest import asset, daemon_under_notify_socket


def test_daemon_under_a_stand_in_for_systemd(tmp_path, free_port):
    metrics_port = free_loopback_port()
    control = f"ipc://{tmp_path}/run/control.ipc"
    config = tmp_path / "daemon.toml"
    config.write_text(textwrap.dedent(f"""
        [[sources]]
        id = "cam"
        uri = "synthetic:320x240@10"
        [model]
        path = "{asset('models/yolov3_tiny_416.onnx')}"
        pipeline = "detection"
        labels = "{asset('labels/coco.txt')}"
        [engine]
        max_batch = 2
        [publisher]
        endpoints = ["tcp://127.0.0.1:{free_port}", "ipc://{tmp_path}/run/results.ipc"]
        heartbeat_interval_s = 0.5
        [metrics]
        enabled = true
        port = {metrics_port}
        [control]
        endpoint = "{control}"
        mode = 0o600
        [watchdog]
        stall_s = 5
        [daemon]
        exit_when_sources_end = false
    """))
    with daemon_under_notify_socket(tmp_path, config, watchdog_usec=2_000_000) as (process, notify):
        seen: list[list[str]] = []

        def wait_for(first_line: str, timeout: float = 60.0) -> list[str]:
            deadline = time.monotonic() + timeout
            while (remaining := deadline - time.monotonic()) > 0:
                notify.settimeout(remaining)
                try:
                    lines = notify.recv(4096).decode().split("\n")
                except TimeoutError:
                    break
                seen.append(lines)
                if lines[0] == first_line:
                    return lines
            raise AssertionError(f"no {first_line} within {timeout}s; got {seen[-5:]}")

        assert wait_for("READY=1")[1].startswith("STATUS=serving yolov3_tiny_416@")
        for _ in range(3):
            wait_for("WATCHDOG=1")
        status = query(control, {"cmd": "status"})
        assert status["ok"] and status["result"]["sources"][0]["id"] == "cam"
        assert stat.S_IMODE((tmp_path / "run/control.ipc").stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / "run/results.ipc").stat().st_mode) == 0o660
        latest = query(control, {"cmd": "latest", "source": "cam"})
        assert latest["ok"] and latest["result"]["source_id"] == "cam"
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
            text = response.read().decode()
        assert 'trtstream_frames_published_total{source="cam"}' in text
        assert 'trtstream_stage_latency_seconds_count{source="cam",stage="capture_to_publish"}' in text
        process.send_signal(signal.SIGTERM)
        wait_for("STOPPING=1")
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 0, stderr[-3000:]


def test_reload_is_bracketed_by_reloading_and_ready(tmp_path, free_port):
    """SIGHUP: RELOADING=1 with MONOTONIC_USEC, then READY=1, also when the new config is rejected."""
    config = tmp_path / "daemon.toml"
    text = textwrap.dedent(f"""
        [[sources]]
        id = "cam"
        uri = "synthetic:160x120@5"
        [model]
        path = "{asset('models/yolov3_tiny_416.onnx')}"
        pipeline = "detection"
        [engine]
        max_batch = 1
        [publisher]
        endpoints = ["tcp://127.0.0.1:{free_port}"]
        [control]
        enabled = false
        [daemon]
        exit_when_sources_end = false
    """)
    config.write_text(text)
    with daemon_under_notify_socket(tmp_path, config) as (process, notify):

        def next_datagram() -> list[str]:
            notify.settimeout(60)
            return notify.recv(4096).decode().split("\n")

        while next_datagram()[0] != "READY=1":
            pass
        config.write_text(text + '\n[[sources]]\nid = "cam2"\nuri = "synthetic:160x120@5"\n')
        process.send_signal(signal.SIGHUP)
        while (lines := next_datagram())[0] != "RELOADING=1":
            pass
        assert lines[1].startswith("MONOTONIC_USEC=")
        while (lines := next_datagram())[0] != "READY=1":
            pass
        assert lines[1] == "STATUS=reloaded", process.communicate(timeout=30)[1][-2500:]
        config.write_text("not = [valid")
        process.send_signal(signal.SIGHUP)
        while next_datagram()[0] != "RELOADING=1":
            pass
        while (lines := next_datagram())[0] != "READY=1":
            pass
        assert lines[1] == "STATUS=reload rejected: running the previous config"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 0, stderr[-3000:]
