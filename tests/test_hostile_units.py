"""Hostile input and human mistakes below the HTTP layer: the strict parsers, the audience grammar's
limits, operator mistakes refused in the domain, long appeals in task alerts, strict CSV import.
Table tests for the findings of issue 14, and Hypothesis for the parsers."""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broadcasts import audience
from classifiers import Classification
from gateway import strict
from gateway.domain import replies, workflow
from gateway.domain.cases import IllegalTransition, open_case, transition
from gateway.domain.city import CityImportError, load_city
from gateway.store import CaseRow, DeliveryRow, make_engine, session_factory, utcnow
from gateway.world import World
from tests.conftest import CONFIG

CITY = load_city(CONFIG / "city")
VERDICT = Classification(category="sanitation", appeal_type="complaint", department="SANITATION",
                         grid="QH-DH-01-01", place=None, confidence=0.9)
TREE = audience.GridTree({code: grid.parent_code for code, grid in CITY.grids.items()})


# --- the strict parsers ----------------------------------------------------------------------------


@pytest.mark.parametrize("raw, low, high, expected", [
    ("42", 1, 100, 42), (" 7 ", 0, 10, 7), (5, 0, 10, 5), ("²", 0, 10, None), ("٣", 0, 10, None),
    ("9999999999999999999999999", 0, strict.MAX_ID, None), ("1e3", 0, 10**6, None), ("", 0, 1, None),
    (True, 0, 1, None), ("11", 0, 10, None), ("-1", 0, 10, None), (None, 0, 1, None), (1.0, 0, 2, None),
])
def test_integers_are_ascii_digits_in_range(raw, low, high, expected):
    if expected is None:
        with pytest.raises(strict.BadValue, match="^n "):
            strict.integer(raw, "n", low, high)
    else:
        assert strict.integer(raw, "n", low, high) == expected


@pytest.mark.parametrize("raw, expected", [
    (True, True), (False, False), ("true", True), ("No", False), ("0", False), ("on", True),
    ("nope", None), ("", None), (1, None), (None, None), ("２", None),
])
def test_booleans_are_strict(raw, expected):
    if expected is None:
        with pytest.raises(strict.BadValue, match="must be true or false"):
            strict.boolean(raw, "emergency")
    else:
        assert strict.boolean(raw, "emergency") is expected


@pytest.mark.parametrize("raw, expected", [
    ("2026-11-01", datetime(2026, 10, 31, 16)), ("2026-11-01T09:00+00:00", datetime(2026, 11, 1, 9)),
    ("0001-01-01", None), ("9999-12-31T23:59+00:00", None), ("1999-12-31", None), ("tomorrow", None),
    ("２０２６-11-01", None), ("2026-13-01", None), ("2026-11-01T09:00+24:00", None), (None, None),
])
def test_moments_are_iso_in_this_century(raw, expected):
    if expected is None:
        with pytest.raises(strict.BadValue, match="^since must"):
            strict.moment(raw, "since", "Asia/Shanghai")
    else:
        assert strict.moment(raw, "since", "Asia/Shanghai") == expected


@pytest.mark.parametrize("data, ok", [
    (b"[" * 30_000, False), (b"{\"a\":" * 40 + b"1" + b"}" * 40, False), (b"[" * 32 + b"]" * 32, True),
    (b'["' + b"[" * 1000 + b'"]', True), (b'{"a": "\\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}', True),
    (b"[[]]" * 5000, True),
])
def test_json_depth_is_checked_without_recursion(data, ok):
    assert strict.json_depth_ok(data) is ok


@settings(max_examples=100, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                    max_leaves=40))
def test_load_json_parses_what_json_dumps_writes_within_the_depth(value):
    import json

    data = json.dumps(value).encode()
    try:
        assert strict.load_json(data) == value
    except strict.BadValue as refused:
        assert "deeper than" in refused.reason and data.count(b"[") + data.count(b"{") > strict.MAX_JSON_DEPTH


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=40) | st.integers() | st.booleans() | st.none() | st.floats())
def test_every_parser_answers_a_value_or_bad_value(raw):
    for parse in (lambda v: strict.integer(v, "x"), lambda v: strict.boolean(v, "x"),
                  lambda v: strict.moment(v, "x", "Asia/Shanghai"), lambda v: strict.text(v, "x", 10)):
        try:
            parse(raw)
        except strict.BadValue:
            pass


# --- the audience grammar ----------------------------------------------------------------------------


