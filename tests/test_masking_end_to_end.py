"""Credentials in source URIs never leave the daemon in clear: a real daemon subprocess, a real ZeroMQ
subscriber and ``trtstream status``, with sources whose password the masking used to miss (issue 11,
finding 6): a mistyped scheme taken for a file path, and a password with '@' (FFmpeg splits at the last '@')."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from daemon.client import ResultSubscriber

from .conftest import REPO, collect, detector_config

TYPO = "rstp://admin:S3cr3t@127.0.0.1:1/live"  # mistyped scheme
AT_SIGN = "rtsp://admin:pa@ss@127.0.0.1:1/live"  # '@' in the password
# What must appear nowhere: the passwords, and the part of 'pa@ss' that splitting at the first '@' shows.
SECRETS = ("S3cr3t", "pa@ss", "ss@127.0.0.1")


def _leaks(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


def test_a_mistyped_scheme_is_refused_without_showing_its_password(start_daemon, free_port):
    daemon = start_daemon(detector_config(f'[[sources]]\nid = "typo"\nuri = "{TYPO}"\n', free_port))
    assert daemon.wait(60) == 2, daemon.stderr
    assert "rstp://" in daemon.stderr and not _leaks(daemon.stderr), daemon.stderr


def test_passwords_stay_masked_in_logs_heartbeats_eos_and_status(start_daemon, free_port, tmp_path):
    reconnect = "[sources.reconnect]\ninitial_delay_s = 0.05\nmax_delay_s = 0.1\nmax_attempts = 2\nopen_timeout_s = 2\n"
    sources = f"""
[[sources]]
id = "typo-file"
kind = "file"
uri = "{TYPO}"
[[sources]]
id = "typo-stream"
kind = "stream"
uri = "{TYPO}"
{reconnect}
[[sources]]
id = "at-sign"
uri = "{AT_SIGN}?apikey=S3cr3t"
{reconnect}
[[sources]]
id = "pattern"
uri = "synthetic:64x64@10"
"""
    failing = {"typo-file", "typo-stream", "at-sign"}
    with ResultSubscriber(f"tcp://127.0.0.1:{free_port}") as subscriber:
        daemon = start_daemon(detector_config(sources, free_port))

        def failing_ended_and_heartbeat_after(messages) -> bool:
            ended = {m.source_id for m in messages if m.type == "eos"}
            last_eos = max((i for i, m in enumerate(messages) if m.type == "eos"), default=len(messages))
            return failing <= ended and any(m.type == "heartbeat" for m in messages[last_eos:])

        messages = collect(subscriber, failing_ended_and_heartbeat_after, timeout=120, daemon=daemon)
        env = {**os.environ, "RUNTIME_DIRECTORY": str(tmp_path / "run")}
        status = None
        for _ in range(20):  # the control socket is up once the daemon publishes; be patient on a slow box
            status = subprocess.run(
                [sys.executable, "-m", "daemon", "status", "--compact"], cwd=REPO, env=env, capture_output=True, text=True, timeout=30
            )
            if status.returncode == 0:
                break
            time.sleep(0.25)
        daemon.terminate()
        assert daemon.wait(60) == 0, daemon.stderr

    assert status.returncode == 0, status.stdout + status.stderr
    heartbeat = json.loads(status.stdout)
    shown = {s["id"]: s for s in heartbeat["sources"]}
    assert shown["typo-stream"]["uri"] == "rstp://admin:***@127.0.0.1:1/live"
    assert shown["at-sign"]["uri"] == "rtsp://admin:***@127.0.0.1:1/live?apikey=***"
    assert shown["typo-file"]["uri"].endswith("/rstp://admin:***@127.0.0.1:1/live")

    ends = {m.source_id: m.header for m in messages if m.type == "eos"}
    assert {ends[s]["reason"] for s in failing} == {"error"}
    assert "file not found" in ends["typo-file"]["detail"] and "admin:***@" in ends["typo-file"]["detail"]
    heartbeats = [m.header for m in messages if m.type == "heartbeat"]
    assert heartbeats
    for where, text in [
        ("stderr", daemon.stderr),
        ("heartbeats", json.dumps(heartbeats)),
        ("end-of-stream messages", json.dumps(list(ends.values()))),
        ("trtstream status", status.stdout + status.stderr),
    ]:
        assert not _leaks(text), f"{_leaks(text)} in {where}:\n{text[-3000:]}"
    assert "admin:***@" in daemon.stderr


def test_check_config_names_a_missing_file_source_without_its_password(tmp_path, free_port):
    """``trtstream check-config`` on a file source that is a mistyped URL: the error names the source
    as written, masked (it used to print the path with '//' folded, out of the mask's reach)."""
    config = tmp_path / "typo.toml"
    config.write_text(detector_config(f'[[sources]]\nid = "typo"\nkind = "file"\nuri = "{TYPO}"\n', free_port))
    done = subprocess.run([sys.executable, "-m", "daemon", "check-config", str(config)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "file not found" in done.stderr + done.stdout, done
    assert not _leaks(done.stderr + done.stdout), done.stderr
    assert "rstp://admin:***@127.0.0.1:1/live" in done.stderr + done.stdout
