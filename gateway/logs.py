"""Logging with phone numbers masked: personal data never reaches a log file in full.

GRIDLINE_LOG_FORMAT=json writes one JSON object per line (for a log shipper), carrying the id of
the HTTP request being handled, if any, so one request's lines can be found across a busy log.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re

# E.164 numbers, and bare mainland mobile numbers (11 digits starting 13-19).
PHONE_RE = re.compile(r"\+\d{7,15}|(?<!\d)1[3-9]\d{9}(?!\d)")


def mask(phone: str) -> str:
    """+8617033259997 → +86170****9997: enough to tell numbers apart, not enough to call one."""
    if len(phone) < 8:
        return "*" * len(phone)
    return phone[:-8] + "****" + phone[-4:]


class MaskingFilter(logging.Filter):
    """Masks anything that looks like a phone number in every record, whatever the caller passed."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = mask_all(record.getMessage())
        record.args = None
        if record.exc_info:  # tracebacks quote values too (an SQL error's parameters, a bad number)
            record.exc_text = mask_all(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def mask_all(text: str) -> str:
    return PHONE_RE.sub(lambda m: mask(m.group(0)), text)


REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


class JsonFormatter(logging.Formatter):
    """One line per record; runs after MaskingFilter, so message and traceback are masked already."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                "message": record.getMessage()}
        if (request_id := REQUEST_ID.get()) is not None:
            line["request_id"] = request_id
        if record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, ensure_ascii=False)


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    if os.environ.get("GRIDLINE_LOG_FORMAT", "text") == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(MaskingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for chatty in ("alembic", "httpx", "twilio.http_client"):  # a line per request otherwise
        logging.getLogger(chatty).setLevel(logging.WARNING)
