"""The appeal classifier end to end: categories, types, grids, routing, triage, CLI, a new city."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from classifiers import build_classifier
from classifiers.cli import classify_stream, evaluate_file
from classifiers.text_model import PhraseIndex
from gateway.config import RoutingOverride, Settings
from gateway.domain.city import load_city

CONFIG = Path("config")
DEV_SET = CONFIG / "classifier" / "examples-dev.jsonl"
HOLDOUT = CONFIG / "classifier" / "holdout.jsonl"
HOLDOUT_2 = CONFIG / "classifier" / "holdout-2.jsonl"
HOLDOUT_4 = CONFIG / "classifier" / "holdout-4.jsonl"
OUTPUT_KEYS = {"category", "appeal_type", "department", "grid", "place", "confidence"}


@pytest.fixture(scope="module")
def city():
    return load_city(CONFIG / "city")


@pytest.fixture(scope="module")
def classifier(city):
    return build_classifier(city, Settings(config_dir=CONFIG))


@pytest.fixture(scope="module")
def resident(city):
    """A registered resident whose grid is not on 东湖路."""
    return next(r for r in city.residents.values() if r.grid_code.startswith("QH-XS-02"))


@pytest.mark.parametrize(("text", "category", "appeal_type"), [
    ("东湖路57号门口的垃圾桶三天没人清了，臭得不行。", "sanitation", "complaint"),
    ("举报有人在楼顶私自加盖彩钢房。", "illegal_construction", "report"),
    ("请问失业金怎么申领？", "employment_social_security", "consultation"),
    ("建议在公园里多种几棵树，再增加一些座椅。", "greening_parks", "suggestion"),
    ("感谢供电公司连夜抢修，天亮前就来电了！", "power_supply", "praise"),
    ("家里燃气味很重，请马上派人来！", "gas_supply", "help"),
])
def test_chinese_appeals(classifier, text, category, appeal_type):
    result = classifier.classify(text, None)
    assert (result.category, result.appeal_type) == (category, appeal_type)
    assert result.department == load_city(CONFIG / "city").categories[category].department_code


@pytest.mark.parametrize(("text", "category", "appeal_type", "grid"), [
    ("The lift in Hujing Bay Building 4 has been broken for a week.", "property_management", "complaint",
     "QH-DH-03-04"),
    ("Rubbish has been piling up at the gate of Hubin Park for days and nobody collects it.", "sanitation",
     "complaint", "QH-DH-03-01"),
    ("How do I register my dog and get it vaccinated?", "pets_animals", "consultation", None),
    ("Thank you to the firefighters who came so quickly last night!", "fire_safety", "praise", None),
])
def test_english_appeals(classifier, text, category, appeal_type, grid):
    result = classifier.classify(text, None)
    assert (result.category, result.appeal_type, result.grid) == (category, appeal_type, grid)


def test_sender_fallback_when_no_place_is_named(classifier, resident):
    assert classifier.classify("楼道灯坏了半个月了，物业不管。", resident.phone).grid == resident.grid_code


def test_unknown_or_missing_sender_gives_no_grid(classifier):
    assert classifier.classify("楼道灯坏了半个月了，物业不管。", "+8617399999999").grid is None
    assert classifier.classify("楼道灯坏了半个月了，物业不管。", None).grid is None


def test_a_named_place_beats_the_senders_grid(classifier, resident):
    result = classifier.classify("东湖花园16号楼电梯坏了三天了。", resident.phone)
    assert (result.grid, result.place) == ("QH-DH-01-04", "东湖花园16号楼")


def test_ambiguous_road_goes_to_triage_with_candidates(classifier):
    result = classifier.classify("东湖路上的护栏被车撞歪了，一直没人修。", None)
    assert result.grid is None and result.needs_triage
    assert result.grid_candidates == ("QH-DH-01-01", "QH-DH-01-03", "QH-DH-02-01", "QH-DH-02-03")


@pytest.fixture(scope="module")
def strict(city):
    """Everything below certainty goes to triage; sanitation in 东湖街道 goes to urban management."""
    settings = Settings(config_dir=CONFIG, classifier_threshold=0.999,
                        routing_overrides=(RoutingOverride("sanitation", "QH-DH", "URBAN_MGMT"),))
    return build_classifier(city, settings)


def test_below_threshold_goes_to_triage_with_three_suggestions(strict):
    result = strict.classify("路边有点乱，不知道该找谁。", None)
    assert result.confidence < 0.999
    assert result.department == "GRID_CENTER"
    assert len(result.suggestions) == 3
    assert result.suggestions[0].category == result.category
    assert [s.score for s in result.suggestions] == sorted((s.score for s in result.suggestions), reverse=True)
    assert all(s.department for s in result.suggestions)


def test_routing_override_by_category_and_area(strict):
    assert strict.department("sanitation", "QH-DH-01-01") == "URBAN_MGMT"
    assert strict.department("sanitation", "QH-XS-01-01") == "SANITATION"
    assert strict.department("sanitation", None) == "SANITATION"
    assert strict.department("noise", "QH-DH-01-01") == "ECOLOGY"


def test_classify_stream_writes_one_line_per_appeal_in_order(tmp_path):
    lines = [json.dumps({"text": "东湖路57号门口垃圾没人清", "sender": None}, ensure_ascii=False), "",
             json.dumps({"text": "I smell gas in Lakeside One Building 4", "sender": None})]
    out = io.StringIO()
    classify_stream(Settings(config_dir=CONFIG), lines, out)
    results = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [set(r) for r in results] == [OUTPUT_KEYS, OUTPUT_KEYS]
    assert (results[0]["grid"], results[0]["category"]) == ("QH-DH-01-01", "sanitation")
    assert (results[1]["grid"], results[1]["category"]) == ("QH-DH-03-01", "gas_supply")


def test_dev_set_floor(classifier):
    """The maintainers' dev set, trained on since the sixth pass: the floors catch a broken model, and the
    grid is found by the gazetteer, which learns nothing from it."""
    out = io.StringIO()
    report = evaluate_file(Settings(config_dir=CONFIG), DEV_SET, out, classifier)
    accuracy = report["accuracy"]
    assert accuracy["category"] >= 0.95
    assert accuracy["appeal_type"] >= 0.86
    assert accuracy["department"] >= 0.93
    assert accuracy["grid"] >= 0.97  # 4 appeals name only a kind of place (三小, 实验小学) and no sender
    assert report["macro_f1"]["category"] >= 0.95
    assert "most confused categories" in out.getvalue()


def test_held_out_voices_floor(classifier):
    """The voice-tagged appeals kept out of training: a floor a few points under the README figures,
    and a row per voice."""
    out = io.StringIO()
    report = evaluate_file(Settings(config_dir=CONFIG), HOLDOUT, out, classifier)
    assert "grid" not in report["accuracy"]  # not labelled there, so not scored
    assert report["accuracy"]["category"] >= 0.88
    assert report["accuracy"]["appeal_type"] >= 0.79
    assert report["macro_f1"]["category"] >= 0.88
    assert set(report["by_voice"]) == {"angry", "dialect", "elderly", "english", "plain", "rambling", "terse",
                                       "traditional"}
    assert "by voice" in out.getvalue()


@pytest.mark.parametrize(("path", "category", "appeal_type", "department"), [
    (HOLDOUT_2, 0.92, 0.84, 0.88),  # written after the first model's misses were known
    (HOLDOUT_4, 0.92, 0.80, 0.88),  # written blind (taxonomy, places and the dev set only) in the sixth pass
])
def test_later_held_out_set_floors(classifier, path, category, appeal_type, department):
    """Files never trained on: floors a few points under the README figures (department: triage = wrong)."""
    report = evaluate_file(Settings(config_dir=CONFIG), path, io.StringIO(), classifier)
    assert report["accuracy"]["category"] >= category
    assert report["accuracy"]["appeal_type"] >= appeal_type
    assert report["accuracy"]["department"] >= department
    assert report["macro_f1"]["category"] >= category


@pytest.mark.parametrize(("text", "category"), [  # a newcomer's findings (issue 15)
    ("The street light outside my building is broken", "road_facilities"),
    ("东湖路47号的路灯坏了", "road_facilities"),
    ("翠湖花园9号楼楼道灯不亮", "property_management"),
    ("翠湖花園9號樓樓道燈不亮", "property_management"),  # the same in Traditional characters
])
def test_lights_go_where_they_belong(classifier, text, category):
    assert classifier.classify(text, None).category == category


def test_a_long_appeal_is_read_up_to_the_limit(classifier):
    """The cost per appeal is bounded: what lies past READ_LIMIT characters does not change the result."""
    from classifiers.model import READ_LIMIT

    head = "楼道里堆满了纸箱和旧家具，还有人把电动车推进楼道充电，万一着火谁都跑不出去。" * 20
    assert len(head) > READ_LIMIT
    assert classifier.classify(head + "水" * 5000, None) == classifier.classify(head, None)


def _write_csv(path: Path, header: str, rows: list[str]) -> None:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")


def write_tiny_city(tmp_path: Path) -> Settings:
    """A tiny city with its own names, codes, taxonomy and examples, as files; its settings
    (home under tmp_path, so trained models stay there)."""
    city_dir = tmp_path / "config" / "city"
    city_dir.mkdir(parents=True)
    _write_csv(city_dir / "grids.csv", "code,level,name,name_en,parent_code,households", [
        "BX,0,白溪县,Baixi County,,600", "BX-A,1,青石镇,Qingshi Town,BX,600",
        "BX-A-1,2,青石村,Qingshi Village,BX-A,600",
        "BX-A-1-1,3,青石村第一网格,Qingshi Grid 1,BX-A-1,300", "BX-A-1-2,3,青石村第二网格,Qingshi Grid 2,BX-A-1,300"])
    _write_csv(city_dir / "places.csv", "name,aliases,kind,grid_code,name_en", [
        "枣林苑,枣林,compound,BX-A-1-1,Zaolin Court",
        "枣林苑7-12号楼,枣林苑二期,building,BX-A-1-2,Zaolin Court Buildings 7-12",
        "长乐街1-99号(单号),长乐街,road_segment,BX-A-1-1,Changle Street No. 1-99 (odd)",
        "长乐街2-100号(双号),长乐街,road_segment,BX-A-1-2,Changle Street No. 2-100 (even)"])
    _write_csv(city_dir / "departments.csv", "code,name,name_en,level,phone", [
        "DESK,县服务台,County Desk,county,+8617100000001", "WASTE,县环卫站,Waste Station,county,+8617100000002",
        "ROADS,县公路站,Roads Office,county,+8617100000003"])
    _write_csv(city_dir / "categories.csv",
               "code,name,name_en,department_code,sla_hours,description,description_en", [
                   "rubbish,垃圾,Rubbish,WASTE,48,垃圾问题,Rubbish", "roads,道路,Roads,ROADS,72,道路问题,Roads",
                   "misc,其他,Misc,DESK,72,其他,Other"])
    _write_csv(city_dir / "appeal_types.csv", "code,name,name_en,description",
               ["grumble,投诉,Complaint,投诉", "ask,咨询,Question,咨询"])
    _write_csv(city_dir / "workers.csv", "id,name,role,grid_code,department_code,phone,telegram_chat_id,languages", [])
    _write_csv(city_dir / "residents.csv", "id,name,phone,grid_code,address,tags,preferred_channel,"
               "telegram_chat_id,language,birth_year", ["X1,甲乙,+8617100000009,BX-A-1-2,枣林苑8号楼101,,sms,,zh,1980"])
    classifier_dir = tmp_path / "config" / "classifier"
    classifier_dir.mkdir()
    examples = [("垃圾桶满了没人清", "rubbish", "grumble"), ("路边垃圾堆成山", "rubbish", "grumble"),
                ("请问垃圾几点收", "rubbish", "ask"), ("路面有个大坑", "roads", "grumble"),
                ("路灯坏了好几天", "roads", "grumble"), ("请问这条路什么时候修好", "roads", "ask"),
                ("请问办证去哪里", "misc", "ask")]
    (classifier_dir / "examples.jsonl").write_text("".join(
        json.dumps({"text": t, "sender": None, "expected": {"category": c, "appeal_type": a, "grid": None,
                                                              "department": ""}}, ensure_ascii=False) + "\n"
        for t, c, a in examples), encoding="utf-8")
    (classifier_dir / "keywords.json").write_text(json.dumps({"categories": {"rubbish": ["垃圾"], "roads": ["路面"]},
                                                              "appeal_types": {"ask": ["请问"]}}), encoding="utf-8")
    return Settings(config_dir=tmp_path / "config", home=tmp_path / "var", triage_department="DESK",
                    classifier_threshold=0.3)


@pytest.mark.slow
def test_a_new_examples_file_is_trained_on_not_read_from_a_stale_cache(tmp_path, monkeypatch):
    """Every examples*.jsonl file is part of the shipped model's cache key."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    settings = write_tiny_city(tmp_path)
    city = load_city(settings.city_dir)
    assert build_classifier(city, settings).classify("户口本丢了", None).category != "misc"
    more = [("户口本丢了", "misc", "ask"), ("户口迁移", "misc", "ask"), ("户口登记", "misc", "ask")]
    (settings.config_dir / "classifier" / "examples-more.jsonl").write_text("".join(
        json.dumps({"text": t, "expected": {"category": c, "appeal_type": a}}, ensure_ascii=False) + "\n"
        for t, c, a in more), encoding="utf-8")
    assert build_classifier(city, settings).classify("户口本丢了", None).category == "misc"
    assert len(list((tmp_path / "cache" / "gridline").glob("shipped-*.npz"))) == 2


