"""The intake process: web processes hand it messages over a unix socket, it stores them durably.

Below the HTTP layer: a real IntakeServer on a real socket with a real SQLite store, and the web
side's `Intake` talking to it. The last test kills the running stack's intake process with -9.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from adapters import InboundMessage
from gateway.roles import intake as intake_module
from gateway.roles.intake import (
    FrameReader,
    Intake,
    IntakeServer,
    StoreUnavailable,
    encode_frame,
    insert_on_sqlite,
    insert_with_core,
)
from gateway.store import InboundRow, make_engine, migrate, session_factory, utcnow
from tests.conftest import wait_for
from tests.twilio_client import inbound_form, post


def message(provider_id: str, text: str = "翠湖花园3号楼门口垃圾三天没人清了") -> InboundMessage:
    return InboundMessage("sms", provider_id, "+8617199100001", text, ("https://api.twilio.com/m/1",),
                          payload={"note": "保留"})


@pytest.fixture
def url(tmp_path: Path, new_database) -> str:
    """An empty database of each dialect: SQLite takes the intake's fast insert, PostgreSQL the Core one."""
    return new_database(tmp_path)


async def with_intake(tmp_path: Path, url: str, work, migrated: bool = True) -> tuple[object, list[list[int]]]:
    """Run `work(intake)` against a live IntakeServer; return its result and the ids it queued."""
    engine = make_engine(url)
    if migrated:
        migrate(engine)
    queued: list[list[int]] = []
    server = IntakeServer(engine, queued.append)
    stopping = asyncio.Event()
    serving = asyncio.create_task(server.serve(tmp_path / "intake.sock", stopping))
    intake = Intake(tmp_path / "intake.sock", engine, timeout=5)
    try:
        return await work(intake), queued
    finally:
        await intake.close()
        stopping.set()
        await serving
        engine.dispose()


def stored_rows(url: str) -> list[InboundRow]:
    with session_factory(make_engine(url))() as session:
        return list(session.scalars(select(InboundRow).order_by(InboundRow.id)))


def test_messages_stored_together_are_each_stored_once(tmp_path, url):
    async def work(intake: Intake) -> list[bool]:
        messages = [message(f"SM{n:032d}") for n in range(30)] + [message("SM-retried")] * 5
        return await asyncio.gather(*(intake.store(m) for m in messages))

    outcomes, queued = asyncio.run(with_intake(tmp_path, url, work))
    assert outcomes[:30] == [True] * 30
    assert sorted(outcomes[30:]) == [False] * 4 + [True]  # a retry in the same group is new once
    rows = stored_rows(url)
    assert len(rows) == 31 and len({row.provider_id for row in rows}) == 31
    assert rows[0].text == "翠湖花园3号楼门口垃圾三天没人清了" and rows[0].payload == {"note": "保留"}
    assert rows[0].media == ["https://api.twilio.com/m/1"]
    assert sorted(i for ids in queued for i in ids) == [row.id for row in rows]  # each queued once


def test_a_retry_after_the_first_is_stored_is_not_new(tmp_path, url):
    async def work(intake: Intake) -> tuple[bool, bool]:
        return await intake.store(message("SM-once")), await intake.store(message("SM-once"))

    (first, second), queued = asyncio.run(with_intake(tmp_path, url, work))
    assert (first, second) == (True, False)
    assert len(stored_rows(url)) == 1 and sum(map(len, queued)) == 1


def test_a_store_that_fails_answers_every_caller_and_recovers(tmp_path, url):
    async def work(intake: Intake) -> tuple[list[object], bool]:
        failed = await asyncio.gather(*(intake.store(message(f"SM-{n}")) for n in range(3)),
                                      return_exceptions=True)
        migrate(make_engine(url))  # the store is back
        return failed, await intake.store(message("SM-later"))

    (failed, later), queued = asyncio.run(with_intake(tmp_path, url, work, migrated=False))
    assert [type(error) for error in failed] == [StoreUnavailable] * 3
    assert later is True and [row.provider_id for row in stored_rows(url)] == ["SM-later"]


