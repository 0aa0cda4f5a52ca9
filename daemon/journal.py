"""Structured logging to journald, when the daemon runs under systemd with systemd-python installed.

journald already captures stderr line by line, but a native entry carries fields: ``journalctl
SOURCE_ID=cam3`` or ``TRTSTREAM_INSTANCE=gpu1`` filters one camera or one instance, the level becomes
``PRIORITY`` (so ``journalctl -p warning`` works), and a multi-line traceback stays one entry.

systemd-python's own ``JournalHandler`` forwards ``str(record.args)`` as ``CODE_ARGS`` and every record
attribute unfiltered: the raw arguments of ``log.info("opening %s", uri)`` would put a camera password
in the journal. This handler sends only the formatted, masked message and the ``extra`` fields, each
value masked with :func:`daemon.redact.mask_text`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from .redact import mask_text

__all__ = ["JournalFieldsHandler", "journal_handler", "stderr_is_journal"]

_FIELD = re.compile(r"[A-Z0-9][A-Z0-9_]{0,63}")
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}
_PRIORITY = ((logging.DEBUG, 7), (logging.INFO, 6), (logging.WARNING, 4), (logging.ERROR, 3), (logging.CRITICAL, 2))

Sender = Callable[..., Any]


def stderr_is_journal(environ: Mapping[str, str] | None = None, fd: int = 2) -> bool:
    """True when ``fd`` is still the stream systemd connected to the journal (``$JOURNAL_STREAM`` is
    ``DEVICE:INODE`` of it; a redirected stderr, e.g. in a shell, no longer matches)."""
    env = os.environ if environ is None else environ
    expected = env.get("JOURNAL_STREAM")
    if not expected:
        return False
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


def _priority(levelno: int) -> int:
    for level, priority in _PRIORITY:
        if levelno <= level:
            return priority
    return 1  # above CRITICAL: alert


class JournalFieldsHandler(logging.Handler):
    """Sends each record as a native journal entry with masked message and masked ``extra`` fields.

    ``extra={"source_id": "cam1"}`` becomes ``SOURCE_ID=cam1``; names that are not valid journal fields
    after upper-casing (or that would shadow trusted ``_FIELDS``) are dropped. ``fields`` are added to
    every entry (``TRTSTREAM_INSTANCE``, ``SYSLOG_IDENTIFIER``)."""

    def __init__(self, fields: Mapping[str, str] | None = None, *, sender: Sender | None = None, level: int = logging.NOTSET):
        super().__init__(level)
        if sender is None:
            from systemd import journal

            sender = journal.send
        self._send = sender
        self._fields = {"SYSLOG_IDENTIFIER": "trtstream", **(fields or {})}
        for name in self._fields:
            if not _FIELD.fullmatch(name):
                raise ValueError(f"invalid journal field name {name!r}")
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def fields(self) -> Mapping[str, str]:
        """The fields added to every entry."""
        return dict(self._fields)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, Any] = dict(self._fields)
            for key, value in record.__dict__.items():
                if key in _STANDARD or value is None:
                    continue
                name = key.upper()
                if _FIELD.fullmatch(name):
                    fields[name] = mask_text(str(value))
            fields.update(
                PRIORITY=str(_priority(record.levelno)),
                LOGGER=record.name,
                THREAD_NAME=record.threadName or "",
                CODE_FILE=record.pathname,
                CODE_LINE=record.lineno,
                CODE_FUNC=record.funcName,
            )
            self._send(mask_text(self.format(record)), **fields)
        except Exception:
            self.handleError(record)


def journal_handler(environ: Mapping[str, str] | None = None, *, fd: int = 2) -> logging.Handler | None:
    """A :class:`JournalFieldsHandler` when systemd-python is installed and stderr goes to the journal;
    else None (the caller keeps its stderr handler). ``$TRTSTREAM_INSTANCE`` (set by the template unit
    from ``%i``) is added to every entry."""
    env = os.environ if environ is None else environ
    if not stderr_is_journal(env, fd):
        return None
    try:
        from systemd import journal  # noqa: F401
    except ImportError:
        return None
    fields = {"TRTSTREAM_INSTANCE": env["TRTSTREAM_INSTANCE"]} if env.get("TRTSTREAM_INSTANCE") else {}
    return JournalFieldsHandler(fields)
