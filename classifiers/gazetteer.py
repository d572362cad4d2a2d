"""Where an appeal is: the gazetteer places it names, resolved to a level-3 grid.

The resolution rules are the normative ones of the city README:
1. `<compound><n>号楼`: the building row `<compound><n>号楼`, else the range row `<compound><lo>-<hi>号楼`
   containing n, else the compound row;
2. `<road><n>号`: the road segment whose range contains n on the matching side (单号 odd, 双号 even);
3. otherwise the longest name or alias found in the text (longer before shorter);
4. a bare name shared by several grids (a road without a house number) is ambiguous.

An alias that names a kind of place (人民医院, 镇政府, 一中, "People's Hospital") exists in every
city: it decides a grid only when the appeal is otherwise known to be about this city (the sender
is registered here, or the text names one of its areas or another of its places). An appeal that
names no place of this city gets the sender's grid or none, never a guess.

Everything is derived from the city's places.csv: road segments are recognised by their name
`<road><lo>-<hi>号[(单号|双号)]`, building rows by `<base><n>号楼` / `<base><lo>-<hi>号楼`. Besides
`name_en`, every Chinese name and alias gets its pinyin as a Latin name (翠湖花园 -> cuihuhuayuan);
Latin names are compared with spaces and punctuation squeezed out, so "Cuihu Huayuan" and
"cuihuhuayuan" both match. Names are found by an exact longest-match scan first (a dictionary
keyed by first character). Only when nothing matched exactly: names read the same in pinyin
(翠湖花圆, homophone typos), then rapidfuzz among a handful of candidates (one wrong character).
"""

from __future__ import annotations

import bisect
import math
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from rapidfuzz import fuzz

from classifiers.normalize import PhraseFinder, any_character_of, normalize, romanize, squeeze
from classifiers.pinyin import sound_table
from classifiers.segment import Segmenter
from gateway.domain.city import Place

_BUILDING_ROW = re.compile(r"^(?P<base>.+?)(?P<lo>\d+)(?:-(?P<hi>\d+))?号楼$")
_SEGMENT_ROW = re.compile(r"^(?P<road>.+?)(?P<lo>\d+)-(?P<hi>\d+)号(?:\((?P<side>单号|双号)\))?$")
_SEGMENT_EN = re.compile(r"^(?P<road>.+?) no\. ?\d+")
_LATIN_LETTER = re.compile(r"[a-z]")
# How English street names are shortened in writing; every English name gets its short form too.
_ABBREVIATIONS = {"road": "rd", "avenue": "ave", "street": "st", "lane": "ln", "boulevard": "blvd"}
_ABBREVIATION = re.compile(r"\b(?:" + "|".join(_ABBREVIATIONS) + r")\b")
_SIDE_PARITY = {"单号": 1, "双号": 0}

# Numbers next to a matched name (the text is normalised: digits, lower case).
_UNIT_AFTER = re.compile(r"(?:小区)?\s*第?(\d+)\s*(?:号楼|号|栋|幢|座|#)")
_UNIT_AFTER_EN = re.compile(r"[\s,]*(?:building|bldg\.?|block|tower)\s*(?:no\.?\s*)?(\d+)")
_UNIT_BEFORE_EN = re.compile(r"(?:building|bldg\.?|block|tower)\s*(?:no\.?\s*)?(\d+)\s*(?:of|in|at|,)?\s*(?:the\s*)?$")
_HOUSE_AFTER = re.compile(r"\s*第?(\d+)\s*号")
_HOUSE_AFTER_EN = re.compile(r"[\s,.]*(?:(?:near|at|outside|by|opposite|between|around)\s+)?"
                             r"(?:(?:no\.?|number|#)\s*)?(\d+)"
                             r"(?![\d.:]|\s*(?:st|nd|rd|th|days?|hours?|weeks?|months?|years?|times|am|pm|minutes?)\b)")
_HOUSE_BEFORE_EN = re.compile(r"(?:no\.?\s*|#)?(\d+)[\s,]*$")

SHORT_ALIAS = 2  # CJK names this short must be a whole jieba word (一小 in 一小时 is not a school)
FUZZY_MIN_CJK = 4  # shorter names are too easily confused by one wrong character
FUZZY_MIN_LATIN = 8
HOMOPHONE_MIN = 3  # syllables; two-syllable homophones are everyday words too often
PINYIN_MIN = 5  # letters of a derived pinyin name ("hubin"); shorter ones are English words too often
HOMOPHONE_SCORE = 100.0  # a homophone outranks any one-wrong-character match
_ADMIN_AND_ORDINALS = set("区镇市县乡第零〇一二两三四五六七八九十0123456789")
LATIN_CUTOFF = 90.0  # one or two wrong letters in a name of ten or more


