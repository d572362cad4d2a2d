"""What a resident's message asks for, before any case logic: a keyword, a status query or an appeal.

Residents type on every kind of phone, so text is NFKC-normalised first (full-width ＳＴＯＰ and
ｓｔａｔｕｓ become STOP and status) and keywords match in any case.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

OPT_OUT_WORDS = {"stop": "en", "unsubscribe": "en", "退订": "zh", "td": "zh", "r": "zh"}
OPT_IN_WORDS = {"start": "en", "订阅": "zh"}
HELP_WORDS = {"help": "en", "帮助": "zh"}
STATUS_WORDS = {"status": "en", "查询": "zh"}

CASE_NUMBER_RE = re.compile(r"^\d{6}[-\s]?\d{4,5}$")
STATUS_RE = re.compile(r"^(status|查询)\s*[:：#]?\s*(\d{6}[-\s]?\d{4,5})?$", re.IGNORECASE)
CJK_RE = re.compile(r"[\u3400-\u9fff]")
LATIN_RE = re.compile(r"[A-Za-z]")


@dataclass(frozen=True)
class Intent:
    kind: str  # "opt_out", "opt_in", "help", "status", "appeal"
    written_language: str | None  # "en" / "zh" when the words themselves say so
    case_number: str | None = None


def normalise(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).split())


def canonical_case_number(raw: str) -> str:
    return re.sub(r"[-\s]", "", raw)


def written_language(text: str) -> str | None:
    """English when the text has Latin letters and no Chinese characters; Chinese when it has any."""
    if CJK_RE.search(text):
        return "zh"
    if LATIN_RE.search(text):
        return "en"
    return None


def parse_intent(text: str) -> Intent:
    clean = normalise(text)
    word = clean.lower()
    for kind, words in (("opt_out", OPT_OUT_WORDS), ("opt_in", OPT_IN_WORDS), ("help", HELP_WORDS)):
        if word in words:
            return Intent(kind, words[word])
    if CASE_NUMBER_RE.match(clean):
        return Intent("status", None, canonical_case_number(clean))
    status = STATUS_RE.match(clean)
    if status:
        number = canonical_case_number(status.group(2)) if status.group(2) else None
        return Intent("status", STATUS_WORDS[status.group(1).lower()], number)
    return Intent("appeal", written_language(clean))
