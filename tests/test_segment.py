"""The segmenter walks jieba's dictionary itself for speed; it must cut exactly as jieba does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from classifiers import build_classifier
from classifiers.normalize import normalize
from classifiers.segment import Segmenter
from gateway.config import Settings
from gateway.domain.city import load_city

CONFIG = Path("config")
SHIPPED = sorted((CONFIG / "classifier").glob("*.jsonl"))
AWKWARD = [
    "", "。", "   ", "a", "路灯坏了", "东湖路47号3栋2单元路灯坏了!!", "wifi密码是abc123吗？",
    "翠湖花园9号楼\r\n楼道灯不亮",
    "住在Cuihu Huayuan 9 building，灯坏了", "电话13800138000，地址东湖路.47号-2", "10%的住户#停水&停电+漏水_x",
    "東湖路47號的路燈壞了", "𠮷野家门口有垃圾😀", "一二三四五六七八九十百千万", "ａｂｃ全角１２３",
]


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    """The classifier's own segmenter: jieba's dictionary plus the city's places and keywords."""
    return build_classifier(load_city(CONFIG / "city"), Settings(config_dir=CONFIG)).segmenter


def jieba_tokens(segmenter: Segmenter, text: str) -> list[tuple[str, int, int]]:
    return [] if text.isascii() else list(segmenter._tokenizer.tokenize(text, HMM=False))


def test_it_cuts_every_shipped_appeal_as_jieba_does(segmenter: Segmenter):
    texts = [json.loads(line)["text"] for path in SHIPPED
             for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(texts) > 3000
    differing = [text for raw in texts for text in (raw, normalize(raw))
                 if segmenter.tokenize(text) != jieba_tokens(segmenter, text)]
    assert differing == []


@pytest.mark.parametrize("text", AWKWARD)
def test_it_cuts_awkward_text_as_jieba_does(segmenter: Segmenter, text: str):
    assert segmenter.tokenize(text) == jieba_tokens(segmenter, text)


def test_tokens_cover_the_text_and_know_the_city(segmenter: Segmenter):
    text = "东湖路47号翠湖花园9号楼楼道灯不亮"
    tokens = segmenter.tokenize(text)
    assert "".join(word for word, _, _ in tokens) == text
    assert all(text[start:end] == word for word, start, end in tokens)
    assert ("翠湖花园", 6, 10) in tokens  # a place of the city is one word, not jieba's 翠湖 + 花园


def test_a_user_word_wins_over_the_dictionarys_cut():
    plain, taught = Segmenter([]), Segmenter(["灯不亮了"])
    assert ("灯不亮了", 0, 4) not in plain.tokenize("灯不亮了吗")
    assert ("灯不亮了", 0, 4) in taught.tokenize("灯不亮了吗")
