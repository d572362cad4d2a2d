"""Broadcasts below HTTP: audience parsing, preview figures recomputed from the CSVs, opt-outs,
quiet hours on an injected clock, templates, and who may address whom."""

from __future__ import annotations

import csv
from dataclasses import replace
from datetime import datetime

import pytest
from sqlalchemy import delete

from broadcasts import audience, service
from broadcasts.audience import And, Not, Or, Term
from broadcasts.schedule import QuietHours, release_time
from gateway.config import load_settings
from gateway.roles.supervisor import prepare_store
from gateway.store import ContactRow, make_engine, session_factory
from tests.conftest import CONFIG
from tests.test_sms_flow import CITY

SIGNATURE = "【测试网格中心】"
TEXTS = {"zh": "{name}您好：明天高温，请减少外出。网格员{worker_name}，电话{worker_phone}（{grid}）",
         "en": "Dear {name}, a heat wave is coming. Your grid worker {worker_name}: {worker_phone} ({grid})"}
DAY = datetime(2026, 7, 1)  # naive UTC, as the store keeps time; Asia/Shanghai is UTC+8


@pytest.fixture(scope="module")
def settings(tmp_path_factory, new_database):
    home = tmp_path_factory.mktemp("broadcast-store")
    settings = replace(load_settings({}), home=home, config_dir=CONFIG, sms_signature=SIGNATURE,
                       database_url=new_database(home))
    prepare_store(settings)
    return settings


@pytest.fixture
def session(settings):
    with session_factory(make_engine(settings.sqlalchemy_url))() as session:
        yield session
        session.rollback()


@pytest.fixture
def tree(session):
    return audience.GridTree.load(session)


def term(key: str, value: str, column: int) -> Term:
    return Term(key, value, column)


def test_not_binds_tighter_than_and_which_binds_tighter_than_or():
    parsed = audience.parse("tag:elderly or not tag:disabled and grid:QH-DH")
    assert parsed == Or((term("tag", "elderly", 1),
                         And((Not(term("tag", "disabled", 20)), term("grid", "QH-DH", 37)))))
    grouped = audience.parse("(tag:elderly or tag:disabled) and lang:en")
    assert grouped == And((Or((term("tag", "elderly", 2), term("tag", "disabled", 17))),
                           term("language", "en", 35)))
    assert audience.parse("NOT not all") == Not(Not(term("all", "", 9)))


@pytest.mark.parametrize("expression, reason", [
    ("tag:eldery", "unknown tag 'eldery' at column 1"),
    ("tag:elderly and grid:QH-XX", "unknown grid 'QH-XX' at column 17"),
    ("tag:elderly and", "ends where a term was expected"),
    ("(tag:elderly or tag:disabled", "parenthesis opened at column 1 is not closed"),
    ("tag:elderly tag:disabled", "unexpected 'tag:disabled' at column 13"),
    ("age:70", "unknown term 'age:70'"),
    ("channel:fax", "unknown channel 'fax'"),
    ("", "empty audience"),
])
def test_bad_expressions_are_refused_with_the_reason(session, tree, expression, reason):
    with pytest.raises(audience.AudienceError, match=reason.replace("(", r"\(")):
        audience.condition(session, tree, expression)


# --- preview, recomputed from the CSVs ---------------------------------------------------------------


