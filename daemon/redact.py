"""Masking of credentials in source URLs, applied before anything reaches a log, a status or a message.

Camera URLs routinely carry ``user:password@`` and query tokens; a daemon that logs them leaks them into
the journal, heartbeats and every subscriber. ``mask_url`` is used wherever a URI is shown, and
``RedactingFormatter`` is a second line of defence on every formatted log line.

One rule, two parts, the same for every caller (log lines, journal fields, heartbeats, end-of-stream
details, status and control replies):

- **userinfo**: after any ``scheme://`` (any scheme: an unknown or mistyped one such as ``rstp://``
  too, and wherever it appears, e.g. inside a file path that ends in a URL), everything up to the
  **last** ``@`` of the same word is credentials, as FFmpeg reads it (it splits at the last ``@``, so
  ``rtsp://admin:pa@ss@cam/`` is a working URL). The password (after the first ``:``) becomes ``***``
  and may contain ``@``, ``/`` and ``:``; a user name with no password (a token used as the user name)
  is masked whole: ``https://***@host/``. A word ends at whitespace, a quote, ``<``, ``>`` or a
  backtick, so masking never reaches into the next word and never removes a quote. The price: an ``@``
  later in the same URL (``/live@2x``, ``?mail=a@b``) masks everything before it, host included;
  whitespace and quotes in a password must be percent-encoded (RFC 3986 requires it anyway).
- **query values** of credential-like keys (``key``, ``apikey``, ``token``, ``auth``, ``sig``,
  ``signature``, ``password``, ``passwd``, ``pwd``, ``pass``, ``secret``, case-insensitive, also as the
  last ``_``/``-``/``.``-separated part of a longer key: ``api_key``, ``api-key``, ``access_token``,
  ``X-Amz-Signature``, ``client_secret``) after ``?``, ``&`` or ``;``. The masked value ends at ``&``,
  ``;``, ``#``, whitespace, a backslash, or a quote, bracket or paren, so the ``)`` after a URL in a
  log line and the closing quote of a JSON string stay.
"""

from __future__ import annotations

import logging
import re

__all__ = ["mask_url", "mask_text", "RedactingFormatter", "MASK", "SECRET_QUERY_KEYS"]

MASK = "***"
SECRET_QUERY_KEYS = ("password", "passwd", "pwd", "pass", "token", "auth", "apikey", "key", "secret", "signature", "sig")

# What ends a word: a URL's userinfo never runs past it. The scheme is matched from the start of its word
# (the look-behind), so a long word is scanned once, not once per letter; a leading digit is allowed
# ('2rtsp://') so that nothing that FFmpeg might read as a URL escapes.
_WORD_END = "\\s\"'`<>"
_USERINFO = re.compile(rf"(?<![A-Za-z0-9+.-])(?P<scheme>[A-Za-z0-9][A-Za-z0-9+.-]*://)(?P<userinfo>[^{_WORD_END}]*)@")
_SECRET_QUERY = re.compile(
    r"(?P<key>[?&;](?:[A-Za-z0-9]+[_.-])*(?:" + "|".join(SECRET_QUERY_KEYS) + r")=)"
    r"(?P<value>[^&;#\s\\\"'`<>()\[\]{}]*)",
    re.IGNORECASE,
)


def _mask_userinfo(match: re.Match[str]) -> str:
    userinfo = match["userinfo"]
    if not userinfo:  # 'udp://@:1234': no credentials
        return match[0]
    user, colon, password = userinfo.partition(":")
    if colon and password:
        return f"{match['scheme']}{user}:{MASK}@"
    return f"{match['scheme']}{MASK}@"  # a user name alone (or with an empty password) may be the secret


def mask_text(text: str) -> str:
    """``text`` with the credentials of every ``scheme://userinfo@`` and every credential-like query value
    replaced by ``***`` (see the module's docstring for the rule)."""
    text = _USERINFO.sub(_mask_userinfo, text)
    return _SECRET_QUERY.sub(lambda m: f"{m['key']}{MASK}", text)


def mask_url(url: str) -> str:
    """The form of a source URL (or a file path, device or pipeline) that may be shown anywhere."""
    return mask_text(url)


class RedactingFormatter(logging.Formatter):
    """Masks credentials in the fully formatted record, tracebacks included, so no handler ever sees a secret."""

    def format(self, record: logging.LogRecord) -> str:
        return mask_text(super().format(record))
