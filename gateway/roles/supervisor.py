"""`gridline up`: one command runs the deployment's processes on this host and keeps them running.

It takes an exclusive lock on its home first (a second `gridline up` on the same home is refused
before it touches anything), prepares the store, starts a private redis-server when no Redis URL
is configured, the loopback sandboxes when no provider accounts are, and the children of the
roles asked for (`--role`, default `all`): rq workers and the channels' senders, the sweeper,
the intake process and the web processes. Every child, Redis included, is watched and restarted
with exponential backoff; the supervisor never gives up on one, it logs each failed restart
loudly and keeps trying. Ctrl-C or SIGTERM stops them all, web first and Redis last, so no
accepted message is cut off mid-way.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO

from adapters import SendError
from adapters.telegram import WEBHOOK_PATH, TelegramClient
from gateway.config import Settings
from gateway.delivery.channels import build_channels, sandboxes
from gateway.domain.city import load_city
from gateway.queues import PrivateRedis
from gateway.store import city_imported, exclusive, import_city, make_engine, migrate, session_factory
from gateway.world import SMS

log = logging.getLogger("gridline")

ROLES = ("web", "intake", "worker", "sweeper")
LOCK_FILE = "gridline.lock"


class StartRefused(Exception):
    """`gridline up` cannot start as asked; the message is the one line the operator sees."""


def parse_roles(text: str) -> frozenset[str]:
    """`all`, or a comma-separated subset of ROLES; StartRefused says what is wrong."""
    names = {name.strip() for name in text.split(",") if name.strip()}
    if not names:
        raise StartRefused("--role needs at least one of: all, " + ", ".join(ROLES))
    if "all" in names:
        if len(names) > 1:
            raise StartRefused("--role all already includes every role; list roles without it")
        return frozenset(ROLES)
    unknown = sorted(names - set(ROLES))
    if unknown:
        raise StartRefused(f"unknown role(s) {', '.join(unknown)}: choose from all, {', '.join(ROLES)}")
    return frozenset(names)


def check_roles(settings: Settings, roles: frozenset[str]) -> None:
    """Refuse role sets that cannot work, before anything is touched."""
    if roles != frozenset(ROLES) and not settings.redis_url:
        raise StartRefused("only --role all starts a private Redis: set GRIDLINE_REDIS_URL to run "
                           + ",".join(sorted(roles)))
    if "web" in roles and "intake" not in roles:
        # The web processes hand every message to the intake over a unix socket under the home,
        # and the home's lock lets one `gridline up` use it: they run in the same command.
        raise StartRefused("the web role hands messages to an intake on the same host: use --role web,intake")


@dataclass
class Backoff:
    """How long to wait before restarting a child: `first` doubling up to `cap`, and back to
    `first` once the child had stayed up `stable_after` seconds (a crash after a good run is news,
    not part of a crash loop)."""

    first: float = 0.5
    cap: float = 30.0
    stable_after: float = 60.0
    current: float = 0.0  # the last delay given; 0: none yet in this streak

    def next_delay(self, uptime: float) -> float:
        if uptime >= self.stable_after:
            self.current = 0.0
        self.current = self.first if self.current == 0.0 else min(self.current * 2, self.cap)
        return self.current


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the supervisor dies, even by kill -9, so no orphan
    keeps the home's Redis socket or port after the home's lock is released (Linux prctl)."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    restart_at: float | None = None  # dead and waiting out its backoff
    backoff: Backoff = field(default_factory=Backoff)
    env: Mapping[str, str] = field(default_factory=dict)  # added to the supervisor's environment

    @classmethod
    def python(cls, name: str, module: str, *args: str, env: Mapping[str, str] | None = None) -> Child:
        return cls(name, [sys.executable, "-m", module, *args], env=env or {})

    def start(self, env: dict[str, str]) -> None:
        # Its own session: Ctrl-C reaches only the supervisor, which stops children in order.
        self.process = subprocess.Popen(self.argv, env={**env, **self.env}, stdin=subprocess.DEVNULL,
                                        start_new_session=True,
                                        preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        self.started_at, self.restart_at = time.monotonic(), None

    def check(self, env: dict[str, str], now: float) -> None:
        """Restart the child if it died and its backoff is over; say so once per backoff step."""
        if self.restart_at is not None:
            if now >= self.restart_at:
                self.start(env)
            return
        if self.process is None or self.process.poll() is None:
            return
        delay = self.backoff.next_delay(now - self.started_at)
        log.error("%s exited with code %s; restarting it in %.1f s", self.name, self.process.returncode, delay)
        self.restart_at = now + delay

    def terminate(self) -> None:
        self.restart_at = None
        if self.process and self.process.poll() is None:
            self.process.terminate()

    def wait(self, deadline: float) -> None:
        """Wait for it to exit until `deadline` (monotonic), then kill it."""
        if self.process is None:
            return
        try:
            self.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def lock_home(home: Path) -> IO[str]:
    """Hold an exclusive lock on the home for as long as the returned file stays open.

    flock is released by the kernel when the holder dies, so a crashed instance never leaves a
    stale lock behind; the file holds the holder's pid only to name it in the refusal.
    """
    home.mkdir(parents=True, exist_ok=True)
    lock = open(os.open(home / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600), "r+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise StartRefused(f"already running (pid {holder})") from None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def prepare_store(settings: Settings) -> None:
    """Migrate the database and, on first start, import the city from the config folder."""
    settings.home.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.sqlalchemy_url)
    with exclusive(engine, "prepare_store"):  # several hosts may start at once on PostgreSQL
        migrate(engine, settings.sms_signature)
        sessions = session_factory(engine)
        with sessions() as session, session.begin():
            if not city_imported(session):
                counts = import_city(session, load_city(settings.city_dir))
                log.info("imported the city from %s: %s", settings.city_dir, counts)
    engine.dispose()


def metrics_folder(settings: Settings) -> Path:
    """PROMETHEUS_MULTIPROC_DIR for this host's processes."""
    return settings.home.resolve() / "metrics"


