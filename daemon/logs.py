"""Logging set-up: one handler on stderr (journald captures it under systemd), credentials masked."""

from __future__ import annotations

import json
import logging
import sys

from .config import LoggingConfig
from .redact import RedactingFormatter, mask_text

__all__ = ["configure_logging"]


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "thread": record.threadName,
            "message": mask_text(record.getMessage()),
        }
        if record.exc_info:
            entry["exception"] = mask_text(self.formatException(record.exc_info))
        # Each value is masked before it is encoded: masking the encoded line could cut into its quoting.
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(config: LoggingConfig | None = None, level: str | None = None) -> None:
    config = config or LoggingConfig()
    from .journal import journal_handler

    handler = journal_handler() if config.format == "text" else None  # native journald entries under systemd
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        if config.format == "json":
            handler.setFormatter(JsonFormatter())
        else:
            handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)-7s %(threadName)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level or config.level)
