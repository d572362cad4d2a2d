"""`gridline report`: per-unit figures over hand-built cases in a private store, and the three outputs."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from sqlalchemy.orm import Session

from gateway import strict
from gateway.config import Settings, load_settings
from gateway.domain import operators, report
from gateway.domain.city import City
from gateway.store import CaseRow, load_city_from_store, make_engine, session_factory
from tests.conftest import CONFIG, ROOT, stack_environment

NOW = datetime(2024, 6, 10, 12, 0)  # naive UTC, like the store

# number, grid, department, worker, created days before NOW, SLA hours, state, hours to resolve, rating.
# Streets: QH-DH (communities QH-DH-01 with grids -01/-02, QH-DH-02) and QH-XS; R6 has no grid.
CASES = [
    ("R1", "QH-DH-01-01", "SANITATION", "W0027", 5, 48, "closed", 10, 5),
    ("R2", "QH-DH-01-01", "SANITATION", "W0027", 4, 48, "closed", 60, 1),  # late
    ("R3", "QH-DH-01-02", "WATER", "W0031", 3, 24, "resolved", 24, None),  # exactly on the deadline
    ("R4", "QH-DH-02-01", "WATER", "W0043", 2, 24, "in_progress", None, None),  # overdue since NOW-1d
    ("R5", "QH-XS-01-01", "SANITATION", "W0093", 1, 48, "assigned", None, None),  # due NOW+1d
    ("R6", None, "GRID_CENTER", None, 10, 72, "received", None, None),  # overdue since NOW-7d
    ("R7", "QH-DH-01-02", "SANITATION", "W0031", 6, 48, "merged", None, None),  # past due, but not open
    ("R8", "QH-XS-01-01", "WATER", "W0093", 3, 24, "in_progress", 5, 1),  # reopened: not resolved, overdue
    ("R9", "QH-DH-02-01", "WATER", "W0043", 8, 24, "closed", 30, 4),  # late
]


def case_row(number: str, grid: str | None, department: str, worker: str | None, days_ago: int, sla_hours: int,
             state: str, hours_to_resolve: int | None, rating: int | None) -> CaseRow:
    created = NOW - timedelta(days=days_ago)
    resolved = None if hours_to_resolve is None else created + timedelta(hours=hours_to_resolve)
    return CaseRow(number=number, channel="sms", reporter="+8617000000001", language="zh", text="测试",
                   department=department, grid_code=grid, confidence=1.0, queue="routed", state=state,
                   assigned_worker_id=worker, deadline=created + timedelta(hours=sla_hours), resolved_at=resolved,
                   rating=rating, created_at=created, updated_at=created)


@pytest.fixture(scope="module")
def report_settings(tmp_path_factory: pytest.TempPathFactory, new_database) -> Settings:
    """A fresh store of our own holding the sample city and exactly the CASES above (each dialect)."""
    from gateway.roles.supervisor import prepare_store

    home = tmp_path_factory.mktemp("report")
    settings = replace(load_settings({}), home=home, config_dir=CONFIG, database_url=new_database(home))
    prepare_store(settings)
    engine = make_engine(settings.sqlalchemy_url)
    with session_factory(engine)() as session, session.begin():
        session.add_all(case_row(*case) for case in CASES)
    engine.dispose()
    return settings


@pytest.fixture(scope="module")
def store(report_settings: Settings) -> Iterator[tuple[Session, City]]:
    engine = make_engine(report_settings.sqlalchemy_url)
    with session_factory(engine)() as session:
        yield session, load_city_from_store(session)
    engine.dispose()


Figures = tuple[int, int, int, int, int, int, int, float | None]


def figures(rows: list[report.UnitFigures]) -> dict[str | None, Figures]:
    """unit → (received, resolved, closed, on_time, rated, satisfied, overdue, median hours); totals as 'total'."""
    assert [row.total for row in rows] == [False] * (len(rows) - 1) + [True]
    return {("total" if row.total else row.unit): (row.received, row.resolved, row.closed, row.on_time, row.rated,
                                                   row.satisfied, row.overdue, row.median_hours) for row in rows}


def test_street_level_rolls_up_communities_and_grids(store):
    session, city = store
    rows = report.unit_figures(session, city, level="street", now=NOW)
    assert figures(rows) == {
        "QH-DH": (6, 4, 3, 2, 3, 2, 1, 27.0),  # R1 R2 R3 R4 R7 R9; handled 10, 60, 24, 30 hours
        "QH-XS": (2, 0, 0, 0, 1, 0, 1, None),
        None: (1, 0, 0, 0, 0, 0, 1, None),
        "total": (9, 4, 3, 2, 4, 2, 3, 27.0),
    }
    assert [row.name for row in rows] == ["东湖街道", "西山街道", "未定位", "合计"]
    dh = rows[0]
    assert (dh.on_time_rate, dh.satisfaction_rate) == (0.5, 2 / 3)
    assert (rows[1].on_time_rate, rows[1].satisfaction_rate, rows[2].satisfaction_rate) == (None, 0.0, None)


def test_community_and_grid_levels(store):
    session, city = store
    assert figures(report.unit_figures(session, city, level="community", now=NOW)) == {
        "QH-DH-01": (4, 3, 2, 2, 2, 1, 0, 24.0),
        "QH-DH-02": (2, 1, 1, 0, 1, 1, 1, 30.0),
        "QH-XS-01": (2, 0, 0, 0, 1, 0, 1, None),
        None: (1, 0, 0, 0, 0, 0, 1, None),
        "total": (9, 4, 3, 2, 4, 2, 3, 27.0),
    }
    grids = report.unit_figures(session, city, level="grid", now=NOW)
    assert figures(grids) == {
        "QH-DH-01-01": (2, 2, 2, 1, 2, 1, 0, 35.0),
        "QH-DH-01-02": (2, 1, 0, 1, 0, 0, 0, 24.0),
        "QH-DH-02-01": (2, 1, 1, 0, 1, 1, 1, 30.0),
        "QH-XS-01-01": (2, 0, 0, 0, 1, 0, 1, None),
        None: (1, 0, 0, 0, 0, 0, 1, None),
        "total": (9, 4, 3, 2, 4, 2, 3, 27.0),
    }
    assert grids[0].name == "翠湖社区第一网格"


def test_department_and_worker_levels(store):
    session, city = store
    departments = report.unit_figures(session, city, level="department", now=NOW)
    assert figures(departments) == {
        "GRID_CENTER": (1, 0, 0, 0, 0, 0, 1, None),
        "SANITATION": (4, 2, 2, 1, 2, 1, 0, 35.0),
        "WATER": (4, 2, 1, 1, 2, 1, 2, 27.0),
        "total": (9, 4, 3, 2, 4, 2, 3, 27.0),
    }
    assert departments[2].name == "清河区水务局（供水排水）"
    workers = report.unit_figures(session, city, level="worker", now=NOW)
    assert figures(workers) == {
        "W0027": (2, 2, 2, 1, 2, 1, 0, 35.0),
        "W0031": (2, 1, 0, 1, 0, 0, 0, 24.0),
        "W0043": (2, 1, 1, 0, 1, 1, 1, 30.0),
        "W0093": (2, 0, 0, 0, 1, 0, 1, None),
        None: (1, 0, 0, 0, 0, 0, 1, None),
        "total": (9, 4, 3, 2, 4, 2, 3, 27.0),
    }
    assert [row.name for row in workers[:1] + workers[-2:]] == ["孔凯", "未指派", "合计"]


def test_since_keeps_only_the_cases_created_after_it(store):
    session, city = store
    rows = report.unit_figures(session, city, level="street", since=NOW - timedelta(days=4, hours=12), now=NOW)
    assert figures(rows) == {  # R2 R3 R4 R5 R8
        "QH-DH": (3, 2, 1, 1, 1, 0, 1, 42.0),
        "QH-XS": (2, 0, 0, 0, 1, 0, 1, None),
        "total": (5, 2, 1, 1, 2, 0, 2, 42.0),
    }


@pytest.mark.parametrize(("now", "overdue"), [
    (NOW - timedelta(days=9), 0),  # every deadline still ahead
    (NOW - timedelta(days=7), 0),  # R6's deadline is now: not yet overdue
    (NOW, 3),  # R4, R6, R8
    (NOW + timedelta(days=2), 4),  # and R5; R7 is merged, the rest resolved
])
def test_overdue_counts_open_cases_past_their_deadline_at_now(store, now, overdue):
    session, city = store
    assert report.unit_figures(session, city, level="street", now=now)[-1].overdue == overdue


def test_scope_and_jurisdiction_limit_the_cases(store):
    session, city = store
    within = report.unit_figures(session, city, level="grid", now=NOW, visible=report.scope(city, within="QH-DH-01"))
    assert figures(within) == {
        "QH-DH-01-01": (2, 2, 2, 1, 2, 1, 0, 35.0),
        "QH-DH-01-02": (2, 1, 0, 1, 0, 0, 0, 24.0),
        "total": (4, 3, 2, 2, 2, 1, 0, 24.0),
    }
    officer = operators.jurisdiction(city, city.workers["W0006"])  # community officer of QH-DH-01
    assert figures(report.unit_figures(session, city, level="grid", now=NOW, visible=officer)) == figures(within)
    water = report.scope(city, within="QH-DH", department="WATER")
    assert figures(report.unit_figures(session, city, level="street", now=NOW, visible=water)) == {
        "QH-DH": (3, 2, 1, 1, 1, 1, 1, 27.0),  # R3 R4 R9
        "total": (3, 2, 1, 1, 1, 1, 1, 27.0),
    }
    with pytest.raises(KeyError):
        report.scope(city, within="QH-NOPE")
    with pytest.raises(KeyError):
        report.scope(city, department="NOPE")
    assert report.scope(city) is None


def test_since_is_local_wall_time_unless_it_has_an_offset():
    assert strict.moment("2024-06-05", "since", "Asia/Shanghai") == datetime(2024, 6, 4, 16, 0)
    assert strict.moment("2024-06-05T00:00+00:00", "since", "Asia/Shanghai") == datetime(2024, 6, 5)


def test_json_and_csv_parse_back(store):
    session, city = store
    rows = report.unit_figures(session, city, level="street", now=NOW)
    parsed = json.loads(report.as_json(rows))
    assert parsed[0] == {
        "unit": "QH-DH", "name": "东湖街道", "total": False, "received": 6, "resolved": 4, "closed": 3,
        "on_time": 2, "on_time_rate": 0.5, "median_hours": 27.0, "rated": 3, "satisfied": 2,
        "satisfaction_rate": 0.6667, "overdue": 1,
    }
    assert [(o["unit"], o["name"], o["total"]) for o in parsed[1:]] == \
        [("QH-XS", "西山街道", False), (None, "未定位", False), (None, "合计", True)]
    assert parsed[1]["on_time_rate"] is None and parsed[1]["median_hours"] is None
    assert parsed[1]["satisfaction_rate"] == 0.0

    text = report.as_csv(rows)
    assert text.splitlines()[0] == ("unit,name,received,resolved,closed,on_time,on_time_rate,median_hours,"
                                    "rated,satisfied,satisfaction_rate,overdue")
    table = list(csv.DictReader(io.StringIO(text)))
    assert [(r["unit"], r["name"], r["received"]) for r in table] == \
        [("QH-DH", "东湖街道", "6"), ("QH-XS", "西山街道", "2"), ("", "未定位", "1"), ("", "合计", "9")]
    assert (table[0]["on_time_rate"], table[0]["median_hours"], table[0]["satisfaction_rate"]) == \
        ("0.5", "27.0", "0.6667")
    assert (table[1]["on_time_rate"], table[1]["median_hours"], table[3]["overdue"]) == ("", "", "3")


def test_table_is_aligned_with_dashes_where_there_is_no_data(store):
    session, city = store
    lines = report.as_table(report.unit_figures(session, city, level="street", now=NOW)).splitlines()
    assert len({report._width(line) for line in lines}) == 1, "\n".join(lines)  # CJK counts double
    assert lines[0].split() == ["unit", "name", "received", "resolved", "closed", "on-time", "median", "h",
                                "satisfied", "overdue"]
    assert lines[2].split() == ["QH-DH", "东湖街道", "6", "4", "3", "50.0%", "27.0", "66.7%", "1"]
    assert lines[3].split() == ["QH-XS", "西山街道", "2", "0", "0", "—", "—", "0.0%", "1"]
    assert lines[4].split() == ["—", "未定位", "1", "0", "0", "—", "—", "—", "1"]
    assert set(lines[1]) == set(lines[5]) == {"-", " "}
    assert lines[6].split() == ["合计", "9", "4", "3", "50.0%", "27.0", "50.0%", "3"]


def gridline(settings: Settings, *args: str) -> subprocess.CompletedProcess:
    env = stack_environment(settings.home, GRIDLINE_DATABASE_URL=settings.sqlalchemy_url)
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_cli_report(report_settings):
    done = gridline(report_settings, "report", "--format", "json", "--since", "2024-06-06")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)  # R2 R3 R4 R5 R8; past their deadlines today: R4 R5 R8
    assert [(o["unit"], o["received"], o["overdue"]) for o in rows] == \
        [("QH-DH", 3, 1), ("QH-XS", 2, 2), (None, 5, 3)]
    refused = gridline(report_settings, "report", "--within", "QH-NOPE")
    assert refused.returncode == 1 and "no grid 'QH-NOPE'" in refused.stderr


def test_unknown_level_is_refused(store):
    session, city = store
    with pytest.raises(ValueError, match="level must be one of"):
        report.unit_figures(session, city, level="district")

