"""One JSON log line format for the brokers and the workers (a log collector parses both the same way).

A line is one JSON object: ``ts`` (RFC 3339, UTC, milliseconds), ``level``, ``logger``, ``service``,
``message`` (the formatted text, the same words the text format prints) and the record's structured
fields (``extra=``: strings, numbers, booleans, null; anything else is written as its ``str``). An
exception adds ``exc_type`` and ``exc_text``. The formatter adds nothing the text format does not show,
so it carries no secret the callers' messages do not.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from typing import Any

LOG_FORMAT_ENV = "CSCORE_LOG_FORMAT"  # `text` (default) or `json`, for processes configured by environment
LOG_FORMATS = ("text", "json")

# Attributes every LogRecord has: anything else on a record came from `extra=` and is a structured field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object per line (see the module docstring for the fields)."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        """The line's fields before encoding; subclasses add their own (a Celery task's id and name)."""
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00",
                                                                                                         "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "service": self.service,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD and not name.startswith("_") and name not in doc:
                doc[name] = value if value is None or isinstance(value, str | int | float | bool) else str(value)
        if record.exc_info and record.exc_info[0] is not None:
            doc["exc_type"] = record.exc_info[0].__name__
            doc["exc_text"] = self.formatException(record.exc_info)
        return doc

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(self.fields(record), ensure_ascii=False, separators=(",", ":"))


def log_format(value: str | None, where: str) -> str:
    """Check a configured log format: `text` or `json` (None: `text`); ValueError naming `where` otherwise."""
    chosen = (value or "text").strip().lower()
    if chosen not in LOG_FORMATS:
        raise ValueError(f"{where}: expected one of {list(LOG_FORMATS)}, got {value!r}")
    return chosen


def env_log_format(environ: Any = os.environ) -> str:
    """The log format `CSCORE_LOG_FORMAT` asks for (ValueError naming the variable if it is neither)."""
    return log_format(environ.get(LOG_FORMAT_ENV), LOG_FORMAT_ENV)
