"""What a message asks for, and phone masking: small pure functions, tested directly."""

from __future__ import annotations

import logging

import pytest

from gateway.domain.intents import parse_intent
from gateway.logs import MaskingFilter, mask


@pytest.mark.parametrize("text, kind, language, number", [
    ("STOP", "opt_out", "en", None), ("stop", "opt_out", "en", None), ("ＳＴＯＰ", "opt_out", "en", None),
    (" Unsubscribe ", "opt_out", "en", None), ("退订", "opt_out", "zh", None), ("TD", "opt_out", "zh", None),
    ("R", "opt_out", "zh", None), ("START", "opt_in", "en", None), ("订阅", "opt_in", "zh", None),
    ("HELP", "help", "en", None), ("帮助", "help", "zh", None),
    ("2611220007", "status", None, "2611220007"), ("２６１１２２０００７", "status", None, "2611220007"),
    ("261122-0007", "status", None, "2611220007"), ("查询 2611220007", "status", "zh", "2611220007"),
    ("查询：2611220007", "status", "zh", "2611220007"), ("status 2611220007", "status", "en", "2611220007"),
    ("Status", "status", "en", None), ("查询", "status", "zh", None),
    ("STOP the noise at night please", "appeal", "en", None), ("路灯坏了", "appeal", "zh", None),
    ("请查询一下我的低保", "appeal", "zh", None),
    ("你好", "nothing", "zh", None), ("您好，在吗？", "nothing", "zh", None), ("hello!!", "nothing", "en", None),
    ("Hi there", "nothing", "en", None), ("测试", "nothing", "zh", None), ("test 123", "nothing", "en", None),
    ("", "nothing", None, None), ("  ", "nothing", None, None), ("👋", "nothing", None, None),
    ("你好，东湖路路灯坏了", "appeal", "zh", None), ("请问低保怎么办", "appeal", "zh", None),
    ("Hello, the lift is broken", "appeal", "en", None),
])
def test_parse_intent(text, kind, language, number):
    intent = parse_intent(text)
    assert (intent.kind, intent.written_language, intent.case_number) == (kind, language, number)


def test_masking():
    assert mask("+8617033259997") == "+86170****9997"
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "from %s and 13812345678, case %s",
                               ("+8617033259997", "2611220007"), None)
    MaskingFilter().filter(record)
    assert record.getMessage() == "from +86170****9997 and 138****5678, case 2611220007"