def csv_rows(name: str) -> list[dict[str, str]]:
    with (CONFIG / "city" / name).open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def expected_segments(text: str) -> int:
    """Independent of the adapter: GSM-7 if plain ASCII here, else UCS-2 (70 / 67 per part)."""
    single, part = (160, 153) if text.isascii() else (70, 67)
    return 1 if len(text) <= single else -(-len(text) // part)


def expected_text(resident: dict[str, str]) -> str:
    worker = next(w for w in csv_rows("workers.csv")
                  if w["role"] == "grid_worker" and w["grid_code"] == resident["grid_code"])
    grid = next(g for g in csv_rows("grids.csv") if g["code"] == resident["grid_code"])
    language = resident["language"]
    return TEXTS[language].format(name=resident["name"], worker_name=worker["name"], worker_phone=worker["phone"],
                                  grid=grid["name_en"] if language == "en" else grid["name"])


@pytest.mark.parametrize("expression, chosen", [
    ("tag:elderly and tag:empty_nest and grid:QH-DH",
     lambda r: {"elderly", "empty_nest"} <= set(r["tags"].split("|")) and r["grid_code"].startswith("QH-DH-")),
    ("(tag:disabled or tag:veteran) and not grid:QH-LT",
     lambda r: bool({"disabled", "veteran"} & set(r["tags"].split("|"))) and not r["grid_code"].startswith("QH-LT")),
    ("language:en or tag:pregnant",
     lambda r: r["language"] == "en" or "pregnant" in r["tags"].split("|")),
])
def test_preview_figures_match_the_csvs(settings, session, tree, expression, chosen):
    residents = [r for r in csv_rows("residents.csv") if chosen(r)]
    sms = [r for r in residents if not r["telegram_chat_id"]]
    segments = sum(expected_segments(SIGNATURE + expected_text(r)) for r in sms)

    preview = service.preview(session, settings, tree, expression, TEXTS, None, emergency=False)
    assert preview.recipients == len(residents)
    assert preview.by_channel == {k: v for k, v in {"sms": len(sms), "telegram": len(residents) - len(sms)}.items()
                                  if v}
    assert preview.by_language == {lang: sum(r["language"] == lang for r in residents)
                                   for lang in {r["language"] for r in residents}}
    assert preview.sms_segments == segments
    assert preview.sms_cost == round(segments * settings.sms_segment_cost, 2)
    for sample in preview.sample:
        resident = next(r for r in residents if r["id"] == sample["resident"])
        assert sample["text"] == expected_text(resident)
        assert resident["phone"] not in str(sample)


def test_an_english_notice_long_enough_for_two_gsm_segments(settings, session, tree):
    long_text = {"en": "Dear {name}, " + "water will be off tomorrow morning, please store some. " * 3}
    preview = service.preview(session, settings, tree, "language:en and channel:sms", long_text, None, False)
    english_sms = [r for r in csv_rows("residents.csv") if r["language"] == "en" and not r["telegram_chat_id"]]
    assert preview.recipients == len(english_sms)
    # The signature is Chinese, so even English SMS are UCS-2: 67 characters a part.
    assert preview.sms_segments == sum(
        expected_segments(SIGNATURE + long_text["en"].format(name=r["name"])) for r in english_sms)


def test_templates_with_unknown_fields_are_refused(settings, session, tree):
    with pytest.raises(service.BroadcastError, match="unknown field.*age"):
        service.preview(session, settings, tree, "all", {"zh": "{name}，您{age}岁了"}, None, False)


# --- opt-outs -----------------------------------------------------------------------------------------


def test_opted_out_residents_are_excluded_unless_emergency(settings, session, tree):
    quitters = [r for r in CITY.residents.values() if r.grid_code == "QH-NM-01-01"][:3]
    session.add_all([ContactRow(channel="sms", address=quitters[0].phone, opted_out=True),
                     ContactRow(channel="sms", address=quitters[1].phone, opted_out=False)])
    if quitters[2].telegram_chat_id:
        session.add(ContactRow(channel="telegram", address=str(quitters[2].telegram_chat_id), opted_out=True))
    else:
        session.add(ContactRow(channel="sms", address=quitters[2].phone, opted_out=True))
    session.flush()
    everyone = sum(r.grid_code == "QH-NM-01-01" for r in CITY.residents.values())

    normal = service.preview(session, settings, tree, "grid:QH-NM-01-01", {"zh": "x"}, None, emergency=False)
    assert (normal.recipients, normal.excluded_opted_out) == (everyone - 2, 2)
    emergency = service.preview(session, settings, tree, "grid:QH-NM-01-01", {"zh": "x"}, None, emergency=True)
    assert (emergency.recipients, emergency.excluded_opted_out) == (everyone, 0)
    session.execute(delete(ContactRow))


# --- quiet hours on an injected clock -------------------------------------------------------------------


def test_quiet_hours_wrap_past_midnight_in_local_time():
    quiet = QuietHours.parse("21:00-08:00")
    # 14:30 UTC is 22:30 in Shanghai: deferred to 08:00 local = 00:00 UTC the next day.
    assert release_time(DAY.replace(hour=14, minute=30), quiet, "Asia/Shanghai") == datetime(2026, 7, 2)
    # 23:30 UTC is 07:30 local, still quiet: 08:00 local the same local day.
    assert release_time(DAY.replace(hour=23, minute=30), quiet, "Asia/Shanghai") == datetime(2026, 7, 2)
    noon = DAY.replace(hour=4)  # 12:00 local
    assert release_time(noon, quiet, "Asia/Shanghai") == noon
    assert QuietHours.parse("") is None


@pytest.mark.parametrize("emergency", [False, True])
def test_a_notice_ordered_at_night_waits_for_morning_unless_emergency(settings, session, tree, emergency):
    evening = DAY.replace(hour=14, minute=30)  # 22:30 in Shanghai
    broadcast = service.create(session, settings, tree, None, title="night", expression="grid:QH-DH-01-01",
                               texts={"zh": "x"}, emergency=emergency, now=evening)
    service.send(session, settings, tree, broadcast, None, evening)
    assert broadcast.state == "scheduled"
    started = service.start_due(session, settings, evening)
    if emergency:
        assert started == [broadcast.id]
        return
    assert started == [] and service.status(session, settings, broadcast, evening)["starts_at"] == "2026-07-02T00:00:00"
    assert service.start_due(session, settings, datetime(2026, 7, 1, 23, 59)) == []
    assert service.start_due(session, settings, datetime(2026, 7, 2, 0, 0, 1)) == [broadcast.id]
    session.refresh(broadcast)
    assert broadcast.state == "sending"
    assert not service.allowed_now(settings, broadcast, datetime(2026, 7, 2, 14, 0))  # 22:00 local again


# --- jurisdiction ------------------------------------------------------------------------------------


def worker(role: str, *, grid: str | None = None, department: str | None = None):
    return next(w for w in CITY.workers.values() if w.role == role and (grid is None or w.grid_code == grid)
                and (department is None or w.department_code == department))


@pytest.mark.parametrize("operator, expression, allowed", [
    (worker("community_officer", grid="QH-DH-01"), "tag:elderly and grid:QH-DH-01", True),
    (worker("community_officer", grid="QH-DH-01"), "tag:elderly and grid:QH-DH-01-02", True),
    (worker("community_officer", grid="QH-DH-01"), "tag:elderly", False),
    (worker("community_officer", grid="QH-DH-01"), "grid:QH-DH-01 or grid:QH-DH-02-01", False),
    (worker("grid_worker", grid="QH-LT-02-02"), "grid:QH-LT-02-02 and not tag:veteran", True),
    (worker("street_officer", grid="QH-XS"), "grid:QH-DH-01-01", False),
    (worker("dept_staff", department="GRID_CENTER"), "all", True),
    (worker("dept_staff", department="WATER"), "grid:QH-DH-01", False),
])
def test_operators_only_address_their_own_jurisdiction(settings, session, tree, operator, expression, allowed):
    def create():
        return service.create(session, settings, tree, operator, title="", expression=expression,
                              texts={"zh": "x"}, emergency=False, now=DAY)

    if allowed:
        assert create().scope == (operator.grid_code if operator.role != "dept_staff" else None)
    else:
        with pytest.raises(service.BroadcastError) as refused:
            create()
        assert refused.value.status == 403
        assert "outside your jurisdiction" in refused.value.reason or "cannot send" in refused.value.reason