def test_a_message_that_cannot_be_encoded_is_stored_replaced_and_fails_no_neighbour(tmp_path, url):
    """JSON allows "\ud800", UTF-8 does not; PostgreSQL cannot store NUL. 20 rounds of one such
    message among 15 good ones in the same frame: every message is stored, the bad code points as U+FFFD."""
    async def work(intake: Intake) -> list[bool]:
        outcomes = []
        for round_ in range(20):
            batch = [message(f"SM{round_:02d}-{n:02d}") for n in range(15)]
            batch.insert(round_ % 15, message(f"TG{round_:02d}", text=f"路灯坏了\ud800{round_}\x00"))
            outcomes += await asyncio.gather(*(intake.store(m) for m in batch))  # one frame: one loop turn
        return outcomes

    outcomes, _ = asyncio.run(with_intake(tmp_path, url, work))
    assert outcomes == [True] * 320
    rows = stored_rows(url)
    assert len(rows) == 320
    assert {row.text for row in rows if row.provider_id.startswith("TG")} == {
        f"路灯坏了\ufffd{n}\ufffd" for n in range(20)}
    assert all(row.text == "翠湖花园3号楼门口垃圾三天没人清了" for row in rows if row.provider_id.startswith("SM"))


def test_the_sqlite_insert_stores_exactly_what_the_portable_one_stores(tmp_path, monkeypatch):
    monkeypatch.setattr(intake_module, "SQLITE_ROWS_PER_INSERT", 7)  # several statements in one group
    first = [message(f"SM{n:032d}", text=f"第{n}条 🚧 \"quoted\" 'single' \\ end") for n in range(20)]
    first[3] = InboundMessage("telegram-resident", "42:7", "tg:42", "", (), "contact", {"phone": "+8617199100001"})
    again = first[5:9] + [message("SM-new"), message("SM-new"), message("SM-last")]
    now = utcnow()
    outcomes = {}
    for insert in (insert_with_core, insert_on_sqlite):
        engine = make_engine(f"sqlite:///{tmp_path / insert.__name__}.db")
        migrate(engine)
        with engine.begin() as connection:
            stored_first = insert(connection, first, now)
        with engine.begin() as connection:
            stored_again = insert(connection, again, now)
        with session_factory(engine)() as session:
            rows = [(r.id, r.channel, r.provider_id, r.sender, r.text, r.media, r.kind, r.payload, r.received_at,
                     r.processed_at) for r in session.scalars(select(InboundRow).order_by(InboundRow.id))]
        with engine.connect() as connection:  # and the very text in the file, JSON and timestamps included
            stored_text = connection.exec_driver_sql("SELECT * FROM inbound_messages ORDER BY id").all()
        outcomes[insert.__name__] = (sorted(stored_first), sorted(stored_again), rows, stored_text)
        engine.dispose()
    core, sqlite = outcomes["insert_with_core"], outcomes["insert_on_sqlite"]
    assert sqlite == core
    assert len(core[0]) == 20 and [provider_id for _, _, provider_id in core[1]] == ["SM-new", "SM-last"]
    assert core[2][3][7] == {"phone": "+8617199100001"} and core[2][0][8] == now


