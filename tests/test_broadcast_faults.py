"""Exactly once under faults: 4,000 synthetic recipients while rq workers and the channels'
senders are killed with -9 (their whole process groups, scheduler children included) and
restarted, and while the provider answers 429 / 500 for a while. At the end the sandbox holds
exactly one message per recipient."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import delete, insert, select

from gateway.config import load_settings
from gateway.roles.supervisor import prepare_store
from gateway.store import GridRow, ResidentRow, make_engine, session_factory
from tests.conftest import Stack, http_json, stack_environment, wait_for
from tests.test_broadcast_stack import cli_json, marked, running_stack

RECIPIENTS = 4_000


def phone(n: int) -> str:
    return f"+86172{n:08d}"


def synthetic_store(home: Path) -> None:
    """The sample city's grids and staff, with 4,000 synthetic residents instead of its own."""
    settings = load_settings(stack_environment(home))
    prepare_store(settings)
    engine = make_engine(settings.sqlalchemy_url)
    with session_factory(engine)() as session, session.begin():
        grids = list(session.scalars(select(GridRow.code).where(GridRow.level == 3)))
        session.execute(delete(ResidentRow))
        session.execute(insert(ResidentRow), [
            {"id": f"S{n:05d}", "name": f"居民{n}", "phone": phone(n), "grid_code": grids[n % len(grids)],
             "address": "", "tags": [], "preferred_channel": "sms", "telegram_chat_id": None,
             "language": "zh", "birth_year": 1970} for n in range(RECIPIENTS)])
    engine.dispose()


@pytest.fixture(scope="module")
def fstack(tmp_path_factory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("broadcast-faults")
    synthetic_store(home)
    with running_stack(home, GRIDLINE_QUIET_HOURS="", GRIDLINE_SMS_RATE_LIMIT="0", GRIDLINE_BROADCAST_BATCH="250",
                       GRIDLINE_BROADCAST_CLAIM_TIMEOUT="12") as stack:
        yield stack


def worker_groups(stack: Stack) -> set[int]:
    """Process groups of the rq workers and senders under this stack (each leads its own session)."""
    groups = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
            ours = b"gateway.roles.worker" in command or b"gateway.roles.sender" in command
            if ours and os.getsid(int(entry.name)) != os.getsid(stack.process.pid):
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if parent == stack.process.pid:
                    groups.add(os.getpgid(int(entry.name)))
        except (OSError, ProcessLookupError):
            continue
    return groups


def everyone_once(stack: Stack, marker: str) -> None:
    got = marked(stack, marker)
    missing = RECIPIENTS - len(got)
    twice = sorted(p for p, n in got.items() if n > 1)
    assert (missing, twice[:5]) == (0, []), f"{missing} missing, {len(twice)} duplicated"
    assert set(got) == {phone(n) for n in range(RECIPIENTS)}


def test_kill_minus_nine_of_the_workers_loses_and_doubles_nothing(fstack):
    created = cli_json(fstack, "create", "--audience", "all", "--text", "zh=[kill-test]{name}您好，今晚停电检修。")
    number = str(created["id"])
    cli_json(fstack, "send", number)
    kills = 0
    for threshold in (600, 1600, 2600):
        wait_for(lambda threshold=threshold: sum(marked(fstack, "[kill-test]").values()) >= threshold,
                 timeout=60, interval=0.05, what=f"{threshold} sent")
        groups = worker_groups(fstack)
        assert groups, "no rq workers found"
        for group in groups:
            os.killpg(group, signal.SIGKILL)
        kills += 1
        wait_for(lambda groups=groups: worker_groups(fstack) and not worker_groups(fstack) & groups,
                 timeout=20, what="workers restarted")
    view = wait_for(lambda: (v := cli_json(fstack, "status", number))["state"] == "done" and v,
                    timeout=120, interval=0.5, what="broadcast done")
    assert kills == 3 and view["failed"] == 0
    everyone_once(fstack, "[kill-test]")


def test_provider_429_and_500_for_a_while(fstack):
    for status in (429, 500):
        code, _ = http_json("POST", f"{fstack.sandbox_url}/_sandbox/faults", {"status": status, "count": 600})
        assert code == 200
    created = cli_json(fstack, "create", "--audience", "all", "--text", "zh=[fault-test]{name}您好，明日接种疫苗。")
    number = str(created["id"])
    cli_json(fstack, "send", number)
    started = time.monotonic()
    view = wait_for(lambda: (v := cli_json(fstack, "status", number))["state"] == "done" and v,
                    timeout=120, interval=0.5, what="broadcast done")
    assert view["failed"] == 0 and view["sent"] == RECIPIENTS, view
    assert time.monotonic() - started > 2  # the retries waited their backoff
    everyone_once(fstack, "[fault-test]")