def test_a_new_city_needs_no_code_change(tmp_path):
    """A tiny city built from files alone."""
    settings = write_tiny_city(tmp_path)
    classifier = build_classifier(load_city(settings.city_dir), settings)

    result = classifier.classify("枣林苑9号楼门口垃圾满了没人清", None)
    assert (result.category, result.department, result.grid) == ("rubbish", "WASTE", "BX-A-1-2")
    assert classifier.classify("长乐街5号路面有个大坑", None).grid == "BX-A-1-1"
    assert classifier.classify("请问垃圾几点来收？", None).appeal_type == "ask"
    assert classifier.classify("路灯坏了", "+8617100000009").grid == "BX-A-1-2"
    assert classifier.classify("长乐街上路灯坏了", None).grid_candidates == ("BX-A-1-1", "BX-A-1-2")


@pytest.mark.parametrize(("text", "found"), [
    ("楼道里有烟，还有焦味", [("有烟", {"kc:fire"}), ("烟", {"kc:fire"}), ("焦味", {"kc:fire"})]),
    ("the bins and fences", [("bin", {"kc:bins"}), ("fence", {"kc:fences"})]),  # plurals
    ("a binder and a fencer", []),  # never inside a word
    ("没有关键词", []),
    ("", []),
])
def test_phrases_are_found_left_to_right_overlapping_and_english_as_whole_words(text, found):
    index = PhraseIndex({"kc:fire": ["烟", "有烟", "焦味"], "kc:bins": ["bin"], "kc:fences": ["Fence"]})
    assert index.find(text) == found


def test_an_empty_phrase_index_finds_nothing():
    assert PhraseIndex({}).find("楼道里有烟 smoke") == []
