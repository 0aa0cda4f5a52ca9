"""The systemd units, the Jetson drop-in, the example config and scripts/install-service.sh.

``systemd-analyze verify`` is the authority on the units: it rejects unknown keys, bad values and
missing executables. It needs ExecStart's binary to exist, so each unit is verified as a copy whose
/opt/trtstream/bin/trtstream points at a stub executable in a temporary directory; everything else is
verified as shipped (including the drop-in, which verify loads from ``<unit>.d/`` next to the copy).
verify exits 0 even on "Unknown key ... ignoring", so any output at all is a failure.

systemd-analyze and shellcheck are CI tools: a missing one skips with the reason, or fails when
TRTSTREAM_REQUIRE_EXTRAS=1 (scripts/test), so CI can never pass without running them.
"""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from daemon.config import parse_config
from daemon.tomlcompat import tomllib

from .conftest import missing

REPO = Path(__file__).resolve().parent.parent
UNITS = REPO / "systemd"
INSTALLER = REPO / "scripts" / "install-service.sh"


def need_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"needs {name} (apt-get install -y {package})"
        missing(message)
    return path


def unit_lines(path: Path) -> list[tuple[str, str]]:
    """(key, value) of every setting in file order; repeated keys (DeviceAllow=) kept."""
    lines = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            lines.append((key, value))
    return lines


@pytest.mark.parametrize("unit", ["trtstream.service", "trtstream@.service"])
def test_systemd_analyze_verify(unit, tmp_path):
    analyze = need_tool("systemd-analyze", "systemd")
    stub = tmp_path / "bin" / "trtstream"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    copy = tmp_path / unit
    copy.write_text((UNITS / unit).read_text().replace("/opt/trtstream/bin/trtstream", str(stub)))
    dropins = tmp_path / f"{unit}.d"
    dropins.mkdir()
    shutil.copy(UNITS / "jetson.conf", dropins / "jetson.conf")
    result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not output, f"systemd-analyze verify {unit}:\n{output}"


def test_verify_catches_mistakes(tmp_path):
    """The check above is only worth something if verify reports a typo: make sure it does here."""
    analyze = need_tool("systemd-analyze", "systemd")
    bad = tmp_path / "bad.service"
    bad.write_text("[Service]\nTyp=notify\nExecStart=/bin/true\n")
    result = subprocess.run([analyze, "verify", str(bad)], capture_output=True, text=True, timeout=60)
    assert "Unknown key" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("WatchdogSec", "30"),
        ("Restart", "on-failure"),
        ("RestartSec", "2"),
        ("StartLimitIntervalSec", "300"),
        ("StartLimitBurst", "5"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("User", "trtstream"),
        ("SupplementaryGroups", "video render"),
        ("DevicePolicy", "closed"),
        ("DeviceAllow", "char-nvidia-frontend rw"),
        ("DeviceAllow", "char-nvidia-uvm rw"),
        ("DeviceAllow", "char-video4linux rw"),
        ("CacheDirectory", "trtstream"),
        ("ConfigurationDirectory", "trtstream"),
        ("RuntimeDirectoryMode", "0750"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6 AF_NETLINK"),
        ("RestrictNamespaces", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "no"),
        ("SystemCallArchitectures", "native"),
    ],
)
@pytest.mark.parametrize("unit", ["trtstream.service", "trtstream@.service"])
def test_unit_settings(unit, key, value):
    assert (key, value) in unit_lines(UNITS / unit)


def test_units_never_weaken_the_sandbox():
    """Settings that would break GPU access or the notify protocol must not creep in."""
    for unit in ("trtstream.service", "trtstream@.service"):
        keys = dict(unit_lines(UNITS / unit))
        assert keys.get("PrivateDevices", "no") == "no", "PrivateDevices hides /dev/nvidia*"
        assert "ProcSubset" not in keys, "the CUDA driver reads /proc/driver/nvidia"
        assert keys.get("PrivateUsers", "no") == "no", "video/render groups would map to nobody"
        assert keys["ExecStart"].startswith("/opt/trtstream/bin/trtstream run "), "the daemon must be the main process"


def test_template_differs_only_in_instance_settings():
    single = unit_lines(UNITS / "trtstream.service")
    template = unit_lines(UNITS / "trtstream@.service")
    per_instance = {"Description", "StateDirectory", "RuntimeDirectory", "ExecStartPre", "ExecStart", "Environment", "EnvironmentFile"}
    assert [kv for kv in single if kv[0] not in per_instance] == [kv for kv in template if kv[0] not in per_instance]
    settings = dict(template)
    assert settings["ExecStart"].endswith("%E/trtstream/%i.toml")
    assert settings["RuntimeDirectory"] == "trtstream/%i" and settings["StateDirectory"] == "trtstream/%i"
    assert ("Environment", "TRTSTREAM_INSTANCE=%i") in template


def test_example_config_is_valid():
    data = tomllib.loads((UNITS / "config.example.toml").read_text())
    config = parse_config(data, origin="config.example.toml")
    assert config.daemon.exit_when_sources_end is False


def test_installer_passes_shellcheck():
    shellcheck = need_tool("shellcheck", "shellcheck")
    result = subprocess.run([shellcheck, str(INSTALLER)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def run_installer(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(INSTALLER), *args], capture_output=True, text=True, timeout=120)


def test_installer_dry_run_changes_nothing(tmp_path):
    result = run_installer("--dry-run", "--no-venv", "--root", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert f"+ install -m 0640 {REPO}/systemd/config.example.toml {tmp_path}/etc/trtstream/config.toml" in result.stdout
    assert f"{tmp_path}/etc/systemd/system/trtstream@.service" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_installer_is_idempotent_and_keeps_an_edited_config(tmp_path):
    first = run_installer("--no-venv", "--root", str(tmp_path), "--prefix", "/srv/trt")
    assert first.returncode == 0, first.stderr
    config = tmp_path / "etc/trtstream/config.toml"
    unit = tmp_path / "etc/systemd/system/trtstream.service"
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
    assert "ExecStart=/srv/trt/bin/trtstream run %E/trtstream/config.toml" in unit.read_text()
    assert "/opt/trtstream" not in unit.read_text()

    again = run_installer("--no-venv", "--root", str(tmp_path), "--prefix", "/srv/trt")
    assert again.returncode == 0, again.stderr
    assert "+ " not in again.stdout and f"{config} unchanged" in again.stdout and f"{unit} unchanged" in again.stdout

    config.write_text(config.read_text().replace('id = "cam1"', 'id = "door"'))
    edited = config.read_text()
    third = run_installer("--no-venv", "--root", str(tmp_path), "--prefix", "/srv/trt")
    assert third.returncode == 0, third.stderr
    assert config.read_text() == edited, "an edited config must never be overwritten"
    assert (tmp_path / "etc/trtstream/config.toml.dist").read_text() == (UNITS / "config.example.toml").read_text()


def test_installer_rejects_bad_arguments(tmp_path):
    result = run_installer("--prefix", "relative/path", "--dry-run")
    assert result.returncode == 1 and "absolute" in result.stderr
    result = run_installer("--frobnicate")
    assert result.returncode == 1 and "unknown option --frobnicate" in result.stderr
