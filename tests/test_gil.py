"""daemon.switch_interval_ms: what the daemon and the benchmarks set (daemon/gil.py), here and in the real daemon."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from daemon.config import DaemonConfig
from daemon.gil import apply_switch_interval


@pytest.fixture
def restored_switch_interval():
    before = sys.getswitchinterval()
    yield
    sys.setswitchinterval(before)


def test_the_default_is_one_millisecond_not_pythons_five(restored_switch_interval):
    assert DaemonConfig().switch_interval_ms == 1.0
    sys.setswitchinterval(0.005)
    apply_switch_interval()
    assert sys.getswitchinterval() == pytest.approx(0.001)


def test_a_configured_interval_is_applied(restored_switch_interval):
    apply_switch_interval(2.5)
    assert sys.getswitchinterval() == pytest.approx(0.0025)


def test_the_daemon_runs_with_its_configured_interval_and_a_reload_changes_it(start_daemon, free_port):
    """The real daemon, its log the observable: the interval it applied at start, then after SIGHUP."""
    import signal

    from .conftest import detector_config

    def config(interval: float) -> str:
        return detector_config('[[sources]]\nid = "pattern"\nuri = "synthetic:64x48@5"\n', free_port, wait_for_subscribers="0") + (
            f"[daemon]\nexit_when_sources_end = false\nswitch_interval_ms = {interval}\n"
        )

    daemon = start_daemon(config(2.5))
    daemon.wait_for_line("GIL switch interval 2.5 ms")
    Path(daemon.process.args[-1]).write_text(config(0.5))
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_for_line("reload: GIL switch interval 0.5 ms")
    daemon.terminate()
    assert daemon.wait(60) == 0
