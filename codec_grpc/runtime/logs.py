"""Logging set-up: ``LOG_LEVEL`` and ``LOG_FORMAT=text|json`` on the standard library.

In JSON mode every line is exactly one JSON object: ``time``, ``level``,
``logger``, ``message``, plus the structured fields a call passed with
``extra={...}`` (the access log's ``grpc_method``, ``grpc_code``, ...), plus
``exception`` (the formatted traceback) when there is one. Tracebacks and
messages with newlines stay inside the one object, so log shippers never split
a record.

What is logged is chosen by the callers, who never pass payload contents or key
material: the access log carries method, status, counts, sizes, duration and
namespace; key rotations carry the master key ARN and the retired key's age.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _RECORD_ATTRS and not name.startswith("_"):
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: an unexpected extra value degrades to its str(), never breaks the line
        return json.dumps(entry, default=str, ensure_ascii=False)


# Control characters a message may carry from a client (a newline in a key id): shown escaped.
_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(32), 127) if code != 9}


class TextFormatter(logging.Formatter):
    """``TEXT_FORMAT``, one line per record: control characters in the line are escaped, so that text
    a client sent cannot forge a log line (a traceback, added after, keeps its lines)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        return super().formatMessage(record).translate(_ESCAPES)


def configure_logging(level: str, fmt: str, stream: TextIO | None = None) -> logging.Handler:
    """Replace the root logger's handlers with one writing ``fmt`` lines to ``stream`` (stderr)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Libraries that log one line per HTTP request (moto's werkzeug, botocore's retries at DEBUG)
    # would drown the access log; their warnings still come through.
    for noisy in ("werkzeug", "botocore", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    return handler
