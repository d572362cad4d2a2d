"""Phone numbers, parsed by Google's libphonenumber (the `phonenumbers` package) at every entry.

A number written without a country code (`17033259997`, `0788 531 373`) is read in the city's
default region; whatever does not parse as a possible number of a real country is refused, so no
case is ever opened for a sender nobody can answer.
"""

from __future__ import annotations

import re

import phonenumbers

MAX_LENGTH = 64  # characters; libphonenumber itself refuses inputs past 250
# What people write in a phone number; libphonenumber alone would also dig one out of `whatsapp:+1...`.
_WRITTEN = re.compile(r"\+?[0-9 ().\-]+")


class NotAPhoneNumber(ValueError):
    """The text is not a phone number we could send an SMS to; the message says why."""


def to_e164(raw: str, region: str | None = None) -> str:
    """`raw` as E.164 (`+8617033259997`), or NotAPhoneNumber."""
    if not isinstance(raw, str) or not raw.strip():
        raise NotAPhoneNumber("no phone number given")
    if len(raw) > MAX_LENGTH:
        raise NotAPhoneNumber(f"a phone number has at most {MAX_LENGTH} characters")
    if not _WRITTEN.fullmatch(raw.strip()):
        raise NotAPhoneNumber("a phone number has only digits, spaces, ( ) . - and a leading +")
    try:
        number = phonenumbers.parse(raw, region.upper() if region else None)
    except phonenumbers.NumberParseException as error:
        raise NotAPhoneNumber(f"not a phone number: {error._msg}") from error
    if not phonenumbers.is_possible_number(number):
        raise NotAPhoneNumber("not a possible phone number (wrong length for its country)")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
