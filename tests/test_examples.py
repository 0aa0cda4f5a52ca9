"""The shipped examples work as the README shows them: real `trtstream` subprocesses, real ZeroMQ.

``configs/classification.toml`` publishes one result; a subscriber started first must receive it (and
the end of stream) although ZeroMQ drops what a PUB socket sends before a subscription arrives.
"""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from daemon.config import load_config

from .conftest import REPO, DaemonProcess, asset

CLASSIFICATION = REPO / "configs" / "classification.toml"


def endpoint_of(config_path) -> str:
    (endpoint,) = load_config(config_path).publisher.endpoints
    return endpoint


def require_free(endpoint: str) -> None:
    """The example binds a fixed port: another process on it would answer for it (or make it fail to
    bind), so say which port is taken rather than fail obscurely."""
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    with socket.socket() as probe:
        try:
            probe.bind((host, int(port)))
        except OSError as exc:
            pytest.fail(f"{endpoint} is in use by another process ({exc}); stop it to run this test")


def test_readme_documents_the_classification_example_commands():
    readme = (REPO / "README.md").read_text()
    endpoint = endpoint_of(CLASSIFICATION)
    assert f"trtstream subscribe {endpoint} --until-eos" in readme
    assert "trtstream run configs/classification.toml" in readme
    assert readme.index(f"trtstream subscribe {endpoint}") < readme.index("trtstream run configs/classification.toml"), "subscriber first"


def test_classification_example_reaches_a_subscriber_started_first(tmp_path):
    for needed in ("models/efficientnet_lite0.onnx", "media/chelsea.png", "labels/imagenet.txt"):
        asset(needed)  # what the config names: a missing one fails with the fetch-assets hint
    endpoint = endpoint_of(CLASSIFICATION)
    require_free(endpoint)
    subscriber = subprocess.Popen(
        [sys.executable, "-m", "daemon", "subscribe", endpoint, "--until-eos"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    daemon = DaemonProcess(CLASSIFICATION, tmp_path / "cache-home")
    try:
        assert daemon.wait(90) == 0, daemon.stderr[-3000:]
        try:
            out, err = subscriber.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            subscriber.kill()
            out, err = subscriber.communicate()
            pytest.fail(f"the subscriber started first did not get the end of stream; it printed {out!r}")
    finally:
        daemon.kill()
        if subscriber.poll() is None:
            subscriber.kill()
            subscriber.communicate()
    assert subscriber.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 2, out
    assert lines[0].startswith("chelsea #0 ") and "cat" in lines[0].split("ms", 1)[1], lines[0]
    assert lines[1] == "chelsea: end of stream (end_of_file), 1 results"
