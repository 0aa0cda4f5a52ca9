"""``[[sinks]]``: where results go besides the ZeroMQ publisher. One kind today, ``mqtt`` (README "MQTT").

Defined here for ``daemon.config.Config`` to include, with config.py's rules: unknown keys are errors,
every field has bounds, relative paths resolve against the config file's directory, validation does no
I/O. The broker password is a ``SecretStr`` (shown as ``**********`` in any repr or error) and can come
from a file instead (``password_file``: systemd's ``LoadCredential=``), so it need not be in the config.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from .opsconfig import _resolve

__all__ = ["MqttSinkConfig", "default_instance_name"]

_TOPIC_SEGMENT = r"^[^/#+\s]{1,128}$"


def default_instance_name() -> str:
    """The topic segment that tells this box's messages from the fleet's: the host name (stable across
    restarts, unlike the message's ``instance_id``), reduced to what an MQTT topic level allows."""
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in socket.gethostname()) or "trtstream"
    return name[:128]


class MqttSinkConfig(BaseModel):
    """Events (and optionally results, rate-limited) to an MQTT broker, with availability and a last will."""

    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)

    kind: Literal["mqtt"]
    name: str = Field("mqtt", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="Names this sink in logs, heartbeats and metrics.")
    host: str = Field(min_length=1, max_length=253, description="The broker's host name or address.")
    port: int | None = Field(None, ge=1, le=65535, description="Default 1883, or 8883 with tls.")
    topic_root: str = Field("trtstream", pattern=r"^[^#+\s]{1,128}$", description="First topic levels (may contain '/').")
    instance: str | None = Field(None, pattern=_TOPIC_SEGMENT, description="Topic level for this daemon; default the host name.")
    client_id: str | None = Field(None, min_length=1, max_length=128, description="Default 'trtstream-<instance>'.")
    qos: Literal[0, 1, 2] = Field(1, description="QoS of every message (availability included).")
    events: bool = Field(True, description="Publish event and track messages.")
    results: bool = Field(False, description="Publish per-frame results too (rate-limited per source).")
    results_per_second: float = Field(1.0, gt=0, le=1000, description="Per source on average (a token bucket: bursts up to this many); results over it are skipped (counted).")
    heartbeats: bool = Field(True, description="Publish heartbeats on <root>/<instance>/heartbeat.")
    username: str | None = Field(None, min_length=1)
    password: SecretStr | None = Field(None, description="Prefer password_file; never logged.")
    password_file: Path | None = Field(None, description="A file holding the password (e.g. $CREDENTIALS_DIRECTORY/mqtt).")
    tls: bool = Field(False, description="TLS to the broker (system CAs unless ca_file).")
    ca_file: Path | None = None
    cert_file: Path | None = Field(None, description="Client certificate (with key_file) for brokers that require one.")
    key_file: Path | None = None
    keepalive_s: int = Field(30, ge=2, le=3600, description="The broker publishes the last will after 1.5 x this without a word.")
    outbox_size: int = Field(10000, ge=1, le=10_000_000, description="Messages kept while the broker is away; the oldest is dropped (counted).")
    reconnect_min_s: float = Field(1.0, gt=0, le=300)
    reconnect_max_s: float = Field(30.0, gt=0, le=3600)

    _paths = field_validator("password_file", "ca_file", "cert_file", "key_file")(_resolve)

    @model_validator(mode="after")
    def _consistent(self) -> "MqttSinkConfig":
        if self.password is not None and self.password_file is not None:
            raise ValueError("set password or password_file, not both")
        if (self.password is not None or self.password_file is not None) and self.username is None:
            raise ValueError("a password needs a username")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if (self.ca_file or self.cert_file) and not self.tls:
            raise ValueError("ca_file, cert_file and key_file need tls = true")
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("reconnect_min_s must not exceed reconnect_max_s")
        return self

    @property
    def broker_port(self) -> int:
        return self.port or (8883 if self.tls else 1883)

    @property
    def instance_name(self) -> str:
        return self.instance or default_instance_name()

    @property
    def prefix(self) -> str:
        """``<topic_root>/<instance>``: every topic of this sink starts with it."""
        return f"{self.topic_root.strip('/')}/{self.instance_name}"
