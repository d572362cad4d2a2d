"""Nothing gives up silently: the supervisor's backoff, sweeper duties that fail apart, the intake
through a Redis outage, one `gridline up` per home, roles, and kill -9 of the private Redis in the
middle of a run of appeals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import stat
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from rq import Queue
from sqlalchemy import func, select, update

from adapters import InboundMessage
from adapters.telegram import SANDBOX_TOKENS as SANDBOX_TELEGRAM_TOKENS
from gateway.config import load_settings
from gateway.queues import INBOUND_QUEUE, PrivateRedis, connect
from gateway.roles import jobs
from gateway.roles.intake import Intake, IntakeServer
from gateway.roles.supervisor import (
    ROLES,
    Backoff,
    Child,
    StartRefused,
    Supervisor,
    check_roles,
    lock_home,
    parse_roles,
)
from gateway.roles.sweeper import DUTIES, sweep_once
from gateway.store import CaseRow, DeliveryRow, InboundRow, make_engine, migrate, utcnow
from tests.conftest import ROOT, Stack, free_port, sandbox_process, stack_environment, wait_for
from tests.twilio_client import inbound_form, post

SMS_PATH = "/webhooks/twilio/sms"


# --- the supervisor's restart policy ------------------------------------------------------------


def test_backoff_doubles_to_its_cap_and_starts_again_after_a_good_run():
    backoff = Backoff(first=0.5, cap=30.0, stable_after=60.0)
    assert [backoff.next_delay(uptime=1.0) for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert backoff.next_delay(uptime=59.0) == 30  # a short run is still part of the crash loop
    assert backoff.next_delay(uptime=60.0) == 0.5  # a crash after a good run starts a new streak


def test_a_child_that_keeps_dying_is_restarted_for_ever_with_one_error_per_step(caplog):
    child = Child("crasher", [sys.executable, "-c", "raise SystemExit(3)"])
    env = dict(os.environ)
    child.start(env)
    delays = []
    with caplog.at_level(logging.ERROR, logger="gridline"):
        for _ in range(9):  # more than the old supervisor's five, after which it raised
            wait_for(lambda: child.process.poll() is not None, what="the child to exit")
            died = child.started_at + 0.1
            child.check(env, died)
            delays.append(child.restart_at - died)
            child.check(env, died + delays[-1] / 2)  # still waiting: no restart, no second line
            first = child.process
            child.check(env, child.restart_at)
            assert child.process is not first and child.restart_at is None
    assert delays == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    lines = [r.getMessage() for r in caplog.records if r.name == "gridline"]
    assert lines == [f"crasher exited with code 3; restarting it in {d:.1f} s" for d in delays]
    child.terminate()
    child.wait(deadline=0)  # the last one may still be alive: killed


# --- sweeper duties fail apart ----------------------------------------------------------------


def test_a_failing_sweeper_duty_is_logged_once_per_streak_and_stops_no_other(caplog):
    ran: list[str] = []

    def unreachable(_ctx) -> int:
        ran.append("unreachable")
        raise ConnectionError("provider unreachable")

    def fine(_ctx) -> int:
        ran.append("fine")
        return 1

    def back(_ctx) -> int:
        return 0

    failing: set[str] = set()
    with caplog.at_level(logging.INFO, logger="gateway.roles.sweeper"):
        found = [sweep_once(None, (unreachable, fine), failing) for _ in range(3)]
        assert ran == ["unreachable", "fine"] * 3 and found == [{"fine": 1}] * 3
        back.__name__ = "unreachable"  # the same duty, working again
        sweep_once(None, (back, fine), failing)
        sweep_once(None, (unreachable, fine), failing)
    lines = [(r.levelname, r.getMessage().split(";")[0]) for r in caplog.records]
    assert lines == [("ERROR", "sweeper duty unreachable failed"), ("INFO", "sweeper duty unreachable works again"),
                     ("ERROR", "sweeper duty unreachable failed")]


def test_the_sweeper_duties_are_a_list_of_named_functions():
    assert [duty.__name__ for duty in DUTIES] == ["lost_inbound", "lost_deliveries", "broadcasts", "clock"]


# --- the intake while Redis is away -----------------------------------------------------------


def test_the_intake_stores_and_answers_while_redis_is_down_and_says_so_once(tmp_path, caplog):
    engine = make_engine(f"sqlite:///{tmp_path / 'intake.db'}")
    migrate(engine)
    nowhere = Queue(INBOUND_QUEUE, connection=connect(f"unix://{tmp_path / 'no-redis.sock'}"))
    attempts: list[list[int]] = []

    def enqueue(ids: list[int]) -> None:
        attempts.append(ids)
        jobs.enqueue_inbound(nowhere, ids)  # a real redis-py ConnectionError

    server = IntakeServer(engine, enqueue)

    async def work() -> list[bool]:
        stopping = asyncio.Event()
        serving = asyncio.create_task(server.serve(tmp_path / "intake.sock", stopping))
        intake = Intake(tmp_path / "intake.sock", engine, timeout=5)
        outcomes = []
        for n in range(3):  # three groups, one failed enqueue each
            message = InboundMessage("sms", f"SMredisdown{n}", "+8617199300001", "路灯坏了", ())
            outcomes.append(await intake.store(message))
            await asyncio.to_thread(wait_for, lambda n=n: len(attempts) > n, what="the enqueue")
        await intake.close()
        stopping.set()
        await serving
        return outcomes

    with caplog.at_level(logging.INFO, logger="gateway.roles.intake"):
        assert asyncio.run(work()) == [True, True, True]
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(InboundRow)).scalar_one() == 3
    failures = [r for r in caplog.records if "queueing stored messages failed" in r.getMessage()]
    assert len(attempts) == 3 and len(failures) == 1  # logged once for the outage, not once per group
    engine.dispose()


# --- one `gridline up` per home; roles ---------------------------------------------------------


def gridline(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize(("role", "redis_url", "reason"), [
    ("worker", "", "only --role all starts a private Redis"),
    ("web", "unix:///nowhere.sock", "the web role hands messages to an intake on the same host"),
    ("worker,cook", "unix:///nowhere.sock", "unknown role(s) cook"),
    ("all,web", "", "--role all already includes every role"),
    (" , ", "", "--role needs at least one of"),
])
def test_a_role_set_that_cannot_run_is_refused_with_its_reason(role, redis_url, reason):
    settings = load_settings({"GRIDLINE_REDIS_URL": redis_url})
    with pytest.raises(StartRefused) as refused:
        check_roles(settings, parse_roles(role))
    assert str(refused.value).startswith(reason)


def test_roles_that_can_run():
    redis = load_settings({"GRIDLINE_REDIS_URL": "unix:///somewhere.sock"})
    assert parse_roles("all") == parse_roles("web,intake,worker,sweeper") == frozenset(ROLES)
    assert parse_roles(" worker , sweeper ") == {"worker", "sweeper"}
    check_roles(redis, parse_roles("web,intake"))
    check_roles(load_settings({}), parse_roles("all"))  # the one role set that may start a private Redis


def test_a_refused_gridline_up_is_one_line_and_exit_2_touching_nothing(tmp_path):
    home = tmp_path / "home"
    refused = gridline(stack_environment(home), "up", "--role", "worker")
    assert refused.returncode == 2
    assert refused.stderr == "only --role all starts a private Redis: set GRIDLINE_REDIS_URL to run worker\n"
    assert not home.exists()


def test_the_home_lock_names_its_holder_and_is_free_once_released(tmp_path):
    home = tmp_path / "home"
    held = lock_home(home)
    with pytest.raises(StartRefused, match=rf"^already running \(pid {os.getpid()}\)$"):
        lock_home(home)
    held.close()  # as when the holder exits, even by kill -9: the kernel drops a flock with its file
    lock_home(home).close()
    assert stat.S_IMODE((home / "gridline.lock").stat().st_mode) & 0o077 == 0


def test_stop_goes_web_first_then_intake_then_the_rest_and_redis_last(tmp_path):
    log = tmp_path / "stopped"
    program = ("import signal, sys, time\n"
               "def stop(*_):\n"
               "    open(sys.argv[1], 'a').write(sys.argv[2] + '\\n'); sys.exit(0)\n"
               "signal.signal(signal.SIGTERM, stop)\n"
               "open(sys.argv[1] + '.ready', 'a').write(sys.argv[2] + '\\n')\n"
               "time.sleep(60)\n")
    supervisor = Supervisor(load_settings({"GRIDLINE_HOME": str(tmp_path)}))
    names = ["redis", "worker-0", "sweeper", "intake", "web-0", "web-1"]
    supervisor.children = [Child(name, [sys.executable, "-c", program, str(log), name]) for name in names]
    for child in supervisor.children:
        child.start(dict(os.environ))
    ready = tmp_path / "stopped.ready"
    wait_for(lambda: ready.exists() and len(ready.read_text().split()) == len(names), what="children ready")
    supervisor.stop()
    order = log.read_text().split()
    assert sorted(order[:2]) == ["web-0", "web-1"] and order[2] == "intake"
    assert sorted(order[3:5]) == ["sweeper", "worker-0"] and order[5] == "redis"


def test_each_role_brings_only_its_children(tmp_path):
    settings = load_settings({"GRIDLINE_HOME": str(tmp_path)})

    def names(roles: str, settings=settings) -> list[str]:
        return [child.name for child in Supervisor(settings, parse_roles(roles)).plan()]

    everything = names("all")
    senders = ["sender-sms", "sender-sms-1", "sender-telegram-resident", "sender-telegram-worker"]
    assert everything == ["redis", "twilio-sandbox", "telegram-sandbox", "worker-0", "worker-1", *senders, "sweeper",
                          "intake", "web-0", "web-1", "metrics"]  # each host serves its own processes' figures
    external = load_settings({"GRIDLINE_HOME": str(tmp_path), "GRIDLINE_REDIS_URL": "unix:///elsewhere.sock"})
    assert names("worker,sweeper", external) == ["worker-0", "worker-1", *senders, "sweeper", "metrics"]
    assert names("web,intake", external) == ["intake", "web-0", "web-1", "metrics"]


@contextlib.contextmanager
def gridline_up(home: Path, log_path: Path, env: dict[str, str], *args: str) -> Iterator[Stack]:
    with log_path.open("w") as log:
        process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "up", *args], env=env, cwd=ROOT,
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "Gridline is up" in log_path.read_text() or process.poll() is not None,
                 timeout=90, what="gridline up")
        if process.poll() is not None:
            raise RuntimeError("gridline up failed:\n" + log_path.read_text())
        yield Stack(load_settings(env), process, log_path, env)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


@pytest.fixture(scope="module")
def rstack(tmp_path_factory) -> Iterator[Stack]:
    """A stack of its own: its Redis gets killed. Its home does not exist before `gridline up`."""
    base = tmp_path_factory.mktemp("resilience")
    # Telegram's limits are not under test here: with them, the two task alerts each appeal sends the
    # same grid worker take a second apiece and hold up the acknowledgements in the same jobs.
    env = stack_environment(base / "home", GRIDLINE_TELEGRAM_RATE_LIMIT="0")
    with gridline_up(base / "home", base / "up.log", env) as stack:
        yield stack


def healthy(stack: Stack) -> bool:
    with urllib.request.urlopen(f"{stack.url}/healthz", timeout=5) as response:
        return response.status == 200


def redis_pid(stack: Stack) -> int | None:
    """The private redis-server of this stack (its title names its socket under the home)."""
    home = str(stack.settings.home.resolve()).encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                command = (entry / "cmdline").read_bytes()
                if b"redis-server" in command and home in command:
                    return int(entry.name)
    return None


@pytest.mark.slow
def test_data_files_are_owner_only(rstack):
    home = rstack.settings.home
    wait_for(lambda: (home / "gridline.db-wal").exists(), what="the WAL")
    files = [home / name for name in ("gridline.db", "gridline.db-wal", "gridline.db-shm", "gridline.lock")]
    files += [home / "redis" / name for name in ("appendonly.aof", "redis.log")]
    modes = {path.name: oct(stat.S_IMODE(path.stat().st_mode)) for path in files}
    assert modes == {path.name: "0o600" for path in files}
    folders = {path.name: oct(stat.S_IMODE(path.stat().st_mode)) for path in (home, home / "redis")}
    assert folders == {"home": "0o700", "redis": "0o700"}


@pytest.mark.slow
def test_a_second_gridline_up_on_the_same_home_is_refused_and_the_first_carries_on(rstack):
    socket = rstack.settings.home / "redis" / "redis.sock"
    before = (socket.stat().st_ino, redis_pid(rstack))
    env = {**rstack.env, "GRIDLINE_PORT": str(free_port()), "GRIDLINE_SANDBOX_PORT": str(free_port()),
           "GRIDLINE_TELEGRAM_SANDBOX_PORT": str(free_port())}
    second = gridline(env, "up")
    assert second.returncode == 2
    assert second.stderr == f"already running (pid {rstack.process.pid})\n" and second.stdout == ""
    assert (socket.stat().st_ino, redis_pid(rstack)) == before
    assert healthy(rstack)
    phone = "+8617199300002"
    assert post(rstack.settings, SMS_PATH, inbound_form(phone, "幸福路有个井盖坏了", rstack.settings)).status == 200
    rstack.wait_sent(phone)  # its Redis, workers and sandbox all still work


@pytest.mark.slow
def test_kill_minus_nine_of_redis_mid_run_every_accepted_appeal_gets_one_case_and_one_ack(rstack):
    phones = [f"+86171994{n:05d}" for n in range(80)]
    old = redis_pid(rstack)
    accepted, refused = [], []
    for n, phone in enumerate(phones):
        if n == 25:  # in the middle of the run, with the workers at work
            rstack.wait_sent(phones[0], timeout=120)
            os.kill(old, signal.SIGKILL)
        form = inbound_form(phone, f"翠湖花园{n}号楼门口垃圾三天没人清了", rstack.settings)
        answer = post(rstack.settings, SMS_PATH, form)
        (accepted if answer.status == 200 else refused).append(phone)
    assert refused == []  # the outage reaches neither the web nor the intake
    assert wait_for(lambda: redis_pid(rstack) not in (None, old), what="Redis restarted")
    assert "redis exited with code -9; restarting it in 0.5 s" in rstack.log_path.read_text()
    engine = make_engine(rstack.settings.sqlalchemy_url)

    def settled() -> bool:
        with engine.connect() as connection:
            open_rows = connection.execute(select(func.count()).select_from(DeliveryRow).where(
                DeliveryRow.recipient.in_(accepted), DeliveryRow.state.not_in(("sent", "delivered")))).scalar_one()
            unprocessed = connection.execute(select(func.count()).select_from(InboundRow).where(
                InboundRow.sender.in_(accepted), InboundRow.processed_at.is_(None))).scalar_one()
        return open_rows == 0 and unprocessed == 0 and all(rstack.sent_to(phone) for phone in accepted)

    # Settled is the marker that nothing more can come: every row processed, every reply sent.
    wait_for(settled, timeout=180, interval=0.5, what="every accepted appeal processed and acknowledged")
    with engine.connect() as connection:
        cases = dict(connection.execute(select(CaseRow.reporter, func.count()).where(
            CaseRow.reporter.in_(accepted)).group_by(CaseRow.reporter)).all())
    engine.dispose()
    assert cases == {phone: 1 for phone in accepted}
    acks = {phone: len(rstack.sent_to(phone)) for phone in accepted}
    assert acks == {phone: 1 for phone in accepted}
    assert healthy(rstack)


# --- a provider unreachable stops only the duty that needs it ---------------------------------


@pytest.mark.slow
def test_with_twilio_unreachable_and_a_row_stuck_in_sending_a_due_deadline_still_escalates(tmp_path):
    closed = free_port()  # nothing listens: every Twilio call is refused
    env = stack_environment(tmp_path / "home", GRIDLINE_TWILIO_API_BASE=f"http://127.0.0.1:{closed}")
    with gridline_up(tmp_path / "home", tmp_path / "up.log", env) as stack:
        phone = "+8617199300003"
        assert post(stack.settings, SMS_PATH, inbound_form(phone, "翠湖花园3号楼门口垃圾三天没人清了",
                                                           stack.settings)).status == 200
        engine = make_engine(stack.settings.sqlalchemy_url)
        case_id = wait_for(lambda: _scalar(engine, select(CaseRow.id).where(CaseRow.reporter == phone)),
                           what="the case")

        def cut_off_mid_send() -> bool:
            """The ack as a dead sender leaves it, set only between two attempts (`pending`): a sender
            still holding it would write its own outcome over ours."""
            with engine.begin() as connection:
                return connection.execute(update(DeliveryRow).where(
                    DeliveryRow.recipient == phone, DeliveryRow.state == "pending", DeliveryRow.attempts >= 1
                ).values(state="sending", updated_at=utcnow() - timedelta(minutes=5))).rowcount == 1

        wait_for(cut_off_mid_send, what="the ack tried once, then cut off mid-send long ago")
        with engine.begin() as connection:  # and the case overdue
            connection.execute(update(CaseRow).where(CaseRow.id == case_id).values(
                escalate_at=utcnow() - timedelta(minutes=1)))
        wait_for(lambda: "on sms yet" in stack.log_path.read_text(),  # "cannot reconcile delivery N on sms yet"
                 what="reconciling the stuck row to find Twilio unreachable")
        wait_for(lambda: _scalar(engine, select(CaseRow.state).where(CaseRow.id == case_id)) == "escalated",
                 timeout=30, what="the overdue case to escalate")
        stuck = _scalar(engine, select(DeliveryRow.state).where(DeliveryRow.id == _first_delivery(engine, phone)))
        assert stuck == "sending"  # Twilio is still unreachable: the clock did not wait for it
        engine.dispose()


def _scalar(engine, statement):
    with engine.connect() as connection:
        return connection.execute(statement).scalars().first()


def _first_delivery(engine, phone: str) -> int:
    return _scalar(engine, select(func.min(DeliveryRow.id)).where(DeliveryRow.recipient == phone))


# --- roles on separate "hosts" ----------------------------------------------------------------


@pytest.mark.slow
def test_roles_split_over_two_homes_share_the_store_and_redis(tmp_path):
    """One `gridline up --role worker,sweeper` (it migrates) and one `--role web,intake`, sharing a
    database and an external Redis, with the provider sandboxes run apart as real providers are."""
    redis = PrivateRedis(tmp_path / "redis")
    shared = {"GRIDLINE_REDIS_URL": redis.start(),
              "GRIDLINE_DATABASE_URL": f"sqlite:///{tmp_path / 'shared.db'}"}
    try:
        with sandbox_process("adapters.twilio_sms.sandbox") as twilio, \
                sandbox_process("adapters.telegram.sandbox", *[a for t in SANDBOX_TELEGRAM_TOKENS
                                                               for a in ("--token", t)]) as telegram:
            shared |= {"GRIDLINE_TWILIO_API_BASE": twilio, "GRIDLINE_TELEGRAM_API_BASE": telegram}
            back = stack_environment(tmp_path / "back", **shared)
            front = stack_environment(tmp_path / "front", **shared)
            with gridline_up(tmp_path / "back", tmp_path / "back.log", back, "--role", "worker,sweeper"), \
                    gridline_up(tmp_path / "front", tmp_path / "front.log", front, "--role", "web,intake") as web:
                assert "(roles: web,intake)" in web.log_path.read_text()
                phone = "+8617199300004"
                form = inbound_form(phone, "幸福路有个井盖坏了，晚上很危险", web.settings)
                assert post(web.settings, SMS_PATH, form).status == 200
                [ack] = web.wait_sent(phone, timeout=30)
                assert "编号" in ack["body"]
            assert not (tmp_path / "front" / "redis").exists()  # no private Redis outside `all`
    finally:
        redis.stop()
