"""Config sections for service operation: ``[metrics]``, ``[view]``, ``[control]``, ``[watchdog]``, ``[security]``.

Defined here, beside the modules they configure, for ``daemon.config.Config`` to include. They follow
config.py's rules: unknown keys are errors, every field has bounds, relative paths resolve against the
config file's directory (the ``base_dir`` validation context), and validation does no I/O. Listeners
default to loopback and refuse anything else unless ``allow_remote = true``. Modes are TOML octal
integers (``mode = 0o660``).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from .netaddr import check_host, is_loopback_host, split_tcp_endpoint

__all__ = ["MetricsConfig", "ViewConfig", "ControlConfig", "WatchdogConfig", "CurveConfig", "SecurityConfig"]

_SOCKET_MODES = (0o600, 0o660)


class _Section(BaseModel):
    """Base of these sections, with config.py's StrictModel rules: unknown keys and NaN/infinity (TOML's
    ``nan``, ``inf``) are errors, so a float setting always holds a real number."""

    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


def _socket_mode(mode: int) -> int:
    if mode not in _SOCKET_MODES:
        raise ValueError(f"must be 0o600 (owner only) or 0o660 (owner and group), got 0o{mode:o}")
    return mode


def _resolve(path: Path | None, info: ValidationInfo) -> Path | None:
    base = (info.context or {}).get("base_dir")
    if path is None or path.is_absolute() or base is None:
        return path
    return (Path(base) / path).resolve()


class _HttpListener(_Section):
    """An HTTP endpoint's address rules (metrics, the view): loopback unless ``allow_remote``."""

    address: str = Field("127.0.0.1", min_length=1, description="Listen address; loopback unless allow_remote.")
    allow_remote: bool = Field(False, description="Allow a non-loopback address (no authentication).")
    _shows: ClassVar[str] = "this endpoint"

    @field_validator("address")
    @classmethod
    def _real_address(cls, address: str) -> str:
        """``999.1.1.1`` is refused even with allow_remote: the HTTP server could never bind it."""
        check_host(address)
        return address

    @model_validator(mode="after")
    def _loopback(self) -> "_HttpListener":
        if not self.allow_remote and not is_loopback_host(self.address):
            raise ValueError(f"address {self.address!r} is not loopback; set allow_remote = true to {self._shows}")
        return self


class MetricsConfig(_HttpListener):
    """Prometheus ``/metrics`` over HTTP."""

    _shows: ClassVar[str] = "expose metrics"
    enabled: bool = Field(False, description="Serve Prometheus metrics.")
    port: int = Field(9810, ge=1, le=65535, description="Listen port (one per instance).")


class ViewConfig(_HttpListener):
    """The live view: an annotated MJPEG stream per source over HTTP, and an index page (README "Live view")."""

    _shows: ClassVar[str] = "show the cameras to other hosts"
    enabled: bool = Field(False, description="Serve the live view.")
    port: int = Field(9812, ge=1, le=65535, description="Listen port (one per instance).")
    fps: float = Field(5.0, gt=0, le=60, description="Frames per second per watched source, at most (a source's own rate caps it).")
    width: int = Field(960, ge=64, le=7680, description="Frames wider than this are scaled down to it before drawing.")
    jpeg_quality: int = Field(75, ge=10, le=100)
    max_connections: int = Field(16, ge=1, le=256, description="Viewers and page loads served at once; one more is closed.")
    queue_size: int = Field(8, ge=1, le=1024, description="Frames waiting to be drawn; the oldest is dropped (counted) when full.")


class ControlConfig(_Section):
    """The local control socket used by ``trtstream status``."""

    enabled: bool = Field(True, description="Serve the control socket.")
    endpoint: str | None = Field(
        None, description="ipc:///path or tcp://127.0.0.1:PORT; default $RUNTIME_DIRECTORY/control.ipc (systemd)."
    )
    mode: int = Field(0o660, description="Socket file mode: 0o600 or 0o660.")
    allow_remote: bool = Field(False, description="Allow a non-loopback tcp endpoint (no authentication: avoid).")

    @field_validator("mode")
    @classmethod
    def _mode_bits(cls, mode: int) -> int:
        return _socket_mode(mode)

    @field_validator("endpoint")
    @classmethod
    def _real_tcp_address(cls, endpoint: str | None) -> str | None:
        """A tcp endpoint's port is 1..65535 and its host a real address, whatever allow_remote says."""
        if endpoint is not None and endpoint.startswith("tcp://"):
            split_tcp_endpoint(endpoint)
        return endpoint

    @model_validator(mode="after")
    def _endpoint(self) -> "ControlConfig":
        endpoint = self.endpoint
        if endpoint is None:
            return self
        if endpoint.startswith("ipc://@"):
            raise ValueError("endpoint: an abstract ipc socket has no file permissions; use a path")
        if endpoint.startswith("tcp://"):
            host, _port = split_tcp_endpoint(endpoint)
            if not self.allow_remote and not is_loopback_host(host):
                raise ValueError(f"endpoint {endpoint!r} is not loopback; set allow_remote = true to allow it")
        elif not endpoint.startswith("ipc:///"):
            raise ValueError(f"endpoint {endpoint!r} must be ipc:///path or tcp://127.0.0.1:PORT")
        return self


class WatchdogConfig(_Section):
    """How long work may wait with nothing finishing before the systemd watchdog is no longer fed."""

    stall_s: float = Field(
        20.0, gt=0, le=3600, description="Must exceed the slowest batch and publisher.heartbeat_interval_s."
    )


class CurveConfig(_Section):
    """CURVE encryption and client authentication on the publisher's tcp endpoints."""

    enabled: bool = False
    server_secret_key: Path | None = Field(None, description="server.key_secret from `trtstream keys generate` (mode 0600).")
    authorized_clients: Path | None = Field(None, description="Directory of authorised client public keys (*.key).")
    allow_any_client: bool = Field(False, description="Encrypt, but accept any client that knows the server key.")

    @field_validator("server_secret_key", "authorized_clients")
    @classmethod
    def _relative_to_config(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        return _resolve(path, info)

    @model_validator(mode="after")
    def _complete(self) -> "CurveConfig":
        if not self.enabled:
            return self
        if self.server_secret_key is None:
            raise ValueError("server_secret_key is required when CURVE is enabled")
        if (self.authorized_clients is None) == (not self.allow_any_client):
            raise ValueError("set exactly one of authorized_clients and allow_any_client")
        return self


class SecurityConfig(_Section):
    """File modes of local sockets and CURVE for remote ones."""

    ipc_mode: int = Field(0o660, description="Mode of the publisher's ipc socket files: 0o600 or 0o660.")
    curve: CurveConfig = Field(default_factory=CurveConfig)

    @field_validator("ipc_mode")
    @classmethod
    def _mode_bits(cls, mode: int) -> int:
        return _socket_mode(mode)
