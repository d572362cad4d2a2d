"""Gazetteer resolution against the sample city: the README rules, worked examples and traps."""

from __future__ import annotations

import json

import pytest

from classifiers.gazetteer import Gazetteer
from classifiers.normalize import chinese_to_int, normalize
from classifiers.segment import Segmenter
from gateway.domain.city import load_city

DH_ROAD = ("QH-DH-01-01", "QH-DH-01-03", "QH-DH-02-01", "QH-DH-02-03")  # 东湖路's four segments


@pytest.fixture(scope="module")
def city():
    return load_city("config/city")


@pytest.fixture(scope="module")
def gazetteer(city):
    kinds = json.loads(open("config/classifier/keywords.json", encoding="utf-8").read())["place_kinds"]
    areas = [name for g in city.grids.values() if g.level < 3 for name in (g.name, g.name_en)]
    gaz = Gazetteer(city.places, areas, place_kinds=kinds)
    gaz.segmenter = Segmenter(gaz.words)
    return gaz


def locate(gazetteer, text, sender_grid=None):
    return gazetteer.locate(normalize(text), sender_grid)


@pytest.mark.parametrize(("address", "grid"), [  # the README's worked examples, row by row
    ("翠湖花园3号楼2单元501", "QH-DH-01-01"),
    ("东湖花园6号楼1单元1102", "QH-DH-01-03"),
    ("东湖花园16号楼2单元801", "QH-DH-01-04"),
    ("阳光城5号楼1单元302", "QH-XS-03-01"),
    ("阳光城15号楼2单元1201", "QH-XS-03-02"),
    ("东湖新村33号楼3单元402", "QH-DH-02-02"),
    ("东湖路57号", "QH-DH-01-01"),
    ("东湖路58号", "QH-DH-01-03"),
    ("东湖路105号302室", "QH-DH-02-01"),
    ("东湖路106号", "QH-DH-02-03"),
    ("康宁路150号", "QH-NM-04-04"),
    ("鼓楼巷12号", "QH-NM-01-01"),
    ("南门老街23号", "QH-NM-01-02"),
    ("石桥村三组18号", "QH-LT-02-02"),
])
def test_readme_worked_examples(gazetteer, address, grid):
    assert locate(gazetteer, address).grid == grid


def test_every_resident_address_resolves_to_the_residents_grid(city, gazetteer):
    wrong = [(r.address, r.grid_code) for r in city.residents.values()
             if locate(gazetteer, r.address).grid != r.grid_code]
    assert wrong == []


@pytest.mark.parametrize(("text", "grid"), [  # the README's deliberately confusable names
    ("幸福里小区门口", "QH-DH-04-01"), ("幸福家园门口", "QH-NM-04-03"), ("幸福苑门口", "QH-BY-02-02"),
    ("荷花村幸福院的老人", "QH-LT-03-03"), ("幸福公园里", "QH-DH-04-02"),
    ("东湖新村里", "QH-DH-02-01"), ("东湖花园里", "QH-DH-01-03"), ("东湖新苑里", "QH-DH-02-04"),
    ("东湖名邸里", "QH-DH-02-03"), ("东湖华府里", "QH-DH-04-03"),
    ("翠湖花园里", "QH-DH-01-01"), ("翠湖苑里", "QH-DH-01-04"), ("翠湖公园里", "QH-DH-01-03"),
    ("阳光城里", "QH-XS-03-01"), ("阳光花园里", "QH-XS-03-02"), ("阳光新村里", "QH-XS-03-03"),
    ("金桂苑里", "QH-BY-01-01"), ("金桂花园里", "QH-BY-01-03"), ("桂花苑里", "QH-BY-01-02"),
    ("锦绣华庭里", "QH-NM-02-01"), ("锦绣家园里", "QH-NM-02-02"),
    ("明珠花园里", "QH-BY-03-01"), ("明珠新城里", "QH-BY-03-03"),
    ("和平小区里", "QH-BY-04-01"), ("和平新苑里", "QH-BY-04-02"), ("和平家园里", "QH-BY-04-04"),
    ("枫林苑里", "QH-XS-01-01"), ("枫林雅苑里", "QH-XS-01-02"), ("枫林湾里", "QH-XS-01-04"),
    ("松涛花园里", "QH-XS-02-01"), ("松涛苑里", "QH-XS-02-02"),
    ("南门菜市场里", "QH-NM-01-03"), ("南门农贸市场里", "QH-NM-02-01"),
    ("清河区第一小学门口", "QH-DH-01-03"), ("清河区第一中学门口", "QH-NM-04-02"),
    ("清河区第三小学门口", "QH-DH-02-02"), ("清河区第三中学门口", "QH-DH-02-04"),
    ("清河区实验小学门口", "QH-NM-03-04"), ("景海实验中学清河校区门口", "QH-XS-04-02"),
    ("清河区人民医院门口", "QH-DH-01-04"), ("清河区人民医院西山分院门口", "QH-XS-02-03"),
    ("西山颐养院的护工", "QH-XS-04-04"), ("康宁颐养中心的护工", "QH-NM-04-02"),
    ("实小门口", "QH-NM-03-04"), ("实中门口", "QH-XS-04-02"),
])
def test_confusable_names(gazetteer, text, grid):
    assert locate(gazetteer, text).grid == grid