@pytest.mark.parametrize("expression, reason", [
    ("(" * 5000 + "all" + ")" * 5000, "longer than 2000"),
    ("not " * 5000 + "all", "longer than 2000"),
    ("(" * 990 + "all" + ")" * 990, "nests deeper than 16 levels of parentheses and `not` at column 17"),
    ("not " * 400 + "all", "nests deeper than"),
    ("tag:a or " * 400 + "all", "longer than 2000"),
    ("(" * 16 + "all" + ")" * 16, None),
    ("not " * 16 + "all", None),
])
def test_audience_expressions_have_a_length_and_a_depth(expression, reason):
    if reason is None:
        assert audience.parse(expression)
    else:
        with pytest.raises(audience.AudienceError, match=reason):
            audience.parse(expression)


AUDIENCE_WORDS = st.sampled_from(["(", ")", "and", "or", "not", "all", "tag:elderly", "grid:QH-DH-01",
                                  "channel:sms", "lang:en", "tag:", ":", "x"])


@settings(max_examples=100, deadline=None)
@given(st.lists(AUDIENCE_WORDS, max_size=60).map(" ".join) | st.text(max_size=200))
def test_the_audience_parser_answers_a_tree_or_a_reason(expression):
    try:
        node = audience.parse(expression)
    except audience.AudienceError as error:
        assert str(error)
    else:
        assert list(audience.terms(node))


@pytest.mark.parametrize("expression, confined", [
    ("tag:disabled and grid:QH-DH-01-02", True),
    ("grid:QH-DH-01 or grid:QH-DH-01-01", True),
    ("tag:disabled", False),
    ("not grid:QH-DH-02", False),
    ("grid:QH-DH-01 or tag:disabled", False),
    ("grid:QH-DH", False),
    ("grid:NOWHERE", False),
])
def test_jurisdiction_is_decided_from_the_expression_not_by_counting(expression, confined):
    assert audience.confined(audience.parse(expression), TREE, "QH-DH-01") is confined


# --- operator mistakes, refused in the domain ---------------------------------------------------------


@pytest.fixture
def sessions(store_settings):
    return session_factory(make_engine(store_settings.sqlalchemy_url))


def new_case(sessions, settings_, text: str = "垃圾没人清") -> str:
    with sessions() as session, session.begin():
        case = open_case(session, city=CITY, settings=settings_, channel="sms", reporter="+8617199000902",
                         text=text, language="zh", verdict=VERDICT, now=utcnow())
        session.flush()
        return case.number


@pytest.mark.parametrize("target, reason", [
    ("self", "cannot be merged into itself"),
    ("2001019999", "there is no case 2001019999"),
    ("closed", "is rejected: there is nothing to follow there"),
    ("open", None),
])
def test_merge_checks_its_target(sessions, store_settings, target, reason):
    number = new_case(sessions, store_settings)
    into = {"self": number, "2001019999": "2001019999"}.get(target) or new_case(sessions, store_settings)
    with sessions() as session, session.begin():
        if target == "closed":
            other = session.query(CaseRow).filter_by(number=into).one()
            transition(session, other, "rejected", "tester", "not ours", utcnow())
        case = session.query(CaseRow).filter_by(number=number).one()
        if reason is None:
            told = workflow.merge(session, case, into, "operator:test", utcnow())
            assert case.state == "merged" and case.merged_into == into and into in told[0].body
        else:
            with pytest.raises(IllegalTransition, match=reason):
                workflow.merge(session, case, into, "operator:test", utcnow())
            assert case.state == "received"
            assert session.query(DeliveryRow).filter_by(case_id=case.id).count() == 0  # nobody told anything


def test_a_rejection_needs_a_reason(sessions, store_settings):
    number = new_case(sessions, store_settings)
    with sessions() as session, session.begin():
        case = session.query(CaseRow).filter_by(number=number).one()
        with pytest.raises(IllegalTransition, match="needs a reason"):
            workflow.reject(session, case, "operator:test", "  ", utcnow())
        assert workflow.reject(session, case, "operator:test", "商业纠纷", utcnow()) and case.state == "rejected"


# --- Telegram's 4,096 characters ---------------------------------------------------------------------


