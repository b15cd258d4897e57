"""How log records become lines on stderr (journald under systemd): key=value text, or JSON.

mailnode's lifecycle lines carry their ids as `key=value` words in the message ("smtp
session=submission-3 tx=1 message bytes=512 rcpts=1 reply=250"). The text format prints them as
they are; the JSON format prints one object per line with the message and those words as
fields of their own, so a log shipper needs no parsing rules. Neither adds anything the message
does not hold: no bodies, AUTH lines, keys or tokens are ever logged (CONVENTIONS.md §11).
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import sys
from typing import Literal, TextIO

LogFormat = Literal["text", "json"]

TEXT_FORMAT = "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"
# `key=value` words: a lower-case key, a value up to whitespace or closing punctuation.
_KEY_VALUE = re.compile(r"(?<![\w.=-])([a-z][a-z0-9_]*)=([^\s,;()]+)")
_RESERVED = frozenset({"time", "level", "logger", "msg", "exc"})


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, msg, the message's key=value ids, exc."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        line: dict[str, object] = {
            "time": _utc(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": message,
        }
        for key, value in _KEY_VALUE.findall(message):
            if key not in _RESERVED and key not in line:
                line[key] = int(value) if value.isdigit() and len(value) < 16 else value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, separators=(",", ":"))


def formatter(log_format: LogFormat) -> logging.Formatter:
    """The formatter of `log_format`."""
    if log_format == "json":
        return JsonFormatter()
    return logging.Formatter(TEXT_FORMAT)


def setup_logging(level: str, log_format: LogFormat = "text", stream: TextIO | None = None) -> None:
    """Send every record at `level` and above to stderr, one line each, in `log_format`."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiosmtpd logs every command line at INFO; mailnode logs the lifecycle events itself.
    logging.getLogger("mail.log").setLevel(max(logging.WARNING, root.level))


def _utc(timestamp: float) -> str:
    """ISO 8601 in UTC with milliseconds: 2026-11-23T07:25:38.900Z."""
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
