"""One sweeper acts at a time: the Redis lease, then two real sweeper processes on one store and one
Redis, the holder killed with -9 and the standby taking over once the lease runs out."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.lease import Lease
from gateway.queues import PrivateRedis, connect
from tests.conftest import ROOT, stack_environment, wait_for


@pytest.fixture
def fresh_redis(tmp_path: Path) -> Iterator[str]:
    server = PrivateRedis(tmp_path / "redis")
    try:
        yield server.start()
    finally:
        server.stop()


def test_one_holder_at_a_time_and_a_new_token_on_every_takeover(fresh_redis):
    connection = connect(fresh_redis)
    first, second = Lease(connection, "t", 0.5, "host-a:1"), Lease(connection, "t", 0.5, "host-b:2")
    assert first.hold() == 1 and second.hold() is None
    assert first.hold() == 1  # a renewal keeps the token
    assert wait_for(second.hold, timeout=5, interval=0.05, what="the lease to expire") == 2
    assert first.hold() is None  # the old holder, back from a pause, stands down
    first.release()  # not its lease any more: nothing happens
    assert second.hold() == 2
    second.release()
    assert first.hold() == 3


def sweeper(env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, "-m", "gateway.roles.sweeper"], env=env, cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.mark.slow
def test_a_standby_sweeper_takes_over_when_the_holder_dies(store_settings, fresh_redis, tmp_path):
    env = stack_environment(store_settings.home, GRIDLINE_DATABASE_URL=store_settings.sqlalchemy_url,
                            GRIDLINE_REDIS_URL=fresh_redis, GRIDLINE_SWEEPER_LEASE="3", GRIDLINE_SWEEP_INTERVAL="0.2")
    logs = [tmp_path / "sweeper-0.log", tmp_path / "sweeper-1.log"]
    processes = [sweeper(env, log) for log in logs]
    connection = connect(fresh_redis)
    try:
        def holder() -> int | None:
            value = connection.get("gridline:lease:sweeper")
            return int(value.decode().split(":")[1]) if value else None

        # A sweeper takes seconds to start (imports, the store, Redis): longer on a busy machine.
        first = wait_for(lambda: holder() in {p.pid for p in processes} and holder(), timeout=90,
                         what="a sweeper to hold")
        acting = next(n for n, p in enumerate(processes) if p.pid == first)
        standby = 1 - acting
        wait_for(lambda: "standing by" in logs[standby].read_text(), timeout=90, what="the other to stand by")
        wait_for(lambda: "sweep" in logs[acting].read_text() and "acting, token 1" in logs[acting].read_text(),
                 what="the holder to act")
        assert "acting" not in logs[standby].read_text() and holder() == first
        processes[acting].send_signal(signal.SIGKILL)
        processes[acting].wait()
        wait_for(lambda: holder() == processes[standby].pid, timeout=30, what="the standby to take over")
        wait_for(lambda: "acting, token 2" in logs[standby].read_text(), what="the standby to act")
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(10)
    assert connection.get("gridline:lease:sweeper") is None  # released on a clean stop