def test_a_task_alert_for_a_long_appeal_fits_telegram_and_points_to_the_whole_text(sessions, store_settings):
    text = "路灯坏了。" * 818  # 4,090 characters
    number = new_case(sessions, store_settings, text)
    world = World(store_settings, CITY, classifier=None)
    worker = next(w for w in CITY.workers.values() if w.role == "grid_worker" and w.grid_code == "QH-DH-01-01")
    with sessions() as session, session.begin():
        case = session.query(CaseRow).filter_by(number=number).one()
        queued = workflow.route(session, world, case, utcnow())
        assert queued and all(len(row.body) <= replies.TELEGRAM_LIMIT for row in queued)
        alert = next(row for row in queued if row.recipient == str(worker.telegram_chat_id))
        assert f"共4090字，全文：/case {number}" in alert.body
        parts = workflow.case_text(session, worker, number)
        assert len(parts) == 2 and all(len(row.body) <= replies.TELEGRAM_LIMIT for row in parts)
        assert "".join(row.body.split("：\n", 1)[1] for row in parts) == text
        stranger = next(w for w in CITY.workers.values() if w.role == "grid_worker" and w.grid_code == "QH-XS-01-01")
        assert "不在您的待办中" in workflow.case_text(session, stranger, number)[0].body


# --- strict CSV import ------------------------------------------------------------------------------


def broken_copy(tmp_path: Path, filename: str, line: int, edit) -> Path:
    folder = tmp_path / "city"
    shutil.copytree(CONFIG / "city", folder)
    path = folder / filename
    lines = path.read_text(encoding="utf-8").split("\n")
    lines[line - 1] = edit(lines[line - 1])
    path.write_text("\n".join(lines), encoding="utf-8")
    return folder


@pytest.mark.parametrize("filename, line, edit, where", [
    ("places.csv", 6, lambda row: row.replace(",", ',"', 1), "places.csv:6:1: bad CSV quoting"),
    ("places.csv", 6, lambda row: row + ",extra", "places.csv:6:6: expected 5 fields, found 6"),
    ("residents.csv", 3, lambda row: ",".join(row.split(",")[:4]), "residents.csv:3:address: expected 10 fields"),
    ("workers.csv", 2, lambda row: row.replace("吕丽君", ""), "workers.csv:2:name: is empty"),
    ("residents.csv", 2, lambda row: row.replace("+8617033259997", "whatsapp:+8617033259997"),
     "residents.csv:2:phone: 'whatsapp:+8617033259997' is not a phone number"),
    ("grids.csv", 2, lambda row: row.replace(",0,", ",²,", 1), "grids.csv:2:level"),
    ("residents.csv", 2, lambda row: row.replace(",1972", ",１９７２"), "residents.csv:2:birth_year"),
])
def test_a_bad_csv_row_is_reported_at_file_row_column_and_nothing_loads(tmp_path, filename, line, edit, where):
    with pytest.raises(CityImportError) as raised:
        load_city(broken_copy(tmp_path, filename, line, edit))
    assert any(problem.startswith(where) for problem in raised.value.problems), raised.value.problems


def test_phones_written_nationally_are_read_in_the_default_region(tmp_path):
    folder = broken_copy(tmp_path, "residents.csv", 2, lambda row: row.replace("+8617033259997", "170 3325 9997"))
    assert load_city(folder, "CN").residents["R0001"].phone == "+8617033259997"


@pytest.fixture(scope="module")
def small_city(tmp_path_factory) -> Path:
    """The sample city with ten residents: the fuzzing below reloads it once per example."""
    folder = tmp_path_factory.mktemp("small") / "city"
    shutil.copytree(CONFIG / "city", folder)
    residents = folder / "residents.csv"
    residents.write_text("\n".join(residents.read_text(encoding="utf-8").split("\n")[:11]) + "\n", encoding="utf-8")
    return folder


@pytest.mark.slow
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.sampled_from(list(',"\n\r x1') + ["\ufeff", "²"]), min_size=1, max_size=30))
def test_any_damage_to_a_row_is_a_problem_or_a_city(small_city, damage):
    places = small_city / "places.csv"
    original = (CONFIG / "city" / "places.csv").read_text(encoding="utf-8")
    cut = original.index("\n", original.index("\n") + 1) + 12  # inside the second place
    places.write_text(original[:cut] + damage + original[cut:], encoding="utf-8")
    try:
        city = load_city(small_city)
    except CityImportError as error:
        assert all(problem.startswith("places.csv:") for problem in error.problems), error.problems
    else:
        assert len(city.places) == 501 and len(city.residents) == 10  # the damage kept the row valid
