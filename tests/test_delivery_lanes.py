"""The one way out (gateway.delivery): the deliveries table, the lanes, their queues and reports.

Against real parts: a migrated SQLite store, a real redis-server and rq queues, and the loopback
Twilio and Telegram fakes reached through the official clients."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta

import pytest
import redis
from rq import Queue, SimpleWorker
from sqlalchemy import select, update

from adapters import DeliveryStatus
from adapters.telegram.sandbox import fake_telegram_server
from adapters.twilio_sms.sandbox import fake_twilio_server
from gateway.config import load_settings
from gateway.delivery import lanes, outbox
from gateway.delivery.channels import build_channels
from gateway.delivery.lanes import Lane
from gateway.roles import jobs
from gateway.roles.supervisor import prepare_store
from gateway.store import ContactRow, DeliveryRow, make_engine, session_factory, utcnow
from gateway.world import RESIDENT_BOT, SMS, WORKER_BOT
from tests.conftest import CONFIG, http_json

BOT, WORKERS_BOT = "123456:RESIDENTS", "654321:WORKERS"


@pytest.fixture()
def world(tmp_path, redis_url):
    """Settings pointing at fresh fakes, a migrated store, an empty Redis."""
    connection = redis.Redis.from_url(redis_url)
    connection.flushall()
    with fake_twilio_server() as twilio, fake_telegram_server(BOT, WORKERS_BOT) as telegram:
        settings = replace(load_settings({}), home=tmp_path, config_dir=CONFIG, twilio_api_base=twilio.url,
                           telegram_api_base=telegram.url, telegram_resident_token=BOT,
                           telegram_worker_token=WORKERS_BOT, sms_rate_limit=0, telegram_rate_limit=0,
                           telegram_chat_rate_limit=0)
        prepare_store(settings)
        yield settings, session_factory(make_engine(settings.sqlalchemy_url)), connection, twilio.url, telegram.url


def add(sessions, *rows: DeliveryRow) -> list[outbox.Queued]:
    with sessions() as session, session.begin():
        session.add_all(rows)
        session.flush()
        return outbox.queued(rows)


def sms(to: str, body: str, kind: str = "reply", **fields) -> DeliveryRow:
    return DeliveryRow(kind=kind, channel=SMS, recipient=to, body=body, state="pending", attempts=0, **fields)


def state_of(sessions, delivery_id: int) -> DeliveryRow:
    with sessions() as session:
        return session.get(DeliveryRow, delivery_id)


def run(lane: Lane, ids: list[int], priority: str = outbox.URGENT) -> list[int]:
    async def go() -> list[int]:
        try:
            return await lane.run(ids, priority)
        finally:
            await lane.channel.close()
    return asyncio.run(go())


def sent_at(base: str, phone: str) -> list[dict]:
    return http_json("GET", f"{base}/_sandbox/messages?to={phone.replace('+', '%2B')}")[1]["messages"]


def test_replies_and_alerts_go_urgent_broadcasts_bulk_each_channel_its_own_queue(world):
    settings, sessions, connection, *_ = world
    queued = add(sessions, sms("+8613800000001", "ack"), sms("+8613800000002", "notice", kind="broadcast"),
                 DeliveryRow(kind="alert", channel=WORKER_BOT, recipient="42", body="task", state="pending",
                             attempts=0))
    outbox.enqueue(connection, queued)
    jobs = {name: [job.args for job in Queue(name, connection=connection).jobs]
            for name in ("send:sms:urgent", "send:sms:bulk", "send:telegram-worker:urgent")}
    assert jobs == {"send:sms:urgent": [(SMS, [queued[0].id], "urgent")],
                    "send:sms:bulk": [(SMS, [queued[1].id], "bulk")],
                    "send:telegram-worker:urgent": [(WORKER_BOT, [queued[2].id], "urgent")]}
    assert not outbox.lanes_idle(connection, [SMS]) and outbox.lanes_idle(connection, [RESIDENT_BOT])


@pytest.fixture()
def sender_environment(world, redis_url, monkeypatch):
    """The environment a sender process reads its settings from, for an rq worker run in this process."""
    settings, _, _, twilio, telegram = world
    for name, value in {"HOME": settings.home, "CONFIG_DIR": CONFIG, "REDIS_URL": redis_url,
                        "TWILIO_API_BASE": twilio, "TELEGRAM_API_BASE": telegram,
                        "TELEGRAM_RESIDENT_TOKEN": BOT, "TELEGRAM_WORKER_TOKEN": WORKERS_BOT,
                        "SMS_RATE_LIMIT": 0, "TELEGRAM_RATE_LIMIT": 0}.items():
        monkeypatch.setenv(f"GRIDLINE_{name}", str(value))
    jobs.context.cache_clear()
    jobs.lane_process.cache_clear()
    yield
    jobs.context.cache_clear()
    jobs.lane_process.cache_clear()


def test_a_lane_serves_urgent_before_bulk_queued_earlier(world, sender_environment):
    """A notice to many queued first; an acknowledgement queued after it still goes out first."""
    settings, sessions, connection, twilio, _ = world
    notices = add(sessions, *(sms(f"+86138000001{n:02d}", f"notice {n}", kind="broadcast") for n in range(30)))
    outbox.enqueue(connection, [notices[i] for i in range(0, 30, 10)] + notices[1:10])  # several bulk jobs
    outbox.enqueue(connection, notices[10:20] + notices[20:30])
    [ack] = add(sessions, sms("+8613800000999", "ack"))
    outbox.enqueue(connection, [ack])
    worker = SimpleWorker([Queue(outbox.lane_queue(SMS, p), connection=connection) for p in outbox.PRIORITIES],
                          connection=connection)
    worker.work(burst=True)
    with sessions() as session:
        order = list(session.scalars(select(DeliveryRow.id).where(DeliveryRow.state == "sent")
                                     .order_by(DeliveryRow.updated_at, DeliveryRow.id)))
    everything = http_json("GET", f"{twilio}/_sandbox/recipients")[1]
    assert sum(everything.values()) == 31 and set(everything.values()) == {1}
    assert len(order) == 31 and order[0] == ack.id


def test_retryable_failure_waits_its_backoff_and_a_final_one_fails(world):
    settings, sessions, connection, twilio, _ = world
    [retry] = add(sessions, sms("+8613800000003", "retry me"))
    assert http_json("POST", f"{twilio}/_sandbox/faults", {"status": 500, "count": 1})[0] == 200
    lane = Lane(build_channels(settings)[SMS], sessions, connection, concurrency=1)
    assert run(lane, [retry.id]) == []
    row = state_of(sessions, retry.id)
    assert (row.state, row.attempts) == ("pending", 1) and row.next_attempt_at > utcnow()
    assert "500" in row.last_error
    scheduled = Queue(outbox.lane_queue(SMS, outbox.URGENT), connection=connection).scheduled_job_registry
    assert scheduled.count == 1  # the retry waits in rq's scheduler
    assert http_json("POST", f"{twilio}/_sandbox/opt-out", {"phone": "+8613800000004"})[0] == 200
    [final] = add(sessions, sms("+8613800000004", "never"))
    assert run(Lane(build_channels(settings)[SMS], sessions, connection, concurrency=1), [final.id]) == []
    row = state_of(sessions, final.id)
    assert row.state == "failed" and "21610" in row.last_error


def test_a_blocked_chat_is_remembered_and_the_alert_goes_by_sms(world):
    settings, sessions, connection, twilio, telegram = world
    assert http_json("POST", f"{telegram}/_sandbox/blocked", {"chat_id": 77})[0] == 200
    [alert] = add(sessions, DeliveryRow(kind="alert", channel=WORKER_BOT, recipient="77", body="新任务",
                                        fallback_phone="+8613800000005", state="pending", attempts=0))
    lane = Lane(build_channels(settings)[WORKER_BOT], sessions, connection, concurrency=1)
    assert run(lane, [alert.id]) == []
    row = state_of(sessions, alert.id)
    assert (row.channel, row.recipient, row.state) == (SMS, "+8613800000005", "pending")
    with sessions() as session:
        assert session.get(ContactRow, (WORKER_BOT, "77")).blocked
    [job] = Queue(outbox.lane_queue(SMS, outbox.URGENT), connection=connection).jobs
    assert job.args == (SMS, [alert.id], "urgent")
    assert run(Lane(build_channels(settings)[SMS], sessions, connection, concurrency=1), [alert.id]) == []
    assert [m["body"] for m in sent_at(twilio, "+8613800000005")] == ["新任务"]


@pytest.mark.slow
def test_a_redis_outage_in_the_rate_limit_leaves_rows_pending_not_failed(world, tmp_path):
    settings, sessions, connection, twilio, _ = world
    [row] = add(sessions, sms("+8613800000006", "hello"))
    dead = redis.Redis(unix_socket_path=str(tmp_path / "no-redis.sock"))
    lane = Lane(build_channels(replace(settings, sms_rate_limit=10))[SMS], sessions, dead, concurrency=1)
    assert run(lane, [row.id]) == []
    assert (state_of(sessions, row.id).state, state_of(sessions, row.id).attempts) == ("pending", 0)
    assert sent_at(twilio, "+8613800000006") == []


def test_an_urgent_job_also_takes_the_channels_other_due_replies_but_no_notice(world):
    settings, sessions, connection, twilio, _ = world
    acks = add(sessions, *(sms(f"+86138000003{n:02d}", f"ack {n}") for n in range(3)))
    [notice] = add(sessions, sms("+8613800000399", "notice", kind="broadcast"))
    lane = Lane(build_channels(settings)[SMS], sessions, connection, concurrency=3)
    assert run(lane, [acks[0].id]) == []  # the job named one acknowledgement
    assert [state_of(sessions, a.id).state for a in acks] == ["sent"] * 3
    assert state_of(sessions, notice.id).state == "pending"  # notices wait for their own bulk jobs
    outbox.enqueue(connection, acks[1:])
    [job] = Queue(outbox.lane_queue(SMS, outbox.URGENT), connection=connection).jobs
    assert run(Lane(build_channels(settings)[SMS], sessions, connection, concurrency=1), job.args[1]) == []
    assert sum(http_json("GET", f"{twilio}/_sandbox/recipients")[1].values()) == 3  # their jobs sent nothing twice


def test_urgent_rows_join_the_job_waiting_in_their_lane_and_a_running_job_takes_them_all(world):
    settings, sessions, connection, twilio, _ = world
    acks = add(sessions, *(sms(f"+86138000004{n:02d}", f"ack {n}") for n in range(3)))
    for ack in acks:  # three worker commits, one after another
        outbox.enqueue(connection, [ack])
    urgent = Queue(outbox.lane_queue(SMS, outbox.URGENT), connection=connection)
    [job] = urgent.jobs  # the first hand-over's job stands for the other two
    assert job.args == (SMS, [acks[0].id], "urgent")
    # Held back are urgent hand-overs due now on the same lane only: not a retry's, a notice's or
    # another channel's.
    outbox.enqueue(connection, [outbox.Queued(acks[0].id, SMS, "reply")], timedelta(seconds=5))
    outbox.enqueue(connection, [outbox.Queued(acks[1].id, SMS, "broadcast")])
    outbox.enqueue(connection, [outbox.Queued(acks[2].id, WORKER_BOT, "alert")])
    assert (urgent.count, urgent.scheduled_job_registry.count) == (1, 1)
    assert Queue(outbox.lane_queue(SMS, outbox.BULK), connection=connection).count == 1
    assert Queue(outbox.lane_queue(WORKER_BOT, outbox.URGENT), connection=connection).count == 1
    assert run(Lane(build_channels(settings)[SMS], sessions, connection, concurrency=3), job.args[1]) == []
    assert [state_of(sessions, a.id).state for a in acks] == ["sent"] * 3
    [late] = add(sessions, sms("+8613800000499", "after the job looked"))
    outbox.enqueue(connection, [late])  # the running job no longer stands for it
    assert [j.args for j in urgent.jobs] == [(SMS, [acks[0].id], "urgent"), (SMS, [late.id], "urgent")]


def test_an_urgent_job_goes_on_past_one_claim_while_more_is_due(world, monkeypatch):
    settings, sessions, connection, twilio, _ = world
    monkeypatch.setattr(outbox, "IDS_PER_JOB", 4)
    acks = add(sessions, *(sms(f"+86138000005{n:02d}", f"ack {n}") for n in range(10)))
    assert run(Lane(build_channels(settings)[SMS], sessions, connection, concurrency=4), [acks[0].id]) == []
    assert [state_of(sessions, a.id).state for a in acks] == ["sent"] * 10


def test_a_bulk_job_hands_the_lane_back_as_soon_as_an_urgent_job_waits(world, monkeypatch):
    settings, sessions, connection, twilio, _ = world
    monkeypatch.setattr(lanes, "BULK_ROUND", 10)
    notices = add(sessions, *(sms(f"+86138000006{n:02d}", f"notice {n}", kind="broadcast") for n in range(30)))
    lane = Lane(build_channels(settings)[SMS], sessions, connection, concurrency=10)
    assert run(lane, [n.id for n in notices], outbox.BULK) == []  # nothing waits: the job sends all 30
    more = add(sessions, *(sms(f"+86138000007{n:02d}", f"notice {n}", kind="broadcast") for n in range(30)))
    [ack] = add(sessions, sms("+8613800000799", "ack"))
    outbox.enqueue(connection, [ack])  # an acknowledgement's job now waits in the lane
    left = run(Lane(build_channels(settings)[SMS], sessions, connection, concurrency=10), [n.id for n in more],
               outbox.BULK)
    assert left == [n.id for n in more[10:]]  # one round went, the rest goes back to the queue
    assert sum(http_json("GET", f"{twilio}/_sandbox/recipients")[1].values()) == 40


def test_a_rate_limited_bulk_job_hands_back_what_is_left(world):
    settings, sessions, connection, twilio, _ = world
    rows = add(sessions, *(sms(f"+86138000002{n:02d}", f"n{n}", kind="broadcast") for n in range(20)))
    lane = Lane(build_channels(replace(settings, sms_rate_limit=5, sms_rate_unit="messages"))[SMS], sessions,
                connection, concurrency=5)
    left = run(lane, [r.id for r in rows], outbox.BULK)
    assert 0 < len(left) < 20
    assert all(state_of(sessions, i).state == "pending" and state_of(sessions, i).attempts == 0 for i in left)
    assert sum(http_json("GET", f"{twilio}/_sandbox/recipients")[1].values()) == 20 - len(left)


def test_reconcile_finds_what_a_dead_sender_sent_and_resends_or_fails_the_rest(world):
    settings, sessions, connection, twilio, _ = world
    queued = add(sessions, sms("+8613800000007", "already sent"))
    lane = Lane(build_channels(settings)[SMS], sessions, connection, concurrency=1)
    assert run(lane, [queued[0].id]) == []
    queued += add(sessions, sms("+8613800000008", "never sent"),
                  DeliveryRow(kind="broadcast", channel=RESIDENT_BOT, recipient="88", body="notice",
                              state="pending", attempts=0, broadcast_id=1, resident_id="R1"),
                  DeliveryRow(kind="reply", channel=RESIDENT_BOT, recipient="89", body="reply",
                              state="pending", attempts=0))
    long_ago = utcnow() - timedelta(minutes=5)
    with sessions() as session, session.begin():
        session.execute(update(DeliveryRow).where(DeliveryRow.id.in_([q.id for q in queued]))
                        .values(state="sending", provider_id=None, updated_at=long_ago))

    async def go() -> list[outbox.Queued]:
        channels = build_channels(settings)
        try:
            return await lanes.reconcile(sessions, channels, timedelta(seconds=30))
        finally:
            await asyncio.gather(*(c.close() for c in channels.values()))

    retry = asyncio.run(go())
    states = {q.id: (state_of(sessions, q.id).state, state_of(sessions, q.id).provider_id is not None)
              for q in queued}
    assert states == {queued[0].id: ("sent", True), queued[1].id: ("pending", False),
                      queued[2].id: ("failed", False), queued[3].id: ("pending", False)}
    assert {q.id for q in retry} == {queued[1].id, queued[3].id}


def test_reports_move_a_row_forward_only_by_row_id_or_provider_id(world):
    _, sessions, *_ = world
    [row] = add(sessions, sms("+8613800000009", "x"))
    with sessions() as session, session.begin():
        session.execute(update(DeliveryRow).where(DeliveryRow.id == row.id).values(state="sending"))
        outbox.apply_reports(session, [DeliveryStatus("SM1", "delivered", delivery_id=row.id)])
    with sessions() as session, session.begin():
        outbox.apply_reports(session, [DeliveryStatus("SM1", "sent"), DeliveryStatus("SM1", "failed", "30003")])
        assert not outbox.apply_status(session, DeliveryStatus("SM-unknown", "delivered"))
    final = state_of(sessions, row.id)
    assert (final.state, final.provider_id, final.last_error) == ("delivered", "SM1", None)
