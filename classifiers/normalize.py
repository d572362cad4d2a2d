"""Text normalisation shared by the gazetteer and the text model.

Residents type full-width digits, Chinese numerals (一百零二号) and mixed case; the gazetteer and
the model should see one spelling of each, so both go through `normalize`.
"""

from __future__ import annotations

import re
import unicodedata

_DIGITS = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7,
           "八": 8, "九": 9}
_UNITS = {"十": 10, "百": 100, "千": 1000}
# A Chinese numeral directly before an address unit: 一百零二号, 三号楼, 十五栋, 三组, 五单元.
_ADDRESS_NUMERAL = re.compile(r"[零〇一二两三四五六七八九十百千]+(?=号|栋|幢|座|单元|组|室|层|楼)")


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
    """NFKC (full-width digits and brackets to ASCII), lower case, Chinese address numerals to digits."""
    text = unicodedata.normalize("NFKC", text).lower()
    return _ADDRESS_NUMERAL.sub(lambda m: str(chinese_to_int(m.group())), text)
