"""`gridline up`: one command runs the whole embedded deployment and keeps it running.

It prepares the store (migrations, first-start city import), starts a private redis-server when
no Redis URL is configured, the loopback Twilio sandbox when no Twilio account is, the rq
workers, the sweeper and the web gateway; restarts any child that dies; and on Ctrl-C or
SIGTERM stops them all, web first and Redis last, so no accepted message is cut off mid-way.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field, replace

from adapters import SendError
from adapters.telegram import TelegramClient
from gateway.config import Settings
from gateway.domain.city import load_city
from gateway.queues import PrivateRedis
from gateway.store import city_imported, import_city, make_engine, migrate, session_factory

log = logging.getLogger("gridline")


def prepare_store(settings: Settings) -> None:
    """Migrate the database and, on first start, import the city from the config folder."""
    settings.home.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.sqlalchemy_url)
    migrate(engine)
    sessions = session_factory(engine)
    with sessions() as session, session.begin():
        if not city_imported(session):
            counts = import_city(session, load_city(settings.city_dir))
            log.info("imported the city from %s: %s", settings.city_dir, counts)
    engine.dispose()


@dataclass
class Child:
    name: str
    module: str
    args: tuple[str, ...] = ()
    process: subprocess.Popen | None = None
    restarts: list[float] = field(default_factory=list)

    def start(self, env: dict[str, str]) -> None:
        # Its own session: Ctrl-C reaches only the supervisor, which stops children in order.
        self.process = subprocess.Popen([sys.executable, "-m", self.module, *self.args], env=env,
                                        start_new_session=True)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Supervisor:
    def __init__(self, settings: Settings):
        self.redis = None if settings.redis_url else PrivateRedis(settings.home / "redis")
        self.settings = settings
        self.children: list[Child] = []
        self.stopping = False

    def child_environment(self) -> dict[str, str]:
        s = self.settings
        env = dict(os.environ)
        env.update({
            "GRIDLINE_HOME": str(s.home.resolve()), "GRIDLINE_CONFIG_DIR": str(s.config_dir.resolve()),
            "GRIDLINE_REDIS_URL": s.redis_url, "GRIDLINE_TWILIO_API_BASE": s.twilio_base,
            "GRIDLINE_PUBLIC_URL": s.base_url, "GRIDLINE_TELEGRAM_API_BASE": s.telegram_base,
        })
        return env

    def start(self) -> None:
        prepare_store(self.settings)
        if self.redis:
            self.settings = replace(self.settings, redis_url=self.redis.start())
            log.info("private redis-server on %s", self.redis.socket)
        if self.settings.sandbox and not self.settings.twilio_api_base:
            self.children.append(Child("twilio-sandbox", "adapters.twilio_sms.sandbox",
                                       ("--port", str(self.settings.sandbox_port))))
        if self.settings.telegram_sandbox and not self.settings.telegram_api_base:
            tokens = [arg for token in self.settings.telegram_tokens.values() for arg in ("--token", token)]
            self.children.append(Child("telegram-sandbox", "adapters.telegram.sandbox",
                                       ("--port", str(self.settings.telegram_sandbox_port), *tokens)))
        self.children += [Child(f"worker-{n}", "gateway.roles.worker") for n in range(self.settings.workers)]
        # The intake first: the web processes hand it every inbound message, so it stops after them.
        self.children += [Child("sweeper", "gateway.roles.sweeper"), Child("intake", "gateway.roles.intake")]
        self.children += [Child(f"web-{n}", "gateway.roles.web") for n in range(self.settings.web_processes)]
        if self.settings.telegram_polling:
            self.children.append(Child("telegram-poller", "gateway.roles.telegram_poller"))
        env = self.child_environment()
        for child in self.children:
            child.start(env)
        self.wait_until_ready()
        if not self.settings.telegram_polling:
            self.register_webhooks()

    def register_webhooks(self) -> None:
        """Point both bots at our webhooks, with the secret Telegram must echo back."""
        s = self.settings
        for bot, token in s.telegram_tokens.items():
            with TelegramClient(token, s.telegram_base) as client:
                for attempt in range(50):  # the sandbox may still be starting
                    try:
                        client.set_webhook(f"{s.base_url}/webhooks/telegram/{bot}", s.telegram_webhook_secret)
                        break
                    except SendError:
                        if attempt == 49:
                            raise
                        time.sleep(0.2)

    def wait_until_ready(self, timeout: float = 30.0) -> None:
        url = f"http://{self.settings.host}:{self.settings.port}/healthz"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"the gateway did not answer on {url}")

    def watch(self) -> None:
        """Restart children that die; give up on one that dies five times in a minute."""
        env = self.child_environment()
        while not self.stopping:
            for child in self.children:
                if child.process and child.process.poll() is not None and not self.stopping:
                    now = time.monotonic()
                    child.restarts = [t for t in child.restarts if now - t < 60] + [now]
                    if len(child.restarts) > 5:
                        raise RuntimeError(f"{child.name} keeps dying (exit {child.process.returncode})")
                    log.warning("%s exited with %s; restarting", child.name, child.process.returncode)
                    child.start(env)
            time.sleep(0.5)

    def stop(self) -> None:
        self.stopping = True
        for child in reversed(self.children):
            child.stop()
        if self.redis:
            self.redis.stop()


def run(settings: Settings) -> None:
    supervisor = Supervisor(settings)

    def request_stop(*_args: object) -> None:
        supervisor.stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        supervisor.start()
        sandbox = " (Twilio sandbox on loopback)" if settings.sandbox else ""
        print(f"Gridline is up on http://{settings.host}:{settings.port}{sandbox}. Ctrl-C stops it.",
              flush=True)
        supervisor.watch()
    finally:
        supervisor.stop()
        print("Gridline stopped.", flush=True)
