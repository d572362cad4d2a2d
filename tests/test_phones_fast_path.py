"""`to_e164` skips libphonenumber's full parse for input already in E.164 (every Twilio `From`):
it must give exactly what the full parse gives, or hand over to it."""

from __future__ import annotations

import random

import phonenumbers
import pytest

from adapters.phones import NotAPhoneNumber, _already_e164, to_e164


def full_parse(raw: str) -> str | None:
    try:
        number = phonenumbers.parse(raw, None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


@pytest.mark.parametrize(("raw", "fast"), [
    ("+8617033259997", "+8617033259997"),  # a mainland mobile: the common case
    ("+12025550123", "+12025550123"),
    ("+390612345678", None),  # Italy keeps a leading zero: the full parse knows how
    ("+86112701964618", None),  # starts like a Chinese carrier prefix the full parse strips
    ("+67281266", None),  # Norfolk Island's national prefix for parsing
    ("+2612429068", None),  # Madagascar's
    ("+86123", None),  # too short for China: the full parse says why
    ("+0123456789", None),  # not E.164 at all
])
def test_the_fast_path_takes_only_what_it_can_vouch_for(raw: str, fast: str | None) -> None:
    assert _already_e164(raw) == fast


def test_the_fast_path_agrees_with_the_full_parse() -> None:
    draw = random.Random(20261203)
    for _ in range(5_000):
        raw = "+" + str(draw.randint(1, 9)) + "".join(draw.choice("0123456789") for _ in range(draw.randint(6, 14)))
        fast = _already_e164(raw)
        if fast is not None:
            assert fast == full_parse(raw), raw
        try:
            assert to_e164(raw) == full_parse(raw), raw
        except NotAPhoneNumber:
            assert full_parse(raw) is None, raw
