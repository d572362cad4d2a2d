"""Text normalisation shared by the gazetteer and the text model.

Residents type full-width digits, Chinese numerals (一百零二号), mixed case and, in Hong Kong,
Taiwan or by habit, Traditional characters (東湖路47號); the gazetteer and the model should see one
spelling of each, so both go through `normalize`. OpenCC's `t2s` converter is a compiled library
with its dictionaries inside the wheel: ~20 ms to load, ~3-6 µs per appeal.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from functools import cache

import ahocorasick
import opencc

_DIGITS = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7,
           "八": 8, "九": 9}
_UNITS = {"十": 10, "百": 100, "千": 1000}
# A Chinese numeral directly before an address unit: 一百零二号, 三号楼, 十五栋, 三组, 五单元.
_ADDRESS_NUMERAL = re.compile(r"[零〇一二两三四五六七八九十百千]+(?=号|栋|幢|座|单元|组|室|层|楼)")
_TO_SIMPLIFIED = opencc.OpenCC("t2s")
_LATIN_RUN = re.compile(r"[a-z0-9]+")


def chinese_to_int(numeral: str) -> int:
    """Value of a Chinese numeral: positional (一百零二, 十五, 二十一) or digit by digit (一零二)."""
    if not any(ch in _UNITS for ch in numeral):
        return int("".join(str(_DIGITS[ch]) for ch in numeral))
    total, digit = 0, 0
    for ch in numeral:
        if ch in _DIGITS:
            digit = _DIGITS[ch]
        else:
            total += (digit or 1) * _UNITS[ch]
            digit = 0
    return total + digit


def normalize(text: str) -> str:
    """NFKC (full-width digits and brackets to ASCII), Simplified characters, lower case, Chinese
    address numerals to digits."""
    text = _TO_SIMPLIFIED.convert(unicodedata.normalize("NFKC", text)).lower()
    return _ADDRESS_NUMERAL.sub(lambda m: str(chinese_to_int(m.group())), text)


def squeeze(text: str) -> tuple[str, list[int], list[tuple[int, int]]]:
    """Latin letters and digits of normalised text without the spaces and punctuation between them,
    the position in `text` of each kept character, and where each word starts and ends in the
    squeezed string.

    Residents write one name as "Cuihu Huayuan", "cuihuhuayuan" or "Cui-hu Garden"; compared
    squeezed, the spacing stops mattering. Any other character becomes "|", which no name holds.
    """
    kept: list[str] = []
    where: list[int] = []
    words: list[tuple[int, int]] = []
    last = -2
    for run in _LATIN_RUN.finditer(text):
        if last >= 0 and not text[last:run.start()].isascii():
            kept.append("|")
            where.append(last)
        words.append((len(where), len(where) + run.end() - run.start()))
        kept.append(run.group())
        where.extend(range(run.start(), run.end()))
        last = run.end()
    return "".join(kept), where, words


def any_character_of(characters: Iterable[str]) -> re.Pattern[str]:
    """A pattern matching any one of `characters` (none: a pattern that never matches). Scanning
    for where a name or phrase may begin with it skips the other positions at C speed."""
    chosen = "".join(sorted(characters))
    return re.compile(f"[{re.escape(chosen)}]" if chosen else "(?!)")


class PhraseFinder:
    """Every occurrence of a fixed set of phrases (keywords, place names) in a text, overlapping ones
    included, in one Aho-Corasick pass (pyahocorasick, in C): ~1 µs for an SMS-length appeal, where
    trying each phrase at each position in Python took tens of µs (hundreds for an English appeal)."""

    def __init__(self, phrases: Iterable[str]):
        self._automaton = ahocorasick.Automaton()
        for phrase in phrases:
            self._automaton.add_word(phrase, len(phrase))
        if len(self._automaton):  # an automaton with no phrases cannot be built or searched
            self._automaton.make_automaton()

    def spans(self, text: str) -> list[tuple[int, int]]:
        """(start, end) of every occurrence, left to right, shorter first where several start."""
        if not len(self._automaton):
            return []
        return sorted((last + 1 - length, last + 1) for last, length in self._automaton.iter(text))


@cache
def syllable(char: str) -> str:
    """The toneless pinyin of one character (its most common reading), or the character itself."""
    from classifiers.pinyin import reading

    return reading(char)


def romanize(text: str) -> str:
    """Pinyin of a Chinese name without spaces or tones (翠湖花园 -> cuihuhuayuan)."""
    return "".join(syllable(ch) for ch in text)