ELSEWHERE = "QH-XS-01-01"  # a registered sender's grid, far from the places below


@pytest.mark.parametrize(("text", "grid"), [  # aliases that name a kind of place, not one place
    ("一小门口", "QH-DH-01-03"), ("一中门口", "QH-NM-04-02"), ("三小门口", "QH-DH-02-02"),
    ("三中门口", "QH-DH-02-04"), ("人民医院门口摊贩太多", "QH-DH-01-04"), ("镇政府旁边", "QH-LT-01-01"),
    ("区政府对面", "QH-DH-03-03"), ("中心小学放学堵车", "QH-LT-01-02"), ("the People's Hospital", "QH-DH-01-04"),
])
def test_a_kind_of_place_never_decides_a_grid_alone(gazetteer, text, grid):
    assert locate(gazetteer, text).grid is None  # maybe another city's 人民医院: no guess
    assert locate(gazetteer, text, ELSEWHERE).grid == grid  # a registered resident means this city's


@pytest.mark.parametrize(("text", "grid"), [
    ("清河区人民医院门口", "QH-DH-01-04"),  # the full name is this city's
    ("柳塘镇镇政府旁边", "QH-LT-01-01"),  # an area of this city corroborates the kind-of-place alias
    ("一中门口天天堵，翠湖花园的孩子都在那上学", "QH-NM-04-02"),  # so does one of its places
    ("People's Hospital, Qinghe District", "QH-DH-01-04"),
])
def test_a_kind_of_place_counts_when_the_text_names_this_city(gazetteer, text, grid):
    assert locate(gazetteer, text).grid == grid


@pytest.mark.parametrize(("text", "grid"), [
    ("东湖新村45号楼后面", "QH-DH-02-03"),  # building range rows of a compound split over grids
    ("东湖新村18号楼", "QH-DH-02-01"),
    ("明珠新城20号楼", "QH-BY-03-04"),
    ("锦绣华庭12号楼", "QH-NM-02-02"),
    ("阳光城二期", "QH-XS-03-02"),  # a phase alias of a range row
    ("锦绣华庭东区大门", "QH-NM-02-01"),
    ("北苑路150号", "QH-BY-02-02"),  # 102-200 even side
    ("北苑路151号", "QH-BY-02-01"),  # 101-199 odd side
    ("和平路260号门口积水", "QH-BY-04-04"),  # a both-sides segment
    ("北苑路公厕", "QH-BY-01-02"),  # a longer name beats the bare road
    ("青年路商业街一家店", "QH-DH-02-04"),
    ("翠湖苑4号楼", "QH-DH-01-04"),  # 翠湖苑 before 翠湖; no row for building 4 -> compound
    ("邮电宿舍5号楼301", "QH-DH-01-02"),  # an old-name alias
])
def test_split_compounds_roads_and_longest_match(gazetteer, text, grid):
    assert locate(gazetteer, text).grid == grid


def test_bare_shared_road_is_ambiguous(gazetteer):
    location = locate(gazetteer, "东湖路上的护栏被撞歪了")
    assert location.grid is None
    assert location.candidates == DH_ROAD


def test_bare_road_keeps_the_senders_grid_only_when_it_is_a_candidate(gazetteer):
    assert locate(gazetteer, "东湖路上的护栏被撞歪了", "QH-DH-02-01").grid == "QH-DH-02-01"
    assert locate(gazetteer, "东湖路上的护栏被撞歪了", "QH-XS-01-01").grid is None


def test_road_in_one_grid_is_not_ambiguous(gazetteer):
    assert locate(gazetteer, "府前街的路灯坏了").grid == "QH-NM-01-03"


def test_first_pinned_place_wins_over_an_earlier_ambiguous_road(gazetteer):
    assert locate(gazetteer, "幸福路上二小门口堵车").grid == "QH-DH-04-02"


