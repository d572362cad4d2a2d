"""Provider faults stay in their lane: Twilio unreachable stops neither the clock nor Telegram, and
the SMS waiting for it goes out once when it returns; a 429 storm on the workers' bot does not hold
back residents' acknowledgements by SMS."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import select

from adapters.twilio_sms.sandbox import fake_twilio_server
from gateway.store import CaseRow, DeliveryRow
from tests.conftest import Stack, free_port, http_json, wait_for
from tests.test_broadcast_stack import cli_json, running_stack
from tests.test_case_lifecycle import (
    CITY,
    PLACE,
    RESIDENT_TOKEN,
    WORKER,
    WORKER_TOKEN,
    bot_messages,
    officer,
    wait_bot,
    wait_state,
)
from tests.test_sms_flow import SMS_PATH, db
from tests.twilio_client import inbound_form, post

pytestmark = pytest.mark.slow


def case_number(stack: Stack, phone: str) -> str:
    def found() -> str | None:
        with db(stack).connect() as connection:
            return connection.execute(select(CaseRow.number).where(CaseRow.reporter == phone)).scalar()
    return wait_for(found, 30, what=f"a case from {phone}")


@pytest.fixture(scope="module")
def twilio_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def cut_off(tmp_path_factory, twilio_port) -> Iterator[Stack]:
    """A stack whose Twilio API address answers nothing (yet)."""
    with running_stack(tmp_path_factory.mktemp("twilio-down"), GRIDLINE_QUIET_HOURS="",
                       GRIDLINE_TWILIO_API_BASE=f"http://127.0.0.1:{twilio_port}") as stack:
        yield stack


def test_twilio_unreachable_stops_neither_the_clock_nor_telegram(cut_off, twilio_port):
    phone, later = "+8617199000501", "+8617199000502"
    post(cut_off.settings, SMS_PATH, inbound_form(phone, f"{PLACE.name}门口垃圾堆了三天没人清理", cut_off.settings))
    number = case_number(cut_off, phone)
    wait_state(cut_off, number, "assigned")
    wait_bot(cut_off, WORKER_TOKEN, WORKER.telegram_chat_id, number)  # the task alert: Telegram's own lane

    with db(cut_off).connect() as connection:
        escalate_at = connection.execute(select(CaseRow.escalate_at).where(CaseRow.number == number)).scalar_one()
    cut_off.gridline("tick", "--now", (escalate_at + timedelta(minutes=1)).isoformat() + "+00:00")
    community = officer(PLACE.grid_code, 2, "community_officer")
    wait_bot(cut_off, WORKER_TOKEN, community.telegram_chat_id, number)  # the clock escalated

    on_chat = next(r for r in CITY.residents.values() if r.grid_code.startswith(PLACE.grid_code)
                   and r.telegram_chat_id)
    notice = cli_json(cut_off, "create", "--audience", f"channel:telegram and grid:{PLACE.grid_code}",
                      "--text", "zh=[tg-only]{name}您好，周六停水。")
    cli_json(cut_off, "send", str(notice["id"]))
    wait_bot(cut_off, RESIDENT_TOKEN, on_chat.telegram_chat_id, "[tg-only]")  # the broadcast started

    with db(cut_off).connect() as connection:
        waiting = connection.execute(select(DeliveryRow.state, DeliveryRow.last_error)
                                     .where(DeliveryRow.recipient == phone)).all()
    assert waiting and all(state == "pending" for state, _ in waiting), waiting
    assert any("cannot reach Twilio" in (error or "") for _, error in waiting)

    with fake_twilio_server(port=twilio_port) as twilio:  # Twilio is back
        def to(who: str) -> list[dict]:
            return http_json("GET", f"{twilio.url}/_sandbox/messages?to={who.replace('+', '%2B')}")[1]["messages"]

        wait_for(lambda: any(number in m["body"] for m in to(phone)), 120, 0.5, what="the acknowledgement")
        post(cut_off.settings, SMS_PATH, inbound_form(later, f"{PLACE.name}路灯坏了", cut_off.settings))
        wait_for(lambda: to(later), 60, 0.5, what="a later appeal's acknowledgement")  # the marker
        wait_for(lambda: all(state in ("sent", "delivered") for state in _states(cut_off, phone)), 60, 0.5,
                 what="every SMS to the first resident sent")
        acknowledgements = [m for m in to(phone) if "受理" in m["body"] or "received" in m["body"].lower()]
        assert len(acknowledgements) == 1, [m["body"] for m in to(phone)]


def _states(stack: Stack, phone: str) -> list[str]:
    with db(stack).connect() as connection:
        return list(connection.execute(select(DeliveryRow.state).where(DeliveryRow.recipient == phone)).scalars())


@pytest.fixture(scope="module")
def stormy(tmp_path_factory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("telegram-storm")) as stack:
        yield stack


def test_a_429_storm_on_the_workers_bot_does_not_hold_back_sms_acknowledgements(stormy):
    telegram = stormy.settings.telegram_base
    assert http_json("POST", f"{telegram}/_sandbox/faults", {"status": 429, "retry_after": 5, "count": 1000})[0] == 200
    try:
        phones = [f"+86171990006{n:02d}" for n in range(5)]
        for phone in phones:
            post(stormy.settings, SMS_PATH, inbound_form(phone, f"{PLACE.name}门口下水道堵了", stormy.settings))
        numbers = [case_number(stormy, phone) for phone in phones]
        for phone, number in zip(phones, numbers, strict=True):
            wait_for(lambda p=phone, n=number: any(n in m["body"] for m in stormy.sent_to(p)), 30,
                     what=f"the acknowledgement to {phone}")
        # Every resident has heard back while the storm still holds every task alert back.
        alerts = [m for m in bot_messages(stormy, WORKER_TOKEN, WORKER.telegram_chat_id)
                  if any(n in m.get("text", "") for n in numbers)]
        assert alerts == []
        with db(stormy).connect() as connection:
            held = connection.execute(select(DeliveryRow.state, DeliveryRow.last_error)
                                      .where(DeliveryRow.kind == "alert", DeliveryRow.channel == "telegram-worker")
                                      ).all()
        assert held and all(state in ("pending", "sending") for state, _ in held)
    finally:
        assert http_json("DELETE", f"{telegram}/_sandbox/faults")[0] == 200
    for number in numbers:  # after the storm, every alert gets through, none lost
        wait_bot(stormy, WORKER_TOKEN, WORKER.telegram_chat_id, number, timeout=90)
