"""Masking of credentials in source URLs, applied before anything reaches a log, a status or a message.

Camera URLs routinely carry ``user:password@`` and query tokens; a daemon that logs them leaks them into
the journal, heartbeats and every subscriber. ``mask_url`` is used wherever a URI is shown, and
``RedactingFormatter`` is a second line of defence on every formatted log line.
"""

from __future__ import annotations

import logging
import re

__all__ = ["mask_url", "mask_text", "RedactingFormatter"]

MASK = "***"
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@/\s]*)@")
_SECRET_QUERY = re.compile(
    r"(?P<key>[?&;](?:password|passwd|pwd|pass|token|access_token|auth|key|secret|signature|sig)=)(?P<value>[^&;#\s]*)",
    re.IGNORECASE,
)


def mask_text(text: str) -> str:
    """Replace the password of every ``scheme://user:password@`` and secret query values in ``text``."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    return _SECRET_QUERY.sub(lambda m: f"{m['key']}{MASK}", text)


def mask_url(url: str) -> str:
    """The form of a source URL that may be shown anywhere."""
    return mask_text(url)


class RedactingFormatter(logging.Formatter):
    """Masks credentials in the fully formatted record, tracebacks included, so no handler ever sees a secret."""

    def format(self, record: logging.LogRecord) -> str:
        return mask_text(super().format(record))
