"""trtstream's exception tree, one place for every failure domain.

    TrtstreamError
    ├── UserError            -- the user can fix it (bad config, missing file, port in use): one line, no traceback
    │   └── ConfigError      -- the config file is invalid; exit code 2
    ├── SourceError          -- a source failed to open or read; contained to that source, never fatal
    ├── BackendError         -- an inference backend failed to load or run
    └── PublisherError       -- ZeroMQ endpoint could not be bound
"""

from __future__ import annotations

__all__ = [
    "TrtstreamError",
    "UserError",
    "ConfigError",
    "SourceError",
    "BackendError",
    "PublisherError",
]


class TrtstreamError(Exception):
    """Base of every error trtstream raises on purpose."""


class UserError(TrtstreamError):
    """A mistake the user can fix; reported as one line without a traceback."""

    exit_code = 1


class ConfigError(UserError):
    """The configuration is invalid. Each problem is one line naming the key path."""

    exit_code = 2

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class SourceError(TrtstreamError):
    """A source could not be opened or read. ``retryable`` says whether reconnecting can help."""

    def __init__(self, message: str, *, retryable: bool = True):
        super().__init__(message)
        self.retryable = retryable


class BackendError(UserError):
    """An inference backend could not load the model or run it."""


class PublisherError(UserError):
    """A publisher endpoint could not be bound (bad address, port in use, no permission)."""