@dataclass(frozen=True)
class Segment:
    place: Place
    lo: int
    hi: int
    parity: int | None  # 1 odd side, 0 even side, None both sides

    def holds(self, number: int) -> bool:
        return self.lo <= number <= self.hi and (self.parity is None or number % 2 == self.parity)


@dataclass(frozen=True)
class Road:
    name: str
    segments: tuple[Segment, ...]

    @property
    def grids(self) -> tuple[str, ...]:
        return tuple(sorted({s.place.grid_code for s in self.segments}))


@dataclass(frozen=True)
class Mention:
    """A place named in the text: resolved to one place, or several candidate grids."""

    start: int
    end: int
    place: Place | None
    grids: tuple[str, ...]
    kind_only: bool = False  # named by an alias that names a kind of place (人民医院, 一中)


@dataclass(frozen=True)
class Location:
    grid: str | None
    place: str | None  # the gazetteer name of the place the grid comes from, if any
    candidates: tuple[str, ...] = ()  # candidate grids of an ambiguous mention


class Gazetteer:
    def __init__(self, places: Iterable[Place], areas: Iterable[str] = (), segmenter: Segmenter | None = None,
                 place_kinds: Iterable[str] = ()):
        """`areas`: names of the district, streets, communities and villages (Chinese or English),
        which are not places of their own but say the appeal is about this city. `place_kinds`:
        words naming a kind of place (医院, 小学, hospital), from config/classifier/keywords.json."""
        self.segmenter = segmenter
        self._areas = {normalize(a) for a in areas if a.strip()}
        self._latin_areas = {squeeze(a)[0] for a in self._areas if a.isascii()}
        self._kinds = {normalize(k) for k in place_kinds}
        self._kind_only: set[str] = set()
        self._latin: dict[str, list[Place | Road]] = defaultdict(list)
        self._by_name: dict[str, Place] = {}
        self._units: dict[str, dict[int, Place]] = defaultdict(dict)
        self._ranges: dict[str, list[tuple[int, int, Place]]] = defaultdict(list)
        self._base_of: dict[str, str] = {}
        self._single_buildings: set[str] = set()
        self._key_of: dict[str, str] = {}  # a place's name -> its normalised key, looked up per mention
        self._surfaces: dict[str, list[Place | Road]] = defaultdict(list)
        self._latin_plain: dict[str, str] = {}  # a Latin name as written -> its squeezed key
        segments: dict[str, list[Segment]] = defaultdict(list)
        english_roads: dict[str, str] = {}
        for place in places:
            key = self._key_of[place.name] = normalize(place.name)
            self._by_name[key] = place
            building = _BUILDING_ROW.match(key)
            segment = _SEGMENT_ROW.match(key) if place.kind == "road_segment" else None
            if segment:
                road = segment["road"]
                side = _SIDE_PARITY.get(segment["side"] or "")
                segments[road].append(Segment(place, int(segment["lo"]), int(segment["hi"]), side))
                english = _SEGMENT_EN.match(normalize(place.name_en))
                if english:
                    english_roads[english["road"]] = road
                self._add(place.name, place)
                for alias in place.aliases:
                    if normalize(alias) != road:
                        self._add(alias, place)
                continue
            if building:
                base = building["base"]
                self._base_of[key] = base
                if building["hi"]:
                    self._ranges[base].append((int(building["lo"]), int(building["hi"]), place))
                else:
                    self._units[base][int(building["lo"])] = place
                    self._single_buildings.add(key)
            self._add(place.name, place, kind_only=False)  # a place's own name is its city's
            if place.name_en:
                self._add(place.name_en, place, kind_only=False)
            for alias in place.aliases:
                self._add(alias, place)
        for name, segs in segments.items():
            road = Road(name, tuple(segs))
            self._add(name, road)
        for english, name in english_roads.items():
            self._add(english, next(t for t in self._surfaces[name] if isinstance(t, Road)))
        for surface, targets in list(self._surfaces.items()):
            if not surface.isascii() and not any(ch.isdigit() for ch in surface):
                pinyin = romanize(surface)
                if pinyin.isascii() and len(pinyin) >= PINYIN_MIN:
                    for target in targets:
                        self._add(pinyin, target, kind_only=surface in self._kind_only)
        # Every occurrence of every name in one pass: Chinese over the text, Latin over its squeezed form.
        self._chinese_names = PhraseFinder(self._surfaces)
        self._latin_names = PhraseFinder(self._latin)
        self._build_fuzzy_index()

    def _add(self, surface: str, target: Place | Road, kind_only: bool | None = None) -> None:
        """Index one written form of a place. Whether it names only a kind of place is computed for
        aliases; a derived pinyin name inherits it from the Chinese one."""
        key = normalize(surface).strip()
        if not key:
            return
        if kind_only is None:
            kind_only = self._names_a_kind(key)
        if key.isascii():
            abbreviated = _ABBREVIATION.sub(lambda m: _ABBREVIATIONS[m.group()], key)
            if abbreviated != key:  # residents write "Donghu Rd" for Donghu Road
                self._add(abbreviated, target, kind_only)
            table, key = self._latin, squeeze(key)[0]
            self._latin_plain.setdefault(normalize(surface).strip(), key)
        else:
            table = self._surfaces
        if target not in table[key]:
            table[key].append(target)
        if kind_only:
            self._kind_only.add(key)

    def _names_a_kind(self, key: str) -> bool:
        """True when the name is made only of kind-of-place words, admin levels and ordinals
        (区人民医院, 镇小, 第一中学, people's hospital): it could be in any city."""
        if key.isascii():
            words = [w for w in re.findall(r"[a-z]+", key.replace("'s", "")) if w != "the"]
            return bool(words) and all(w in self._kinds for w in words)
        rest = "".join(ch for ch in key if ch not in _ADMIN_AND_ORDINALS)
        covered = [True] + [False] * len(rest)  # covered[i]: rest[:i] is a run of kind words
        for end in range(1, len(rest) + 1):
            covered[end] = any(covered[start] and rest[start:end] in self._kinds for start in range(end))
        return covered[-1]

    @property
    def words(self) -> list[str]:
        """Chinese names and aliases, for the segmenter's user dictionary."""
        return [s for s in self._surfaces if not s.isascii()]

    # -- exact matching -------------------------------------------------------------------------

    def mentions(self, text: str, tokens: list[tuple[str, int, int]] | None = None) -> list[Mention]:
        """Places named in normalised `text`, left to right, longest name first at each position."""
        spans: set[tuple[int, int]] | None = None
        found: list[Mention] = []
        pos = 0
        for start, ends in _longest_first(self._chinese_names.spans(text)):
            if start < pos:
                continue
            for end in ends:
                if not self._at_word_edges(text, start, end):
                    continue
                if end - start <= SHORT_ALIAS:
                    if spans is None:
                        spans = self._word_spans(text, tokens)
                    if (start, end) not in spans:
                        continue
                surface = text[start:end]
                hit = self._resolve(self._surfaces[surface], text, start, end, surface)
                found.append(hit)
                pos = hit.end
                break
        if _LATIN_LETTER.search(text):
            found = _merge(found, self._latin_mentions(text))
        return found

    def _latin_mentions(self, text: str) -> list[Mention]:
        """Latin names (English, pinyin) as whole words, compared with the spacing squeezed out:
        a name starts where a word starts and ends where a word ends, longest first."""
        squeezed, where, words = squeeze(text)
        starts = {start for start, _ in words}
        ends = {end for _, end in words}
        found: list[Mention] = []
        covered = 0  # squeezed position up to which a found name reaches
        for pos, stops in _longest_first(self._latin_names.spans(squeezed)):
            if pos < covered or pos not in starts:
                continue
            stop = next((stop for stop in stops if stop in ends), None)
            if stop is not None:
                surface = squeezed[pos:stop]
                hit = self._resolve(self._latin[surface], text, where[pos], where[stop - 1] + 1, surface)
                found.append(hit)
                covered = bisect.bisect_left(where, hit.end)
        return found

    def _word_spans(self, text: str, tokens: list[tuple[str, int, int]] | None) -> set[tuple[int, int]]:
        if tokens is None:
            if self.segmenter is None:
                return {(i, j) for i in range(len(text)) for j in range(i + 1, i + SHORT_ALIAS + 1)}
            tokens = self.segmenter.tokenize(text)
        return {(start, end) for _, start, end in tokens}

    @staticmethod
    def _at_word_edges(text: str, start: int, end: int) -> bool:
        """Latin names must not start or end inside a word ("one" in "someone")."""
        if text[start].isascii() and start > 0 and text[start - 1].isascii() and text[start - 1].isalnum():
            return False
        last = text[end - 1]
        return not (last.isascii() and end < len(text) and text[end].isascii() and text[end].isalnum())

    def _resolve(self, targets: list[Place | Road], text: str, start: int, end: int, surface: str) -> Mention:
        mention = self._resolve_targets(targets, text, start, end)
        if surface in self._kind_only:
            return Mention(mention.start, mention.end, mention.place, mention.grids, kind_only=True)
        return mention

    def _resolve_targets(self, targets: list[Place | Road], text: str, start: int, end: int) -> Mention:
        latin = text[start].isascii()
        if len(targets) == 1 and isinstance(targets[0], Road):
            road = targets[0]
            number = self._house_number(text, start, end, latin)
            if number is not None:
                for segment in road.segments:
                    if segment.holds(number):
                        place = segment.place
                        return Mention(start, end, place, (place.grid_code,))
            grids = road.grids
            only = road.segments[0].place if len(grids) == 1 else None
            return Mention(start, end, only, grids)
        places = [t for t in targets if isinstance(t, Place)]
        grids = tuple(sorted({p.grid_code for p in places}))
        if len(grids) > 1:
            return Mention(start, end, None, grids)
        place, end = self._building(places[0], text, start, end, latin)
        return Mention(start, end, place, (place.grid_code,))

    @staticmethod
    def _house_number(text: str, start: int, end: int, latin: bool) -> int | None:
        after = (_HOUSE_AFTER_EN if latin else _HOUSE_AFTER).match(text, end)
        if after:
            return int(after[1])
        if latin:
            before = _HOUSE_BEFORE_EN.search(text, max(0, start - 12), start)
            if before:
                return int(before[1])
        return None

    def _building(self, place: Place, text: str, start: int, end: int, latin: bool) -> tuple[Place, int]:
        """Rule 1: a building number after (or, in English, before) a compound picks its building."""
        key = self._key_of[place.name]
        if key in self._single_buildings:
            return place, end  # already as precise as the gazetteer gets
        base = self._base_of.get(key, key)
        if latin:
            after = _UNIT_AFTER_EN.match(text, end)
            before = None if after else _UNIT_BEFORE_EN.search(text, max(0, start - 30), start)
            found = after or before
        else:
            found = after = _UNIT_AFTER.match(text, end)
        if not found:
            return place, end
        if after:
            end = after.end()
        number = int(found[1])
        unit = self._units.get(base, {}).get(number)
        if unit:
            return unit, end
        for lo, hi, row in self._ranges.get(base, ()):
            if lo <= number <= hi:
                return row, end
        return self._by_name.get(base, place), end

    # -- fuzzy matching -------------------------------------------------------------------------

    def _build_fuzzy_index(self) -> None:
        # Chinese: a candidate holds all its distinct characters but one (one wrong character).
        self._cjk_candidates = _Candidates(
            [s for s in self._surfaces if not s.isascii() and len(s) >= FUZZY_MIN_CJK],
            set, lambda grams: grams - 1)
        # English: a candidate shares most of its letter trigrams (a wrong letter spoils three).
        self._latin_candidates = _Candidates(
            [s for s in self._latin_plain if len(s) >= FUZZY_MIN_LATIN],
            _trigrams, lambda grams: math.ceil(0.6 * grams))
        # Homophones: Chinese names as sound strings (one character per syllable), by their first sounds.
        self._sounds = sound_table()
        self._homophones: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for surface in self._surfaces:
            if len(surface) >= HOMOPHONE_MIN and not any(ch.isascii() for ch in surface):
                sound = surface.translate(self._sounds)
                self._homophones[sound[:HOMOPHONE_MIN]].append((sound, surface))
        # The homophone scan visits only the positions whose sound begins some name's sound.
        self._sound_start = any_character_of({key[0] for key in self._homophones})

    def _plausible_typo(self, surface: str, window: str) -> bool:
        """Reject a "typo" that is really a village or community name followed by other words
        (杨家湾村有户人家 is not a misspelt 杨家湾村委)."""
        if surface.isascii():
            return True
        same = len(os.path.commonprefix([surface, window]))
        return len(window) >= FUZZY_MIN_CJK and window[:same] not in self._areas and (
            same == len(window) or window[same].isalpha())

    def fuzzy_mentions(self, text: str) -> list[Mention]:
        """Names written with a wrong character (typo, homophone), found with rapidfuzz.

        rapidfuzz only compares the few names that share enough characters with the text.
        """
        best: list[tuple[float, int, int, str]] = []
        chinese = not text.isascii()  # Chinese names and their sounds cannot occur in ASCII text
        if chinese:
            sounds = text.translate(self._sounds)
            for match in self._sound_start.finditer(sounds):
                start = match.start()
                for sound, surface in self._homophones.get(sounds[start:start + HOMOPHONE_MIN], ()):
                    end = start + len(sound)
                    if (sounds[start:end] == sound and text[start:end] != surface
                            and self._plausible_typo(surface, text[start:end])):
                        best.append((HOMOPHONE_SCORE, start, end, surface))
        for surface in self._cjk_candidates(text) if chinese else ():
            cutoff = 100.0 * (1 - 1 / len(surface)) - 0.01  # one substituted character
            found = fuzz.partial_ratio_alignment(surface, text, score_cutoff=cutoff)
            if found and found.score < 100 and self._plausible_typo(surface, text[found.dest_start:found.dest_end]):
                best.append((found.score, found.dest_start, found.dest_end, surface))
        # A Latin name shares most of its letter trigrams with a match: none without a Latin letter.
        for surface in self._latin_candidates(text) if _LATIN_LETTER.search(text) else ():
            found = fuzz.partial_ratio_alignment(surface, text, score_cutoff=LATIN_CUTOFF)
            if found and found.score < 100:
                best.append((found.score, found.dest_start, found.dest_end, self._latin_plain[surface]))
        if not best:
            return []
        top = max(score for score, *_ in best)
        tied = sorted((b for b in best if b[0] == top), key=lambda b: -len(b[3]))  # most specific first
        found = [self._resolve(self._surfaces.get(surface) or self._latin[surface], text, start, end, surface)
                 for _, start, end, surface in tied]
        grids = tuple(sorted({grid for mention in found for grid in mention.grids}))
        if len(grids) == 1 and found[0].place is not None:
            return found[:1]
        return [Mention(found[0].start, found[0].end, None, grids, all(m.kind_only for m in found))]

    # -- the appeal's grid ----------------------------------------------------------------------

    def locate(self, text: str, sender_grid: str | None = None,
               tokens: list[tuple[str, int, int]] | None = None) -> Location:
        """The grid of the first place the text pins down; else the sender's grid; else unknown.

        An ambiguous mention (a bare road shared by grids) keeps the sender's grid when it is one of
        the candidates, and otherwise leaves the grid unknown with the candidates listed.
        `text` must be normalised (`normalize`); `tokens` are its jieba tokens, if already known.
        """
        found = self.mentions(text, tokens) or self.fuzzy_mentions(text)
        if any(m.kind_only for m in found) and not (sender_grid or self._names_this_city(text, found)):
            found = [m for m in found if not m.kind_only]
        for mention in found:
            if mention.place is not None:
                return Location(mention.place.grid_code, mention.place.name)
        if found:
            candidates = found[0].grids
            if sender_grid in candidates:
                return Location(sender_grid, None, candidates)
            return Location(None, None, candidates)
        return Location(sender_grid, None)

    def _names_this_city(self, text: str, found: list[Mention]) -> bool:
        """The text names one of this city's areas, or a place by a name no other city has."""
        if any(not m.kind_only for m in found) or any(area in text for area in self._areas):
            return True
        return bool(self._latin_areas) and any(area in squeeze(text)[0] for area in self._latin_areas)