def store_ready(settings: Settings) -> bool:
    """The store is at the newest migration and holds a city (what a role that does not migrate needs)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    import gateway.store

    head = ScriptDirectory(str(Path(gateway.store.__file__).parent / "migrations")).get_current_head()
    engine = make_engine(settings.sqlalchemy_url)
    try:
        with engine.connect() as connection:
            if MigrationContext.configure(connection).get_current_revision() != head:
                return False
        with session_factory(engine)() as session:
            return city_imported(session)
    except Exception:  # a database not reachable yet is "not ready"; the caller says what it waits for
        return False
    finally:
        engine.dispose()


class Supervisor:
    def __init__(self, settings: Settings, roles: frozenset[str] = frozenset(ROLES)):
        self.redis = None if settings.redis_url else PrivateRedis(settings.home / "redis")
        self.settings = settings
        self.roles = roles
        self.children: list[Child] = []
        self.stopping = False

    def child_environment(self) -> dict[str, str]:
        s = self.settings
        env = dict(os.environ)
        env.update({
            "GRIDLINE_HOME": str(s.home.resolve()), "GRIDLINE_CONFIG_DIR": str(s.config_dir.resolve()),
            "GRIDLINE_REDIS_URL": s.redis_url, "GRIDLINE_TWILIO_API_BASE": s.twilio_base,
            "GRIDLINE_PUBLIC_URL": s.base_url, "GRIDLINE_TELEGRAM_API_BASE": s.telegram_base,
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_folder(s)),
        })
        return env

    def plan(self) -> list[Child]:
        """The children in start order (Redis first, the web last); `stop` goes the other way."""
        s, roles, all_roles = self.settings, self.roles, self.roles == frozenset(ROLES)
        children = []
        if self.redis:
            children.append(Child("redis", self.redis.command()))
        if all_roles:  # the loopback fakes of channels with no account configured (the registry says which)
            children += [Child.python(box.name, box.module, *box.args, env=box.env) for box in sandboxes(s)]
        if "worker" in roles:
            children += [Child.python(f"worker-{n}", "gateway.roles.worker") for n in range(s.workers)]
            # Senders per channel: a lane held to its provider's limit never delays another. The SMS
            # lane, which carries the broadcasts, may have several (each claims its own rows).
            children += [Child.python(f"sender-{name}" + (f"-{n}" if n else ""), "gateway.roles.sender", name)
                         for name in build_channels(s) for n in range(s.sms_senders if name == SMS else 1)]
        if "sweeper" in roles:
            children.append(Child.python("sweeper", "gateway.roles.sweeper"))
        if "intake" in roles:  # before the web: they hand it every inbound message, so it stops after them
            children.append(Child.python("intake", "gateway.roles.intake"))
        if "web" in roles:
            children += [Child.python(f"web-{n}", "gateway.roles.web") for n in range(s.web_processes)]
            if s.telegram_polling:
                children.append(Child.python("telegram-poller", "gateway.roles.telegram_poller"))
        if s.metrics_port:  # this host's processes' figures, on a loopback port of its own
            children.append(Child.python("metrics", "gateway.roles.metrics"))
        return children

    def start(self) -> None:
        if "sweeper" in self.roles:  # the one role that runs once per deployment migrates for all
            prepare_store(self.settings)
        elif not store_ready(self.settings):
            log.warning("waiting for the store to be migrated and hold a city (a host with the sweeper role does it)")
            while not self.stopping and not store_ready(self.settings):
                time.sleep(1)
        # Counters from an earlier run would be summed with this one's (gateway/metrics.py).
        shutil.rmtree(metrics_folder(self.settings), ignore_errors=True)
        metrics_folder(self.settings).mkdir(parents=True)
        env = self.child_environment()
        for child in self.plan():
            if self.stopping:
                return
            self.children.append(child)
            child.start(env)
            if child.name == "redis":
                self.settings = replace(self.settings, redis_url=self.redis.wait_ready(child.process))
                env = self.child_environment()
                log.info("private redis-server on %s", self.redis.socket)
        if "web" in self.roles:
            self.wait_until_ready()
            if not self.settings.telegram_polling:
                self.register_webhooks()

    def register_webhooks(self) -> None:
        """Point both bots at our webhooks, with the secret Telegram must echo back.

        Telegram keeps a webhook once set, so a failure here (Telegram or its sandbox unreachable)
        is logged loudly and the stack keeps running rather than stopping.
        """
        s = self.settings
        for bot, token in s.telegram_tokens.items():
            with TelegramClient(token, s.telegram_base) as client:
                for attempt in range(50):  # the sandbox may still be starting
                    try:
                        client.set_webhook(s.base_url + WEBHOOK_PATH.format(bot=bot), s.telegram_webhook_secret)
                        break
                    except SendError as error:
                        if attempt == 49 or self.stopping:
                            log.error("could not set the %s bot's webhook (%s); its updates arrive only once "
                                      "it is set: restart gridline up", bot, error)
                            break
                        self.watch_once()
                        time.sleep(0.2)

    def wait_until_ready(self, warn_after: float = 30.0) -> None:
        """Wait for the web processes to answer, restarting children meanwhile; say so if it takes long."""
        url = f"http://{self.settings.host}:{self.settings.port}/healthz"
        warn_at = time.monotonic() + warn_after
        while not self.stopping:
            try:
                with urllib.request.urlopen(url, timeout=1):
                    return
            except OSError:
                if warn_at and time.monotonic() > warn_at:
                    log.error("the gateway does not answer on %s after %.0f s; still trying", url, warn_after)
                    warn_at = 0.0
                self.watch_once()
                time.sleep(0.2)

    def watch_once(self) -> None:
        now, env = time.monotonic(), self.child_environment()
        for child in self.children:
            if not self.stopping:
                child.check(env, now)

    def watch(self) -> None:
        """Restart every child that dies, with backoff, until asked to stop: never give up on one."""
        while not self.stopping:
            self.watch_once()
            time.sleep(0.2)

    def stop(self, timeout: float = 10.0) -> None:
        """Web first (nothing new comes in), then the intake (it answers what the web handed it),
        then the rest together (workers finish their job), Redis last (everyone else uses it)."""
        self.stopping = True
        web = [c for c in self.children if c.name.startswith(("web-", "telegram-poller"))]
        intake = [c for c in self.children if c.name == "intake"]
        redis = [c for c in self.children if c.name == "redis"]
        rest = [c for c in self.children if c not in web + intake + redis]
        for tier in (web, intake, rest, redis):
            for child in tier:
                child.terminate()
            deadline = time.monotonic() + timeout
            for child in tier:
                child.wait(deadline)


def run(settings: Settings, roles: frozenset[str] = frozenset(ROLES)) -> None:
    """Raises StartRefused (before touching anything) when the roles cannot run or the home is in use."""
    check_roles(settings, roles)
    # Everything this process and its children create (the SQLite file and its WAL, Redis's AOF,
    # logs, sockets) holds residents' names, phones and appeals: owner-only.
    os.umask(0o077)
    lock = lock_home(settings.home)
    settings.home.chmod(0o700)
    supervisor = Supervisor(settings, roles)

    def request_stop(*_args: object) -> None:
        supervisor.stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        supervisor.start()
        if not supervisor.stopping:
            sandbox = " (Twilio sandbox on loopback)" if settings.sandbox else ""
            where = f" on http://{settings.host}:{settings.port}{sandbox}" if "web" in roles else ""
            only = "" if roles == frozenset(ROLES) else f" (roles: {','.join(r for r in ROLES if r in roles)})"
            print(f"Gridline is up{where}{only}. Ctrl-C stops it.", flush=True)
            supervisor.watch()
    finally:
        supervisor.stop()
        lock.close()
        print("Gridline stopped.", flush=True)