@pytest.mark.parametrize(("text", "grid", "place"), [
    ("翠湖花圆3号楼漏水", "QH-DH-01-01", None),  # 园 -> 圆
    ("东湖新材33号楼停水", "QH-DH-02-02", "东湖新村33号楼"),
    ("幸福佳园7号楼", "QH-NM-04-03", "幸福家园7号楼"),  # homophone 佳/家, building row decides
    ("和平心苑门口", "QH-BY-04-02", "和平新苑"),
    ("金贵苑3号楼", "QH-BY-01-01", "金桂苑3号楼"),
    ("The lift in Hujing Bey Building 4 is broken", "QH-DH-03-04", "湖景湾4号楼"),
    ("Lakside One building 4", "QH-DH-03-01", "湖滨一号4号楼"),
])
def test_typos_and_homophones(gazetteer, text, grid, place):
    location = locate(gazetteer, text)
    assert location.grid == grid
    if place:
        assert location.place == place


def test_a_homophone_beats_a_name_one_character_away(gazetteer):
    assert locate(gazetteer, "幸福佳园门口").place == "幸福家园"  # jiā yuán, not 幸福公园


def test_a_typo_equally_close_to_two_names_is_ambiguous(gazetteer):
    location = locate(gazetteer, "幸福菜园门口")  # 幸福家园 or 幸福公园, neither read alike
    assert location.grid is None
    assert set(location.candidates) == {"QH-NM-04-03", "QH-DH-04-02"}


@pytest.mark.parametrize(("text", "grid"), [
    ("東湖路47號的路燈壞了", "QH-DH-01-01"),  # Traditional characters
    ("翠湖花園9號樓樓道燈不亮", "QH-DH-01-01"),
    ("陽光城十五號樓", "QH-XS-03-02"),
])
def test_traditional_characters(gazetteer, text, grid):
    assert locate(gazetteer, text).grid == grid


@pytest.mark.parametrize("text", [
    "杨家湾村有户人家养的狗经常跑出来",  # a village name followed by words, not a misspelt place
    "在医院等了一小时",  # 一小 is a school only as a word of its own
    "其实小区里很脏",  # nor is 实小
    "社区卫生服务中心周末也开门",  # generic, not one of the named centres
])
def test_no_place_is_invented(gazetteer, text):
    assert locate(gazetteer, text).grid is None


@pytest.mark.parametrize(("numeral", "value"), [
    ("一百零二", 102), ("十五", 15), ("二十一", 21), ("三", 3), ("一零五", 105), ("两百", 200)])
def test_chinese_numerals(numeral, value):
    assert chinese_to_int(numeral) == value


@pytest.mark.parametrize(("text", "grid"), [
    ("东湖路一百零五号", "QH-DH-02-01"),
    ("东湖路一百零六号", "QH-DH-02-03"),
    ("东湖新村三十三号楼", "QH-DH-02-02"),
    ("阳光城十五号楼", "QH-XS-03-02"),
    ("石桥村3组", "QH-LT-02-02"),
    ("东湖路５７号", "QH-DH-01-01"),  # full-width digits
])
def test_chinese_and_full_width_numbers(gazetteer, text, grid):
    assert locate(gazetteer, text).grid == grid


@pytest.mark.parametrize(("text", "grid"), [
    ("57 Donghu Road", "QH-DH-01-01"),
    ("Donghu Road No. 106", "QH-DH-02-03"),
    ("street lights on Fenglin Road near No. 150", "QH-XS-01-03"),
    ("The lift in Building 5 of Donghu Huafu", "QH-DH-04-03"),
    ("Galaxy Bay Building 19", "QH-BY-02-01"),
    ("Sunshine City Building 15", "QH-XS-03-02"),
    ("Yangguang City Building 5", "QH-XS-03-01"),
    ("near Cuihu Garden", "QH-DH-01-01"),
    ("outside Xinghe Mall", "QH-BY-02-01"),
    ("Shiqiao Village Group 3", "QH-LT-02-02"),
    ("Cuihu Huayuan", "QH-DH-01-01"),  # pinyin derived from the Chinese name, however spaced
    ("cuihuhuayuan", "QH-DH-01-01"),
    ("Cui-hu Hua-yuan gate", "QH-DH-01-01"),
    ("Donghu Xincun building 33", "QH-DH-02-02"),
    ("Donghu Lu 57", "QH-DH-01-01"),
    ("Mingzhu Xincheng", "QH-BY-03-03"),
    ("Donghu Rd 57", "QH-DH-01-01"),  # street names as residents shorten them
    ("pothole on Donghu Rd. No. 106", "QH-DH-02-03"),
    ("street lights on Fenglin Rd around No. 150", "QH-XS-01-03"),
])
def test_english_and_pinyin_names(gazetteer, text, grid):
    assert locate(gazetteer, text).grid == grid


def test_english_bare_road_is_ambiguous(gazetteer):
    assert locate(gazetteer, "Donghu Road is flooded").candidates == DH_ROAD
    assert locate(gazetteer, "Donghu Rd is flooded").candidates == DH_ROAD


def test_latin_names_match_whole_words_only(gazetteer):
    assert locate(gazetteer, "someone keeps calling").grid is None  # not "One" of Lakeside One