def test_sqlite_keeps_statement_journals_in_memory_and_checkpoints_less_often(tmp_path):
    """Together they take a third off the intake's time per group (bench/sqlite_insert.py)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'intake.db'}")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA temp_store").scalar_one() == 2  # MEMORY
        assert connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one() == 4000
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar_one() == 2  # FULL: durable on commit
    engine.dispose()


def test_no_intake_process_is_a_clear_error_not_a_hang(tmp_path):
    async def work() -> float:
        intake = Intake(tmp_path / "nobody.sock", make_engine(f"sqlite:///{tmp_path / 'x.db'}"), timeout=1)
        started = time.monotonic()
        try:
            with pytest.raises(StoreUnavailable):
                await intake.store(message("SM-nowhere"))
            return time.monotonic() - started
        finally:
            await intake.close()

    assert asyncio.run(work()) < 5  # answered within its timeout, well inside Twilio's 15 s


def test_an_intake_that_never_answers_fails_its_callers_at_the_deadline(tmp_path):
    """It takes the frames and says nothing: every caller hears StoreUnavailable once its timeout
    is up, even those whose frames are still held back because the socket stopped draining."""
    async def work() -> tuple[list[object], float]:
        async def silent(reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
            await reader.read(1)  # reads one byte and then nothing: the socket buffer fills up
            await asyncio.sleep(60)

        server = await asyncio.start_unix_server(silent, tmp_path / "silent.sock")
        intake = Intake(tmp_path / "silent.sock", make_engine(f"sqlite:///{tmp_path / 'x.db'}"), timeout=1)
        started = time.monotonic()
        calls = []
        for turn in range(40):  # one frame a turn, 64 KiB each: more than the socket takes
            calls += [asyncio.create_task(intake.store(message(f"SM-{turn}-{n}", text="长" * 2000)))
                      for n in range(8)]
            await asyncio.sleep(0)
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        elapsed = time.monotonic() - started
        await intake.close()
        server.close()
        return outcomes, elapsed

    outcomes, elapsed = asyncio.run(work())
    assert {type(outcome) for outcome in outcomes} == {StoreUnavailable} and len(outcomes) == 320
    assert elapsed < 3


def test_an_answer_that_does_not_fit_its_frame_fails_its_callers_at_once(tmp_path):
    async def work() -> tuple[list[object], float]:
        async def confused(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            frames = FrameReader()
            while not (got := frames.feed(await reader.read(65536))):
                pass
            writer.write(encode_frame([got[0][0], [True]]))  # one outcome for a frame of three

        server = await asyncio.start_unix_server(confused, tmp_path / "confused.sock")
        intake = Intake(tmp_path / "confused.sock", make_engine(f"sqlite:///{tmp_path / 'x.db'}"), timeout=10)
        started = time.monotonic()
        outcomes = await asyncio.gather(*(intake.store(message(f"SM-{n}")) for n in range(3)),
                                        return_exceptions=True)
        elapsed = time.monotonic() - started
        await intake.close()
        server.close()
        return outcomes, elapsed

    outcomes, elapsed = asyncio.run(work())
    assert [type(outcome) for outcome in outcomes] == [StoreUnavailable] * 3
    assert elapsed < 2  # not at the 10 s deadline


def intake_pid(stack) -> int | None:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes()
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if b"gateway.roles.intake" in command and parent == stack.process.pid:
                return int(entry.name)
    return None


def test_kill_minus_nine_of_the_intake_process_loses_nothing(stack):
    phone = "+8617199100002"
    old = intake_pid(stack)
    assert old is not None
    os.kill(old, signal.SIGKILL)
    form = inbound_form(phone, "幸福路有个井盖坏了，晚上很危险", stack.settings)
    # Twilio retries a 5xx; the supervisor restarts the intake process meanwhile.
    statuses = []
    wait_for(lambda: statuses.append(post(stack.settings, "/webhooks/twilio/sms", form).status)
             or statuses[-1] == 200, timeout=30, interval=0.5, what="the webhook to be taken again")
    assert set(statuses) <= {200, 503}
    assert intake_pid(stack) not in (None, old)
    stack.wait_sent(phone)
    engine = make_engine(stack.settings.sqlalchemy_url)
    with engine.connect() as connection:
        stored = connection.execute(select(func.count()).select_from(InboundRow)
                                    .where(InboundRow.provider_id == form["MessageSid"])).scalar_one()
    assert stored == 1
