"""Telegram first where a chat is linked, SMS otherwise, and SMS when the resident blocked the bot.

Runs fan-out and the delivery lanes in-process against both loopback fakes and a real Redis: the
fan-out puts its send jobs on the lanes' rq queues, and the test runs each job's lane itself."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import redis
from rq import Queue

from adapters.telegram.sandbox import fake_telegram_server
from adapters.twilio_sms.sandbox import fake_twilio_server
from broadcasts import fanout, service
from broadcasts.audience import GridTree
from broadcasts.models import BroadcastRow
from gateway.config import load_settings
from gateway.delivery.channels import build_channels
from gateway.delivery.lanes import Lane
from gateway.delivery.outbox import PRIORITIES, lane_queue
from gateway.roles.supervisor import prepare_store
from gateway.store import make_engine, session_factory, utcnow
from gateway.world import RESIDENT_BOT, SMS
from tests.conftest import CONFIG, http_json
from tests.test_sms_flow import CITY

BOT, WORKERS_BOT = "123456:BROADCAST", "654321:WORKERS"
GRID = "QH-DH-02"


def run_lanes(lanes: dict[str, Lane], connection: redis.Redis) -> int:
    """Run every queued send job on its lane until all lanes' queues are empty; how many ran."""
    ran = 0
    loop = asyncio.new_event_loop()
    try:
        while True:
            jobs = [(name, job) for name in lanes for p in PRIORITIES
                    for job in Queue(lane_queue(name, p), connection=connection).jobs]
            if not jobs:
                return ran
            for name, job in jobs:
                job.delete()
                channel, ids, priority = job.args
                assert channel == name
                assert loop.run_until_complete(lanes[name].run(ids, priority)) == []
                ran += 1
    finally:
        for lane in lanes.values():
            loop.run_until_complete(lane.channel.close())
        loop.close()


def test_telegram_first_then_sms_for_a_blocked_chat(tmp_path, redis_url, new_database):
    residents = [r for r in CITY.residents.values() if r.grid_code.startswith(GRID + "-")]
    linked = [r for r in residents if r.telegram_chat_id]
    assert len(linked) >= 2 and len(linked) < len(residents)
    blocked = linked[0]
    connection = redis.Redis.from_url(redis_url)
    connection.flushall()
    with fake_twilio_server() as twilio, fake_telegram_server(BOT, WORKERS_BOT) as telegram:
        settings = replace(load_settings({}), home=tmp_path, config_dir=CONFIG, twilio_api_base=twilio.url,
                           telegram_api_base=telegram.url, telegram_resident_token=BOT,
                           telegram_worker_token=WORKERS_BOT, quiet_hours="", sms_signature="【签名】",
                           sms_rate_limit=0, telegram_rate_limit=0, telegram_chat_rate_limit=0,
                           database_url=new_database(tmp_path))
        prepare_store(settings)
        assert http_json("POST", f"{telegram.url}/_sandbox/blocked", {"chat_id": blocked.telegram_chat_id})[0] == 200
        sessions = session_factory(make_engine(settings.sqlalchemy_url))
        with sessions() as session, session.begin():
            tree = GridTree.load(session)
            texts = {"zh": "{name}您好，周六社区义诊。", "en": "Dear {name}, free clinic on Saturday."}
            broadcast = service.create(session, settings, tree, None, title="", expression=f"grid:{GRID}",
                                       texts=texts, emergency=False, now=utcnow())
            service.send(session, settings, tree, broadcast, None, utcnow())
        with sessions() as session:
            assert service.start_due(session, settings, utcnow()) == [broadcast.id]
        assert fanout.fan_out(settings, sessions, connection, broadcast.id)
        channels = build_channels(settings)
        lanes = {name: Lane(channels[name], sessions, connection, concurrency=10, sms_signature="【签名】",
                            broadcasts=fanout.BroadcastLaneRules(settings)) for name in (SMS, RESIDENT_BOT)}
        assert run_lanes(lanes, connection) >= 3  # telegram, sms, and the blocked chat's fallback to sms
        with sessions() as session:
            view = service.status(session, settings, session.get(BroadcastRow, broadcast.id), utcnow())
        assert view["state"] == "done" and view["sent"] == len(residents)

        for resident in residents:
            sms = http_json("GET", f"{twilio.url}/_sandbox/messages?to={resident.phone.replace('+', '%2B')}")[1]
            chats = http_json("GET", f"{telegram.url}/_sandbox/{BOT}/messages?chat_id={resident.telegram_chat_id}")[1] \
                if resident.telegram_chat_id else {"messages": []}
            on_telegram = chats["messages"]
            if resident.telegram_chat_id and resident is not blocked:
                assert (len(on_telegram), len(sms["messages"])) == (1, 0), resident.id
                assert resident.name in on_telegram[0]["text"] and "【签名】" not in on_telegram[0]["text"]
            else:
                assert (len(on_telegram), len(sms["messages"])) == (0, 1), resident.id
                assert sms["messages"][0]["body"] == "【签名】" + texts[resident.language].format(name=resident.name)
