"""What a resident's message asks for, before any case logic: a keyword, a status query, nothing
yet (a greeting, a test, an empty message) or an appeal.

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

# Messages made only of these (and punctuation, emoji, spaces) ask for nothing yet: people open
# with a greeting or try the number out. They get a question back, never a case.
GREETING_WORDS = {
    "你好": "zh", "您好": "zh", "你们好": "zh", "在吗": "zh", "在不在": "zh", "有人吗": "zh", "有人在吗": "zh",
    "喂": "zh", "哈喽": "zh", "嗨": "zh", "早上好": "zh", "上午好": "zh", "下午好": "zh", "晚上好": "zh", "早": "zh",
    "测试": "zh", "试一下": "zh", "试试": "zh", "测试一下": "zh", "请问": "zh", "打扰了": "zh", "老师好": "zh",
    "hi": "en", "hello": "en", "hey": "en", "hi there": "en", "hello there": "en", "test": "en", "testing": "en",
    "good morning": "en",
    "good afternoon": "en", "good evening": "en", "anyone there": "en", "is anyone there": "en",
}
_GREETINGS_LONGEST_FIRST = sorted(GREETING_WORDS, key=len, reverse=True)
_NOT_WORDS = re.compile(r"[\W_]+")
_DIGITS = re.compile(r"\d+")
CASE_NUMBER_RE = re.compile(r"^\d{6}[-\s]?\d{4,5}$")
STATUS_RE = re.compile(r"^(status|查询)\s*[:：#]?\s*(\d{6}[-\s]?\d{4,5})?$", re.IGNORECASE)
CJK_RE = re.compile(r"[\u3400-\u9fff]")
LATIN_RE = re.compile(r"[A-Za-z]")


@dataclass(frozen=True)
class Intent:
    kind: str  # "opt_out", "opt_in", "help", "status", "nothing" (greeting, test, empty), "appeal"
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
    nothing = asks_nothing(clean)
    if nothing is not None:
        return Intent("nothing", nothing or written_language(clean))
    return Intent("appeal", written_language(clean))


def asks_nothing(text: str) -> str | None:
    """For a message that is only greetings, test words, punctuation or emoji: the language of its
    words ("" when it has none); None for anything else.

    The words are matched greedily from the start, longest first, so 你好在吗 and "hello hi" count.
    """
    rest = _NOT_WORDS.sub(" ", text.lower()).strip()
    languages = set()
    while rest:
        digits = _DIGITS.match(rest)
        if digits and languages:  # "test 123": a number after a test word is part of the test
            rest = rest[digits.end():].strip()
            continue
        word = next((w for w in _GREETINGS_LONGEST_FIRST if rest.startswith(w)), None)
        if word is None:
            return None
        languages.add(GREETING_WORDS[word])
        rest = rest[len(word):].strip()
    return languages.pop() if len(languages) == 1 else ""
