"""Word segmentation: a private jieba tokenizer that knows the city's place names and keywords.

A private `jieba.Tokenizer` keeps the city's words out of jieba's global dictionary, so two cities
(or a test's tiny city) never see each other's vocabulary. jieba caches its main dictionary under
the temp directory, which keeps the cold start short after the first run on a machine.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import jieba

jieba.setLogLevel(logging.WARNING)  # the "Building prefix dict..." banner is noise in a CLI


class Segmenter:
    """jieba with a user dictionary; `tokenize` returns (word, start, end) over the given text."""

    def __init__(self, user_words: Iterable[str]):
        self._tokenizer = jieba.Tokenizer()
        self._tokenizer.initialize()
        for word in sorted(set(user_words)):
            if word.strip() and not word.isascii():
                self._tokenizer.add_word(word)

    def tokenize(self, text: str) -> list[tuple[str, int, int]]:
        if text.isascii():
            return []  # English needs no segmentation, and jieba is the slowest step per appeal
        # HMM off: faster, and the HMM mostly glues unknown neighbours onto known place names.
        return list(self._tokenizer.tokenize(text, HMM=False))
