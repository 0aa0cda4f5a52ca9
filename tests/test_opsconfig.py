"""Config sections for service operation (daemon/opsconfig.py), validated from TOML as config.py will."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from daemon.opsconfig import ControlConfig, MetricsConfig, SecurityConfig, WatchdogConfig
from daemon.tomlcompat import tomllib


class Sections(BaseModel):
    """How daemon.config.Config will hold them."""

    model_config = ConfigDict(extra="forbid")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    control: ControlConfig = Field(default_factory=ControlConfig)
    watchdog: WatchdogConfig = Field(default_factory=WatchdogConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)


def load(text: str, base_dir: str = "/etc/trtstream") -> Sections:
    return Sections.model_validate(tomllib.loads(text), context={"base_dir": Path(base_dir)})


def test_defaults_are_local_and_safe():
    sections = load("")
    assert (sections.metrics.enabled, sections.metrics.address) == (False, "127.0.0.1")
    assert sections.control.enabled and sections.control.endpoint is None and sections.control.mode == 0o660
    assert sections.security.ipc_mode == 0o660 and not sections.security.curve.enabled
    assert sections.watchdog.stall_s == 20.0


def test_a_full_section_set():
    sections = load(
        """
        [metrics]
        enabled = true
        port = 9900
        [control]
        endpoint = "ipc:///run/trtstream/gpu0/control.ipc"
        mode = 0o600
        [watchdog]
        stall_s = 45
        [security]
        ipc_mode = 0o600
        [security.curve]
        enabled = true
        server_secret_key = "keys/server.key_secret"
        authorized_clients = "keys/authorized_clients"
        """
    )
    assert sections.metrics.port == 9900 and sections.control.mode == 0o600
    assert sections.security.curve.server_secret_key == Path("/etc/trtstream/keys/server.key_secret")
    assert sections.security.curve.authorized_clients == Path("/etc/trtstream/keys/authorized_clients")


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[metrics]\naddress = "0.0.0.0"', "not loopback; set allow_remote"),
        ('[metrics]\nport = 0', "greater than or equal to 1"),
        ("[control]\nmode = 0o666", r"must be 0o600 \(owner only\) or 0o660"),
        ('[control]\nendpoint = "tcp://0.0.0.0:7000"', "not loopback"),
        ('[control]\nendpoint = "ipc://@trtstream"', "abstract ipc socket"),
        ('[control]\nendpoint = "inproc://x"', "must be ipc:///path"),
        ("[security]\nipc_mode = 0o777", "must be 0o600"),
        ("[security.curve]\nenabled = true", "server_secret_key is required"),
        ('[security.curve]\nenabled = true\nserver_secret_key = "s"', "exactly one of authorized_clients and allow_any_client"),
        ('[security.curve]\nenabled = true\nserver_secret_key = "s"\nallow_any_client = true\nauthorized_clients = "a"', "exactly one"),
        ("[watchdog]\nstall_s = 0", "greater than 0"),
        ("[metrics]\nprot = 1", "Extra inputs are not permitted"),
    ],
)
def test_invalid_sections(toml, message):
    with pytest.raises(ValidationError, match=message):
        load(toml)


def test_remote_listeners_need_an_explicit_yes():
    sections = load('[metrics]\naddress = "0.0.0.0"\nallow_remote = true\n[control]\nendpoint = "tcp://10.0.0.2:7000"\nallow_remote = true')
    assert sections.metrics.address == "0.0.0.0" and sections.control.endpoint == "tcp://10.0.0.2:7000"
