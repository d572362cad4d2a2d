"""Proof that Gridline outgrows one machine: two complete `gridline up` stacks, different homes and
ports, sharing one PostgreSQL, one external redis-server and one Twilio sandbox (so every message
to a phone is counted in one place, whichever stack's worker sent it).

Appeals go to both stacks while one stack's rq workers and senders are killed with -9; every
accepted appeal gets exactly one case, number and acknowledgement. A broadcast sent while both run
reaches each resident once. An overdue case escalates once per level with both clocks ticking.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from rq.registry import StartedJobRegistry
from sqlalchemy import func, select

from adapters.telegram import SANDBOX_TOKENS as SANDBOX_TELEGRAM_TOKENS
from gateway.queues import CLOCK_QUEUE, PrivateRedis, connect, queues
from gateway.store import CaseEventRow, CaseRow, DeliveryRow, InboundRow, make_engine, session_factory
from tests.conftest import Stack, http_json, sandbox_process, wait_for
from tests.test_broadcast_stack import cli_json, running_stack
from tests.test_sms_flow import CASE_NUMBER, CITY, SMS_PATH
from tests.twilio_client import inbound_form, post

pytestmark = pytest.mark.slow
APPEALS = 160  # split between the stacks
APPEAL_TEXT = "翠湖花园3号楼门口垃圾三天没人清了"


@pytest.fixture(scope="module")
def stacks(postgres, tmp_path_factory) -> Iterator[tuple[Stack, Stack]]:
    folder = tmp_path_factory.mktemp("two-stacks")
    redis = PrivateRedis(folder / "redis")
    redis_url = redis.start()
    database = postgres.database()
    tokens = [arg for token in SANDBOX_TELEGRAM_TOKENS for arg in ("--token", token)]
    try:
        with sandbox_process("adapters.twilio_sms.sandbox") as twilio, \
                sandbox_process("adapters.telegram.sandbox", *tokens) as telegram:
            shared = {"GRIDLINE_DATABASE_URL": database, "GRIDLINE_REDIS_URL": redis_url,
                      "GRIDLINE_TWILIO_API_BASE": twilio, "GRIDLINE_TELEGRAM_API_BASE": telegram,
                      "GRIDLINE_QUIET_HOURS": "", "GRIDLINE_SMS_RATE_LIMIT": "0", "GRIDLINE_SWEEPER_LEASE": "2",
                      # a send cut off by a kill is reconciled with the provider after this long
                      "GRIDLINE_BROADCAST_CLAIM_TIMEOUT": "12",
                      "GRIDLINE_WEB_PROCESSES": "1", "GRIDLINE_WORKERS": "1"}
            homes = [folder / "a", folder / "b"]
            for home in homes:
                home.mkdir()
            with running_stack(homes[0], **shared) as first, running_stack(homes[1], **shared) as second:
                yield first, second
                for stack in (first, second):  # both stop at once (each then waits for its own)
                    stack.process.send_signal(signal.SIGTERM)
    finally:
        redis.stop()


def sessions(stack: Stack):
    return session_factory(make_engine(stack.settings.sqlalchemy_url))


def sandbox_sent(stack: Stack) -> list[dict]:
    return http_json("GET", f"{stack.sandbox_url}/_sandbox/messages")[1]["messages"]


def rq_processes(stack: Stack) -> tuple[set[int], set[int]]:
    """This stack's rq workers' process groups (the general workers and the channels' senders), and
    their work-horses, each in a group of its own (none while they are SimpleWorkers)."""
    workers, horses = {}, set()
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
            command = (entry / "cmdline").read_bytes()
            if (b"gateway.roles.worker" in command or b"gateway.roles.sender" in command) \
                    and parent == stack.process.pid:
                workers[int(entry.name)] = os.getpgid(int(entry.name))
        except (OSError, ProcessLookupError, ValueError):
            continue
    for worker in workers:
        horses.update(children.get(worker, []))
    return set(workers.values()), horses


def deliver(stack: Stack, form: dict[str, str]) -> None:
    """As Twilio does: the same message again until the gateway answers 200."""
    wait_for(lambda: post(stack.settings, SMS_PATH, form).status == 200, timeout=60, interval=0.2,
             what="the gateway to accept an appeal")


def quiet(stack: Stack) -> bool:
    """No job waiting on the shared Redis, no delivery pending or being sent. (Not rq's started
    registry: a job whose worker was killed stays there until rq's maintenance pass, minutes later.)"""
    connection = connect(stack.settings.redis_url)
    if any(q.count for q in queues(connection).values()):
        return False
    with sessions(stack)() as session:
        return not session.scalar(select(func.count()).select_from(DeliveryRow)
                                  .where(DeliveryRow.state.in_(("pending", "sending"))))


def clock_idle(stack: Stack) -> bool:
    """No deadline check waiting or running (the sweeper's own ticks are for the real now)."""
    connection = connect(stack.settings.redis_url)
    return not (queues(connection)[CLOCK_QUEUE].count
                or StartedJobRegistry(CLOCK_QUEUE, connection=connection).get_job_ids())


def test_appeals_to_both_while_one_loses_its_workers(stacks):
    phones = [f"+86171991{n:05d}" for n in range(APPEALS)]
    # Places all over the city: the grid workers' alerts spread over many chats (Telegram allows one
    # message a second per chat, so one chat's backlog would only measure that limit).
    places = [place.name for place in CITY.places if place.kind == "compound"]
    texts = [f"{places[n % len(places)]}门口垃圾三天没人清了" for n in range(APPEALS)]
    forms = [(stacks[n % 2], inbound_form(phone, texts[n], stacks[n % 2].settings)) for n, phone in enumerate(phones)]
    killed: list[int] = []

    def killer() -> None:
        """Kill -9 the second stack's workers, senders and work-horses twice while the appeals flow."""
        for _ in range(2):
            wait_for(lambda: rq_processes(stacks[1])[0], timeout=60, what="the second stack's workers")
            with sessions(stacks[0])() as session:
                wait_for(lambda: session.scalar(select(func.count()).select_from(CaseRow)) >= len(killed) * 50 + 30,
                         timeout=120, interval=0.05, what="cases being made")
            groups, horses = rq_processes(stacks[1])
            for pid in horses:
                os.kill(pid, signal.SIGKILL)
            for group in groups:
                os.killpg(group, signal.SIGKILL)
            killed.append(len(groups) + len(horses))

    thread = threading.Thread(target=killer)
    thread.start()
    senders = [threading.Thread(target=lambda part=part: [deliver(s, f) for s, f in forms[part::4]])
               for part in range(4)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    thread.join()
    assert len(killed) == 2 and all(killed)

    def acknowledged() -> Counter[str]:
        return Counter(m["to"] for m in sandbox_sent(stacks[0]) if m["to"] in set(phones) and "编号" in m["body"])

    wait_for(lambda: len(acknowledged()) == APPEALS, timeout=240, interval=0.5, what="every appeal acknowledged")
    wait_for(lambda: quiet(stacks[0]), timeout=120, interval=0.5, what="both stacks idle")
    acks = acknowledged()
    assert sorted(acks.values()) == [1] * APPEALS  # exactly one acknowledgement each
    with sessions(stacks[0])() as session:
        rows = session.execute(select(InboundRow.sender, InboundRow.case_id).where(InboundRow.sender.in_(phones))).all()
        cases = session.execute(select(CaseRow.reporter, CaseRow.number).where(CaseRow.reporter.in_(phones))).all()
    assert sorted(sender for sender, _ in rows) == sorted(phones) and all(case for _, case in rows)
    assert sorted(reporter for reporter, _ in cases) == sorted(phones)  # one case per appeal
    numbers = {reporter: number for reporter, number in cases}
    assert len(set(numbers.values())) == APPEALS  # one number per case
    told = {m["to"]: CASE_NUMBER.search(m["body"]).group(1) for m in sandbox_sent(stacks[0]) if m["to"] in numbers}
    assert told == numbers  # and each resident was told their own


def test_a_broadcast_while_both_run_reaches_everyone_once(stacks):
    audience = "(grid:QH-NM or grid:QH-BY or grid:QH-DH) and channel:sms"
    expected = {r.phone for r in CITY.residents.values() if r.grid_code.startswith(("QH-NM", "QH-BY", "QH-DH"))
                and not r.telegram_chat_id}
    created = cli_json(stacks[0], "create", "--audience", audience, "--text", "zh=[both-stacks]{name}您好，明天停水。")
    cli_json(stacks[1], "send", str(created["id"]))  # the other stack sends it: one store
    wait_for(lambda: cli_json(stacks[0], "status", str(created["id"]))["state"] == "done",
             timeout=120, interval=0.5, what="the broadcast done")
    wait_for(lambda: quiet(stacks[0]), timeout=120, interval=0.5, what="both stacks idle")
    got = Counter(m["to"] for m in sandbox_sent(stacks[0]) if "[both-stacks]" in m["body"])
    assert expected and set(got) == expected and set(got.values()) == {1}


def test_an_overdue_case_escalates_once_per_level_with_both_clocks(stacks):
    phone = "+8617199300001"
    deliver(stacks[0], inbound_form(phone, APPEAL_TEXT, stacks[0].settings))
    with sessions(stacks[0])() as session:
        case = wait_for(lambda: session.scalar(select(CaseRow).where(CaseRow.reporter == phone)), what="the case")
    assert case.state == "assigned" and case.level == 3
    at = case.escalate_at

    def escalations() -> int:
        with sessions(stacks[0])() as session:
            return session.scalar(select(func.count()).select_from(CaseEventRow).where(
                CaseEventRow.case_id == case.id, CaseEventRow.to_state == "escalated"))

    for level in (2, 1):
        at += timedelta(minutes=1)
        for stack in stacks:  # both clocks, the same moment
            done = stack.gridline("tick", "--now", at.isoformat() + "+00:00")  # a naive time is local
            assert done.returncode == 0, done.stderr
        wait_for(lambda level=level: escalations() >= 3 - level, timeout=120, interval=0.2,
                 what=f"escalation to level {level}")
        wait_for(lambda: clock_idle(stacks[0]), timeout=60, interval=0.1, what="both ticks done")
        with sessions(stacks[0])() as session:
            row = session.get(CaseRow, case.id)
        assert (row.level, escalations()) == (level, 3 - level)
        at = row.escalate_at
