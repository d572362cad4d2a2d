"""Strict parsers for every value a person or a program hands Gridline: HTTP, CLI and files alike.

Python's own parsers are generous in ways that hurt a gateway: `str.isdigit()` is true for `²`,
which `int()` refuses; `int()` takes any Unicode digit and any length, which the database does
not; `datetime.fromisoformat("0001-01-01")` parses, and moving it to UTC overflows; `bool("no")`
is True; `json.loads` recurses once per `[`, so 30,000 of them under 64 KiB end in RecursionError.
Each parser here refuses what it cannot use with a `BadValue` saying which value and why, and
callers turn that into a 4xx or a one-line CLI error.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

T = TypeVar("T")


class BadValue(ValueError):
    """A value refused with a reason a person can act on (`name` is the field it came from)."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name} {reason}")
        self.name = name
        self.reason = f"{name} {reason}"


# Row ids are INTEGER columns: 32-bit on PostgreSQL, so anything larger cannot name a row.
MAX_ID = 2**31 - 1
_ASCII_INT = re.compile(r"[+-]?[0-9]{1,100}")  # a long one is out of range, not malformed
# Case numbers carry a two-digit year (YYMMDD...), so no date outside this century means anything here.
EARLIEST = datetime(2000, 1, 1)
LATEST = datetime(2099, 12, 31, 23, 59, 59)
# JSON bodies we accept are a few levels deep (a broadcast's texts, a Telegram update's reply markup).
MAX_JSON_DEPTH = 32
_JSON_STRUCTURE = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)
# NUL cannot be stored in PostgreSQL text; a lone surrogate cannot be encoded as UTF-8 anywhere.
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_CODE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")


def integer(raw: object, name: str, low: int = 0, high: int = MAX_ID) -> int:
    """An integer in [low, high] written in ASCII digits (or a JSON integer); BadValue otherwise."""
    if isinstance(raw, bool):  # JSON true is not 1
        raise BadValue(name, "must be a number")
    if isinstance(raw, int):
        number = raw
    elif isinstance(raw, str) and _ASCII_INT.fullmatch(raw.strip()):
        number = int(raw.strip())
    else:
        raise BadValue(name, "must be a whole number written in digits 0-9")
    if not low <= number <= high:
        raise BadValue(name, f"must be between {low} and {high}")
    return number


def row_id(raw: object, name: str) -> int:
    """A positive database row id."""
    return integer(raw, name, 1, MAX_ID)


def boolean(raw: object, name: str, *, words: bool = True) -> bool:
    """JSON true/false, or (`words`: a flag or a setting) one of true/false, yes/no, on/off, 1/0 in
    any case; never bool("no"). A JSON API passes words=False: its booleans are JSON's own."""
    if isinstance(raw, bool):
        return raw
    if not words:
        raise BadValue(name, "must be true or false (a JSON boolean)")
    if isinstance(raw, str) and raw.strip().lower() in TRUE_WORDS:
        return True
    if isinstance(raw, str) and raw.strip().lower() in FALSE_WORDS:
        return False
    raise BadValue(name, "must be true or false")


def moment(raw: object, name: str, timezone: str) -> datetime:
    """An ISO 8601 date or time as naive UTC (local time in `timezone` unless it has an offset),
    between 2000 and 2099."""
    if not isinstance(raw, str) or not raw.isascii() or len(raw) > 64:
        raise BadValue(name, "must be an ISO 8601 date or time such as 2026-11-01 or 2026-11-01T09:00")
    try:
        parsed = datetime.fromisoformat(raw.strip())
    except ValueError as bad:
        raise BadValue(name, "must be an ISO 8601 date or time such as 2026-11-01 or 2026-11-01T09:00") from bad
    # Checked on the wall-clock value first: an offset or zone cannot overflow a date in this range.
    if not EARLIEST <= parsed.replace(tzinfo=None) <= LATEST:
        raise BadValue(name, f"must be between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d}")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=ZoneInfo(timezone))
    return parsed.astimezone(UTC).replace(tzinfo=None)


def text(raw: object, name: str, max_length: int) -> str:
    """A string that can be stored: at most `max_length` characters, no NUL, no lone surrogate."""
    if not isinstance(raw, str):
        raise BadValue(name, "must be a string")
    if len(raw) > max_length:
        raise BadValue(name, f"is longer than {max_length} characters")
    if UNSTORABLE.search(raw):
        raise BadValue(name, "contains a NUL or an unpaired surrogate, which cannot be stored")
    return raw


def storable(value: Any) -> Any:
    """`value` with every NUL and lone surrogate in its strings (lists and dicts too) made U+FFFD:
    for a message already received, where refusing would lose the rest of what the person wrote."""
    if isinstance(value, str):
        return UNSTORABLE.sub("\ufffd", value)
    if isinstance(value, list | tuple):
        return [storable(item) for item in value]
    if isinstance(value, dict):
        return {storable(key): storable(item) for key, item in value.items()}
    return value


def known_only(names: Iterable[str], allowed: Iterable[str], what: str = "query parameter") -> None:
    """Refuse a name the caller cannot have meant (`?limt=5` silently ignored would mislead them)."""
    unknown = sorted(set(names) - set(allowed))
    if unknown:
        raise BadValue(f"unknown {what}", f"{unknown[0][:40]!r}: use {', '.join(sorted(allowed)) or 'none'}")


def code(raw: object, name: str) -> str:
    """A code from the city's tables or the lifecycle (QH-DH-01-01, sanitation, in_progress)."""
    if not isinstance(raw, str) or not _CODE.fullmatch(raw):
        raise BadValue(name, "must be a code of at most 64 letters, digits, and . _ -")
    return raw


def json_depth_ok(data: bytes, max_depth: int = MAX_JSON_DEPTH) -> bool:
    """Whether no array or object in `data` nests deeper than `max_depth`, found without recursion.

    Strings are skipped whole by the pattern (brackets inside them do not count); the scan stops
    at the first level too deep, so 30,000 `[` cost as much as 33.
    """
    if data.count(b"[") + data.count(b"{") <= max_depth:
        return True
    depth = 0
    for match in _JSON_STRUCTURE.finditer(data):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth > max_depth:
                return False
        elif token in (b"]", b"}"):
            depth -= 1
    return True


def load_json(data: bytes, name: str = "body", max_depth: int = MAX_JSON_DEPTH) -> Any:
    """UTF-8 JSON nested at most `max_depth` deep; BadValue for anything else."""
    if not json_depth_ok(data, max_depth):
        raise BadValue(name, f"nests deeper than {max_depth} levels")
    try:
        return json.loads(data)
    except ValueError as bad:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not UTF-8
        raise BadValue(name, f"is not JSON: {bad}") from bad


def argument(parse: Callable[[str], T]) -> Callable[[str], T]:
    """`parse` as an argparse type: a BadValue becomes argparse's own one-line error and exit 2."""
    def checked(raw: str) -> T:
        try:
            return parse(raw)
        except BadValue as bad:
            raise argparse.ArgumentTypeError(bad.reason) from bad

    return checked
