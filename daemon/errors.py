"""trtstream's exception tree, one place for every failure domain.

    TrtstreamError           -- exit code 1 unless a subclass says otherwise
    ├── UserError            -- the user can fix it (bad config, missing file, port in use): one line, no traceback
    │   ├── ConfigError      -- the config file is invalid; exit code 2
    │   ├── ModelConfigError -- the model settings do not fit the model file's tensors or labels
    │   └── UsageError       -- an argument is invalid (an endpoint, a key file given on the command line); exit code 2
    ├── SourceError          -- a source failed to open or read; contained to that source, never fatal
    ├── BackendError         -- an inference backend failed to load or run (CudaError included)
    └── PublisherError       -- ZeroMQ endpoint could not be bound

A UserError is a mistake the user can fix; a BackendError or PublisherError is a failure of the
environment or of a backend (a CUDA call, a driver, an endpoint that cannot be bound), so it is not one, and code
that asks "is this the user's fault?" must not see it as such. The command line still reports every
TrtstreamError the same way: one ``trtstream: error:`` line per message line, no traceback, ``exit_code``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "TrtstreamError",
    "UserError",
    "ConfigError",
    "ModelConfigError",
    "UsageError",
    "SourceError",
    "BackendError",
    "PublisherError",
]


class TrtstreamError(Exception):
    """Base of every error trtstream raises on purpose; the command reports it as one line per message
    line, without a traceback, and exits ``exit_code``."""

    exit_code = 1


class UserError(TrtstreamError):
    """A mistake the user can fix; reported as one line without a traceback."""

    exit_code = 1


class ConfigError(UserError):
    """The configuration is invalid. Each problem is one line naming the key path."""

    exit_code = 2

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class ModelConfigError(UserError):
    """``[model]`` settings that do not fit the model file itself (its inputs, outputs or labels): found
    only once the model's tensors are read, so not by the schema. ``key`` names the setting to change and
    ``detail`` says why, so ``check-config`` prints its usual ``file: key: detail`` line (exit 2); the
    message itself is what ``trtstream run`` has always printed, prefixed with the model file or the key."""

    def __init__(self, key: str, detail: str, *, model: Path | None = None):
        self.key = key
        self.detail = detail
        super().__init__(f"{model}: {detail}" if model is not None else f"{key}: {detail}")


class UsageError(UserError):
    """An argument names something unusable (an endpoint without a transport, a missing key file): the
    command line is wrong, so it exits 2 like argparse's own errors, not 1 like a failure at run time."""

    exit_code = 2


class SourceError(TrtstreamError):
    """A source could not be opened or read. ``retryable`` says whether reconnecting can help."""

    def __init__(self, message: str, *, retryable: bool = True):
        super().__init__(message)
        self.retryable = retryable


class BackendError(TrtstreamError):
    """An inference backend could not load the model or run it."""


class PublisherError(TrtstreamError):
    """A publisher endpoint could not be bound (bad address, port in use, no permission)."""