class _Candidates:
    """Names sharing enough n-grams with a text, counted with one numpy bincount."""

    def __init__(self, names: list[str], grams: Callable[[str], set[str]], needed: Callable[[int], int]):
        self._names = names
        self._grams = grams
        postings: dict[str, list[int]] = defaultdict(list)
        for index, name in enumerate(names):
            for gram in grams(name):
                postings[gram].append(index)
        self._postings = {gram: np.array(ids, dtype=np.int64) for gram, ids in postings.items()}
        self._needed = np.array([needed(len(grams(name))) for name in names], dtype=np.int64)

    def __call__(self, text: str) -> list[str]:
        lists = [self._postings[g] for g in self._grams(text) if g in self._postings]
        if not lists:
            return []
        hits = np.bincount(np.concatenate(lists), minlength=len(self._names))
        return [self._names[i] for i in np.flatnonzero(hits >= self._needed)]


def _longest_first(spans: list[tuple[int, int]]) -> list[tuple[int, list[int]]]:
    """(start, the ends of the names beginning there, longest first) from `PhraseFinder.spans`."""
    ends: dict[int, list[int]] = defaultdict(list)
    for start, end in spans:
        ends[start].append(end)
    return [(start, found[::-1]) for start, found in ends.items()]


def _merge(first: list[Mention], second: list[Mention]) -> list[Mention]:
    """Two left-to-right lists of mentions as one, dropping any that overlaps an earlier one."""
    merged: list[Mention] = []
    for mention in sorted([*first, *second], key=lambda m: (m.start, -m.end)):
        if not merged or mention.start >= merged[-1].end:
            merged.append(mention)
    return merged


def _trigrams(text: str) -> set[str]:
    return {text[i:i + 3] for i in range(len(text) - 2)}
