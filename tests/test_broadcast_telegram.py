"""Telegram first where a chat is linked, SMS otherwise, and SMS when the resident blocked the bot.

Runs the fan-out and send code in-process against both loopback fakes (no rq: the queue is a stub
that records the send jobs, which the test then runs itself)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import redis

from adapters.telegram import TelegramClient
from adapters.telegram.sandbox import fake_telegram_server
from adapters.twilio_sms.sandbox import fake_twilio_server
from broadcasts import fanout, service
from broadcasts.audience import GridTree
from gateway.config import load_settings
from gateway.delivery.ratelimit import TokenBucket
from gateway.roles.supervisor import prepare_store
from gateway.store import make_engine, session_factory, utcnow
from tests.conftest import CONFIG, http_json
from tests.test_sms_flow import CITY

BOT = "123456:BROADCAST"
GRID = "QH-DH-02"


class RecordingQueue:
    """Stands in for the rq queue: remembers the send jobs fan-out enqueues."""

    def __init__(self) -> None:
        self.jobs: list[tuple] = []

    def enqueue(self, function, *args, **_options) -> None:
        self.jobs.append(args)

    enqueue_in = None  # a retry would need it; none is expected here


def test_telegram_first_then_sms_for_a_blocked_chat(tmp_path):
    residents = [r for r in CITY.residents.values() if r.grid_code.startswith(GRID + "-")]
    linked = [r for r in residents if r.telegram_chat_id]
    assert len(linked) >= 2 and len(linked) < len(residents)
    blocked = linked[0]
    with fake_twilio_server() as twilio, fake_telegram_server(BOT) as telegram:
        settings = replace(load_settings({}), home=tmp_path, config_dir=CONFIG, twilio_api_base=twilio.url,
                           quiet_hours="", sms_signature="【签名】", sms_rate_limit=0, telegram_rate_limit=0)
        prepare_store(settings)
        assert http_json("POST", f"{telegram.url}/_sandbox/blocked", {"chat_id": blocked.telegram_chat_id})[0] == 200
        sessions = session_factory(make_engine(settings.sqlalchemy_url))
        queue = RecordingQueue()
        unused = redis.Redis(unix_socket_path=str(tmp_path / "none.sock"))
        with TelegramClient(BOT, telegram.url) as client:
            here = fanout.Broadcasting(settings, sessions, queue, TokenBucket(unused, "sms", 0),
                                       TokenBucket(unused, "telegram", 0), client)
            with sessions() as session, session.begin():
                tree = GridTree.load(session)
                texts = {"zh": "{name}您好，周六社区义诊。", "en": "Dear {name}, free clinic on Saturday."}
                broadcast = service.create(session, settings, tree, None, title="", expression=f"grid:{GRID}",
                                           texts=texts, emergency=False, now=utcnow())
                service.send(session, settings, tree, broadcast, None, utcnow())
            with sessions() as session:
                assert service.start_due(session, settings, utcnow()) == [broadcast.id]
            assert fanout.fan_out(here, broadcast.id)
            for broadcast_id, ids in queue.jobs:
                assert asyncio.run(fanout.send_batch(here, broadcast_id, ids)) == []
            with sessions() as session:
                view = service.status(session, settings, session.get(fanout.BroadcastRow, broadcast.id), utcnow())
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
