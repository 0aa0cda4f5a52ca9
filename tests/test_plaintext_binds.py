"""Finding 9 of issue 11: results in clear on every interface must not happen silently.

``tcp://0.0.0.0:…`` or ``tcp://*:…`` without CURVE passed ``check-config`` and bound with no warning,
while metrics and control refuse non-loopback binds without ``allow_remote``. Now such an endpoint is
refused by validation (one line naming ``publisher.endpoints[N]``) unless CURVE is on or
``publisher.allow_plaintext_remote = true``, and with the opt-in the daemon logs one warning at start.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from daemon.client import ResultSubscriber
from daemon.config import load_config, parse_config

from .conftest import REPO, asset, collect, detector_config

REMOTE = ["tcp://0.0.0.0:5560", "tcp://*:5560", "tcp://[::]:5560", "tcp://192.168.1.20:5560", "tcp://camera-box.local:5560", "tcp://eth0:5560"]
LOCAL = ["tcp://127.0.0.1:5560", "tcp://127.0.0.2:5560", "tcp://[::1]:5560", "tcp://localhost:5560", "ipc:///tmp/trtstream-test.ipc"]


def write(tmp_path, endpoint: str, extra: str = "") -> str:
    path = tmp_path / "daemon.toml"
    path.write_text(
        f'[[sources]]\nid = "cam"\nuri = "synthetic:64x48"\n[model]\npath = "{asset("models/yolov3_tiny_416.onnx")}"\n'
        f'pipeline = "detection"\nlabels = "{asset("labels/coco.txt")}"\n[publisher]\nendpoints = ["{endpoint}"]\n{extra}'
    )
    return str(path)


def check_config(path: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "daemon", "check-config", path], cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("endpoint", REMOTE)
def test_check_config_refuses_plaintext_beyond_loopback(tmp_path, endpoint):
    result = check_config(write(tmp_path, endpoint))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(lines) == 1, lines
    assert "publisher.endpoints[0]: refusing to publish unencrypted results beyond loopback" in lines[0]
    assert "publisher.allow_plaintext_remote = true" in lines[0] and endpoint in lines[0]


@pytest.mark.parametrize("endpoint", LOCAL)
def test_loopback_and_ipc_need_nothing(endpoint):
    config = parse_config({"sources": [{"id": "c", "uri": "synthetic:64x48"}], "model": {"path": "m", "pipeline": "detection"},
                           "publisher": {"endpoints": [endpoint]}})
    assert config.publisher.plaintext_remote_endpoints(curve_enabled=False) == []


def test_the_offending_endpoint_is_named_among_several():
    data = {"sources": [{"id": "c", "uri": "synthetic:64x48"}], "model": {"path": "m", "pipeline": "detection"},
            "publisher": {"endpoints": ["tcp://127.0.0.1:5560", "ipc:///tmp/x.ipc", "tcp://*:5561"]}}
    with pytest.raises(Exception) as caught:
        parse_config(data, origin="x.toml")
    assert [line for line in str(caught.value).splitlines()] == [
        "x.toml: publisher.endpoints[2]: refusing to publish unencrypted results beyond loopback: use 127.0.0.1 or ::1 "
        "(or ipc://), enable [security.curve], or allow it explicitly (publisher.allow_plaintext_remote = true) (got 'tcp://*:5561')"
    ]


def test_curve_makes_a_remote_endpoint_acceptable(tmp_path):
    config = parse_config({
        "sources": [{"id": "c", "uri": "synthetic:64x48"}], "model": {"path": "m", "pipeline": "detection"},
        "publisher": {"endpoints": ["tcp://0.0.0.0:5560"]},
        "security": {"curve": {"enabled": True, "server_secret_key": str(tmp_path / "server.key_secret"), "allow_any_client": True}},
    })
    assert config.publisher.plaintext_remote_endpoints(config.security.curve.enabled) == []


def test_opt_in_binds_every_interface_and_warns_once(start_daemon, free_port):
    """The real daemon on tcp://0.0.0.0 with the opt-in: check-config passes, the daemon serves (a
    subscriber on loopback gets its messages) and its log carries exactly one warning about it."""
    config = detector_config(
        '[[sources]]\nid = "cam"\nuri = "synthetic:64x48@5"\nmax_frames = 3\n', free_port, wait_for_subscribers="1",
        publisher="allow_plaintext_remote = true",
    ).replace(f'"tcp://127.0.0.1:{free_port}"', f'"tcp://0.0.0.0:{free_port}"')
    assert f'"tcp://0.0.0.0:{free_port}"' in config
    with ResultSubscriber(f"tcp://127.0.0.1:{free_port}") as subscriber:
        daemon = start_daemon(config)
        messages = collect(subscriber, lambda ms: any(m.type == "eos" for m in ms), timeout=120, daemon=daemon)
        daemon.terminate()
        assert daemon.wait(60) == 0, daemon.stderr
    assert any(m.type == "result" for m in messages)
    warnings = [line for line in daemon.stderr.splitlines() if "beyond loopback" in line]
    assert len(warnings) == 1 and "WARNING" in warnings[0] and f"tcp://0.0.0.0:{free_port}" in warnings[0], daemon.stderr[-3000:]


def test_shipped_configs_pass():
    for path in [*(REPO / "configs").glob("*.toml"), REPO / "systemd" / "config.example.toml"]:
        load_config(path)  # none publishes in clear beyond loopback
