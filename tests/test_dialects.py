"""Where SQLite and PostgreSQL differ, tested on both rather than assumed: the intake's two inserts,
the ON CONFLICT paths, the case-number counter under concurrent writers, and time zones."""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import datetime, timedelta

import pytest
from sqlalchemy import create_engine, func, select

from adapters import InboundMessage
from gateway.domain.cases import next_case_number
from gateway.domain.city import load_city
from gateway.pipeline import set_opt_out
from gateway.roles.intake import insert_on_sqlite, insert_with_core
from gateway.store import (
    CaseCounterRow,
    ContactRow,
    InboundRow,
    ResidentRow,
    make_engine,
    migrate,
    session_factory,
)
from tests.conftest import CONFIG, ROOT, stack_environment


def messages(prefix: str, count: int) -> list[InboundMessage]:
    return [InboundMessage("sms", f"{prefix}{n:04d}", "+8617199100001", f"第{n}条 🚧 \"引号\" \\",
                           ("https://api.twilio.com/m/1",), payload={"n": n, "备注": "保留"}) for n in range(count)]


def test_the_core_insert_on_postgresql_stores_what_the_sqlite_insert_stores(postgres, tmp_path):
    """The intake takes its driver-level insert on SQLite and the Core executemany on PostgreSQL."""
    # A retry inside the group is skipped; the residents' bot's channel name is 17 characters long.
    first = messages("SM", 40) + messages("SM", 3) + [
        InboundMessage("telegram-resident", "42:7", "tg:42", "", (), "contact", {"phone": "+8617199100001"})]
    again = messages("SM", 45)[38:]  # two stored already, five new
    now = datetime(2026, 12, 3, 14, 5, 6, 789012)
    outcomes = []
    for url, insert in ((f"sqlite:///{tmp_path / 'a.db'}", insert_on_sqlite), (postgres.database(), insert_with_core)):
        engine = make_engine(url)
        migrate(engine)
        with engine.begin() as connection:
            stored_first = insert(connection, first, now)
        with engine.begin() as connection:
            stored_again = insert(connection, again, now)
        with session_factory(engine)() as session:
            rows = [(r.id, r.channel, r.provider_id, r.sender, r.text, r.media, r.kind, r.payload, r.received_at)
                    for r in session.scalars(select(InboundRow).order_by(InboundRow.id))]
        # Ids: a skipped conflict still uses up a value of PostgreSQL's sequence, so they may skip
        # there (nothing relies on dense ids); each returned id must be its own row's.
        by_id = {row[0]: row[1:3] for row in rows}
        assert all(by_id[i] == (channel, key) for i, channel, key in stored_first + stored_again)
        assert [row[0] for row in rows] == sorted(row[0] for row in rows)
        outcomes.append(([r[1:] for r in sorted(stored_first)], [r[1:] for r in sorted(stored_again)],
                         [row[1:] for row in rows]))
        engine.dispose()
    sqlite, postgresql = outcomes
    assert postgresql == sqlite
    assert len(sqlite[0]) == 41 and [p for _, p in sqlite[1]] == [f"SM{n:04d}" for n in range(40, 45)]
    assert sqlite[2][7][6] == {"n": 7, "备注": "保留"} and sqlite[2][0][7] == now


def test_case_numbers_from_concurrent_writers_are_unique_and_without_gaps(store_settings):
    """Eight threads, each its own connection, allocate numbers; a rolled-back case returns its number."""
    engine = make_engine(store_settings.sqlalchemy_url)
    sessions = session_factory(engine)
    day = datetime(2031, 1, 1, 9)  # a day no other test numbers cases on
    committed: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def allocate(worker: int) -> None:
        start.wait()
        for n in range(25):
            with sessions() as session, session.begin():
                number = next_case_number(session, day)
                if (worker + n) % 5 == 0:  # the case failed to open: its number must not be used up
                    session.rollback()
                    continue
            with lock:
                committed.append(number)

    threads = [threading.Thread(target=allocate, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(committed) == 8 * 25 - 40
    assert sorted(committed) == [f"310101{n:04d}" for n in range(1, len(committed) + 1)]
    with sessions() as session:
        assert session.get(CaseCounterRow, "310101").last == len(committed)
    engine.dispose()


def test_opting_out_confirms_once_through_on_conflict(store_settings):
    engine = make_engine(store_settings.sqlalchemy_url)
    sessions = session_factory(engine)
    now = datetime(2026, 12, 3, 8)
    outcomes = []
    for opted_out in (True, True, False, False, True):
        with sessions() as session, session.begin():
            outcomes.append(set_opt_out(session, "sms", "+8617199100777", opted_out, now))
    assert outcomes == [True, False, True, False, True]
    with sessions() as session:
        [row] = session.scalars(select(ContactRow).where(ContactRow.address == "+8617199100777")).all()
        assert row.opted_out is True
    engine.dispose()


@pytest.mark.parametrize("server_zone", ["UTC", "Asia/Shanghai", "America/New_York"])
def test_naive_utc_times_round_trip_whatever_the_server_zone(postgres, server_zone):
    """The store keeps naive UTC (`timestamp without time zone`): a server zone must not shift it."""
    url = postgres.database()
    migrate(make_engine(url))
    engine = create_engine(url, connect_args={"options": f"-c timezone={server_zone}"})
    moments = [datetime(2026, 3, 8, 6, 59, 59, 999999), datetime(2026, 11, 1, 5, 30, 0, 1), datetime(2026, 12, 31, 16)]
    with session_factory(engine)() as session, session.begin():
        session.add_all(InboundRow(channel="sms", provider_id=f"SM-tz-{n}", sender="+8617199100001", text="",
                                   received_at=moment, processed_at=moment + timedelta(hours=8))
                        for n, moment in enumerate(moments))
    with session_factory(engine)() as session:
        rows = session.scalars(select(InboundRow).order_by(InboundRow.id)).all()
        assert [(r.received_at, r.processed_at) for r in rows] == [(m, m + timedelta(hours=8)) for m in moments]
        assert all(r.received_at.tzinfo is None for r in rows)
        before = session.scalars(select(InboundRow.provider_id)
                                 .where(InboundRow.received_at < datetime(2026, 11, 1, 5, 30, 0, 1))).all()
        assert before == ["SM-tz-0"]
    engine.dispose()


@pytest.mark.slow
def test_hosts_starting_together_migrate_and_import_once(postgres, tmp_path):
    """Three `gridline migrate` at once on one PostgreSQL: the advisory lock lets one do the work."""
    url = postgres.database()
    runs = [subprocess.Popen([sys.executable, "-m", "gateway.cli", "migrate"], cwd=ROOT,
                             env=stack_environment(tmp_path / f"host-{n}", GRIDLINE_DATABASE_URL=url),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in range(3)]
    outcomes = [(run.wait(120), run.stderr.read()) for run in runs]
    assert [code for code, _ in outcomes] == [0, 0, 0], outcomes
    assert sum("imported the city" in err for _, err in outcomes) == 1
    with session_factory(make_engine(url))() as session:
        residents = session.scalar(select(func.count()).select_from(ResidentRow))
    assert residents == len(load_city(CONFIG / "city").residents)
