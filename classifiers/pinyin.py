"""pypinyin, imported without its phrase dictionary.

The phrase dictionary costs ~0.7 s of import and ~100 MB; what homophone typos (翠湖花圆, 幸福佳园)
share with the real name is the reading of each character, which the character table alone gives
(~0.1 s to import). The variables must be set before pypinyin is first imported.
"""

from __future__ import annotations

import os

os.environ.setdefault("PYPINYIN_NO_PHRASES", "1")
os.environ.setdefault("PYPINYIN_NO_DICT_COPY", "1")

from pypinyin import Style, lazy_pinyin  # noqa: E402


def reading(char: str) -> str:
    """Toneless pinyin (ü written v, as on a keyboard); a character without a reading is itself."""
    return lazy_pinyin(char, style=Style.NORMAL, errors="default")[0]


_TONE_MARKS = str.maketrans("āáǎàēéěèīíǐìōóǒòūúǔùǖǘǚǜüńňǹḿ", "aaaaeeeeiiiioooouuuuvvvvvnnnm")


def sound_table() -> dict[int, str]:
    """Every character with a reading -> one private-use character per toneless syllable, for
    `str.translate`: characters read alike become the same character (翠 and 萃 both `cui`), so a
    homophone typo is an exact substring match of the translated text (~50 ns a character)."""
    from pypinyin.pinyin_dict import pinyin_dict

    codes: dict[str, str] = {}
    table: dict[int, str] = {}
    for point, readings in pinyin_dict.items():
        syllable = readings.split(",", 1)[0].translate(_TONE_MARKS)
        table[point] = codes.setdefault(syllable, chr(0xF0000 + len(codes)))  # Supplementary PUA-A
    return table
