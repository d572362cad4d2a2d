"""Shared fixtures: a real private Redis, a real store with the sample city (SQLite, and a throwaway
PostgreSQL cluster when the server is installed), and a whole running Gridline (`gridline up` in a
subprocess) talking to the loopback Twilio sandbox."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from gateway.config import Settings, load_settings
from tests.postgres import Cluster, postgres_bin
from tests.twilio_client import inbound_form, post

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(method: str, url: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


@contextmanager
def sandbox_process(module: str, *args: str) -> Iterator[str]:
    """Run a sandbox fake as `gridline up` does (`python -m ... --port 0`); yield the URL it prints."""
    command = [sys.executable, "-m", module, "--port", "0", *args]
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            url = process.stdout.readline().split()[-1]
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url), url
            yield url
        finally:
            process.terminate()


def wait_for(condition, timeout: float = 20.0, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@dataclass
class Stack:
    """A running `gridline up`, its settings and its captured log."""

    settings: Settings
    process: subprocess.Popen
    log_path: Path
    env: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.port}"

    @property
    def sandbox_url(self) -> str:
        return self.settings.twilio_base

    def sent_to(self, phone: str) -> list[dict]:
        """Messages the sandbox Twilio accepted for `phone`, oldest first."""
        query = urllib.parse.urlencode({"to": phone})
        _, body = http_json("GET", f"{self.sandbox_url}/_sandbox/messages?{query}")
        return body["messages"]

    def wait_sent(self, phone: str, count: int = 1, timeout: float = 20.0) -> list[dict]:
        return wait_for(lambda: (m := self.sent_to(phone)) and len(m) >= count and m,
                        timeout, what=f"{count} message(s) to {phone}")

    def sent_after_a_marker(self, phone: str) -> list[dict]:
        """Everything sent to `phone` once a later message of theirs has been answered.

        "Nothing more came" needs a positive marker: `phone` texts HELP, and once its answer is in,
        whatever the messages before it would have caused has had its turn. The answer is not returned.
        """
        before = len(self.sent_to(phone))
        assert post(self.settings, "/webhooks/twilio/sms", inbound_form(phone, "HELP", self.settings)).status == 200
        sent = wait_for(lambda: (m := self.sent_to(phone))[before:] and any("Grid service line" in x["body"]
                                                                            for x in m[before:]) and m,
                        what=f"the answer to a marker from {phone}")
        return [m for m in sent if "Grid service line" not in m["body"]]

    def gridline(self, *args: str, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "gateway.cli", *args], env=self.env, cwd=ROOT,
                              input=stdin, capture_output=True, text=True, timeout=timeout)


def stack_environment(home: Path, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDLINE_")}
    env.update({
        "GRIDLINE_HOME": str(home), "GRIDLINE_CONFIG_DIR": str(CONFIG),
        "GRIDLINE_PORT": str(free_port()), "GRIDLINE_SANDBOX_PORT": str(free_port()),
        "GRIDLINE_TELEGRAM_SANDBOX_PORT": str(free_port()), "GRIDLINE_METRICS_PORT": str(free_port()),
        "GRIDLINE_SWEEP_INTERVAL": "0.5", "GRIDLINE_STALE_AFTER": "2", "PYTHONUNBUFFERED": "1",
        # One web process, one rq worker, one SMS sender: a stack starts in about half the CPU time.
        # The shared `stack` runs the defaults (two of each).
        "GRIDLINE_WEB_PROCESSES": "1", "GRIDLINE_WORKERS": "1", "GRIDLINE_SMS_SENDERS": "1",
    })
    env.update(overrides)
    return env


@pytest.fixture(scope="session")
def postgres() -> Iterator[Cluster]:
    """A throwaway PostgreSQL cluster for the session. In CI (CI=true) a missing server fails the run."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        reason = "PostgreSQL is not installed (Debian's postgresql package): its tests cannot run"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    cluster = Cluster(bin_dir).start()
    try:
        yield cluster
    finally:
        cluster.stop()


DIALECTS = ("sqlite", "postgresql")


def database_for(dialect: str, request: pytest.FixtureRequest) -> Callable[[Path], str]:
    """home → the URL of a new, empty database of this dialect (a SQLite file in home)."""
    if dialect == "sqlite":
        return lambda home: f"sqlite:///{(home / 'gridline.db').resolve()}"
    cluster: Cluster = request.getfixturevalue("postgres")
    return lambda _home: cluster.database()


@pytest.fixture(scope="session", params=DIALECTS)
def new_database(request: pytest.FixtureRequest) -> Callable[[Path], str]:
    """Store-level tests run once per dialect: this makes each of their databases."""
    return database_for(request.param, request)


# Fixtures that start a whole `gridline up`: their tests are the full tier (`make test`), so the
# quick tier (`pytest -m "not slow"`) stays about a minute.
STACK_FIXTURES = {"stack", "bstack", "fstack", "stacks"}


# The end-to-end modules whose whole stack also runs on PostgreSQL: intake, cases and their
# workflow, and the figures. Below the stack, every store-level test runs on both dialects anyway;
# the other end-to-end modules (SMS keywords and provider faults, console, hostile HTTP, channels,
# metrics) exercise the web and channel layers, which are the same on either store, and run on
# SQLite only, to keep the suite within its time.
POSTGRESQL_STACK_MODULES = {"test_intake", "test_case_lifecycle", "test_case_api", "test_operators"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kept, dropped = [], []
    for item in items:
        if STACK_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        dialect = getattr(item, "callspec", None) and item.callspec.params.get("stack")
        if dialect == "postgresql" and item.module.__name__.rsplit(".", 1)[-1] not in POSTGRESQL_STACK_MODULES:
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(scope="session", params=DIALECTS)
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A whole `gridline up`, on each dialect."""
    home = tmp_path_factory.mktemp("gridline-home")
    # The shared stack also runs the generic HTTP channel against its sandbox (tests/test_http_flow.py).
    env = stack_environment(home, GRIDLINE_HTTP_SECRET="test-http-secret", GRIDLINE_HTTP_SANDBOX_PORT=str(free_port()),
                            GRIDLINE_WEB_PROCESSES="2", GRIDLINE_WORKERS="2", GRIDLINE_SMS_SENDERS="2")
    if request.param == "postgresql":
        env["GRIDLINE_DATABASE_URL"] = database_for("postgresql", request)(home)
    log_path = home / "gridline.log"
    with log_path.open("w") as log:
        process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "up"], env=env, cwd=ROOT,
                                   stdout=log, stderr=subprocess.STDOUT)
    running = Stack(load_settings(env), process, log_path, env)
    try:
        wait_for(lambda: "Gridline is up" in log_path.read_text() or process.poll() is not None,
                 timeout=60, what="gridline up")
        if process.poll() is not None:
            raise RuntimeError("gridline up failed:\n" + log_path.read_text())
        yield running
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)  # the workers finish their jobs first; slower on a busy machine


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server for tests below the stack (rate limits, lanes' queues)."""
    from gateway.queues import PrivateRedis

    server = PrivateRedis(tmp_path_factory.mktemp("redis"))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def store_settings(tmp_path_factory: pytest.TempPathFactory, new_database: Callable[[Path], str]) -> Settings:
    """A migrated store holding the sample city, for tests below the HTTP layer (each dialect)."""
    from gateway.roles.supervisor import prepare_store

    home = tmp_path_factory.mktemp("store")
    settings = replace(load_settings({}), home=home, config_dir=CONFIG, database_url=new_database(home))
    prepare_store(settings)
    return settings
