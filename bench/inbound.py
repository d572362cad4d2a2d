"""Inbound webhook throughput: signed Twilio webhooks at concurrency 64 against a running gateway.

Starts `gridline up` in a scratch folder (real SQLite, private Redis, rq workers), pre-signs
N distinct webhooks with twilio's RequestValidator, drives them with wrk, and in the same run
measures a bare aiohttp hello-world on the same machine for the ratio. Afterwards it checks
that every 200 is a stored row with its rq job queued, then lets the workers drain the backlog
and reports how fast appeals become acknowledgements.

By default the rq workers are suspended during the burst (`rq suspend`), as they would be
behind in a real spike: the figure is what the gateway itself takes in. `--live` keeps them
working, so they compete with the gateway for the two cores and the SQLite write lock.

    apt-get install wrk      # the load generator (C, so the client is not the bottleneck)
    .venv/bin/python bench/inbound.py [--seconds 10] [--connections 64]
    .venv/bin/python bench/inbound.py --database sqlite,postgresql   # both stores side by side
    .venv/bin/python bench/inbound.py --database postgresql --web-hosts 2

`--web-hosts 2` (PostgreSQL) also starts a second `gridline up --role web,intake` in a home of its
own, on the same PostgreSQL and the first one's Redis, with the same public URL (as two hosts
behind a load balancer), and drives both at once, half the connections each, on disjoint halves
of the webhooks. On one machine the two "hosts" share its two cores: the figure shows what a
second intake costs and that nothing is lost or doubled, not how two machines scale.

On PostgreSQL it starts a throwaway cluster from Debian's postgresql package (tests/postgres.py),
fsync on, as a production server would run.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import create_engine, func, select
from twilio.request_validator import RequestValidator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rq import Queue, Worker  # noqa: E402
from rq.suspension import resume, suspend  # noqa: E402

from gateway.config import load_settings  # noqa: E402
from gateway.queues import INBOUND_QUEUE, connect  # noqa: E402
from gateway.store import DeliveryRow, InboundRow  # noqa: E402
from tests.postgres import Cluster, postgres_bin  # noqa: E402

WRK_SCRIPT = """
local bodies, signatures, position = {}, {}, 0
local thread_count, thread_id = 2, 0
local counter = 0
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end
function init(args)
  thread_count = tonumber(args[2])
  id = id + tonumber(args[3] or "0")  -- a second wrk (a second web host) takes other bodies
  local n = 0
  for line in io.lines(args[1]) do
    if n % thread_count == id then
      local signature, body = line:match("^(%S+) (.*)$")
      table.insert(signatures, signature)
      table.insert(bodies, body)
    end
    n = n + 1
  end
end
function request()
  position = position % #bodies + 1
  return wrk.format("POST", args_path, {["Content-Type"] = "application/x-www-form-urlencoded",
    ["X-Twilio-Signature"] = signatures[position]}, bodies[position])
end
function done(summary, latency, requests)
  io.write(string.format('RESULT {"requests": %d, "seconds": %f, "non2xx": %d, "socket_errors": %d, ' ..
    '"p50_ms": %f, "p99_ms": %f}\\n', summary.requests, summary.duration / 1e6, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""

HELLO_WORLD = """
import sys
from aiohttp import web
async def hello(request):
    await request.post()
    return web.Response(text="hello")
app = web.Application()
app.router.add_post("/", hello)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def postgresql_cluster() -> Cluster:
    """A throwaway PostgreSQL cluster from Debian's package with fsync on, as a production server
    runs (tests/postgres.py); exits with a line saying what to install when there is none."""
    if postgres_bin() is None:
        sys.exit("PostgreSQL is needed: apt-get install postgresql")
    return Cluster(postgres_bin(), durable=True).start()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing answered on {url}")


def run_wrk(url: str, path: str, script_args: list[str], seconds: int, connections: int,
            script: str) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script.replace("args_path", json.dumps(path)))
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", handle.name, url, "--",
               *script_args]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(next(line for line in output.splitlines() if line.startswith("RESULT "))[7:])


def hello_world_rate(seconds: int, connections: int) -> dict:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", HELLO_WORLD, str(port)])
    try:
        wait_http(f"http://127.0.0.1:{port}/")
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as bodies:
            bodies.write("x a=1&b=2\n")
        return run_wrk(f"http://127.0.0.1:{port}", "/", [bodies.name, "2"], seconds, connections, WRK_SCRIPT)
    finally:
        server.terminate()
        server.wait()


def signed_bodies(settings, count: int, path: Path) -> None:
    """`count` distinct inbound webhooks, as Twilio would sign them, one per line."""
    account_sid, token = settings.twilio_credentials
    validator = RequestValidator(token)
    url = settings.base_url + "/webhooks/twilio/sms"
    texts = ["翠湖花园3号楼门口垃圾三天没人清了", "幸福路有个井盖坏了，晚上很危险",
             "The street light outside Sunshine City building 5 is broken", "楼上装修噪音太大，晚上十点还在打电钻"]
    with path.open("w") as out:
        for n in range(count):
            sid = "SM" + secrets.token_hex(16)
            form = {"MessageSid": sid, "SmsSid": sid, "SmsMessageSid": sid, "AccountSid": account_sid,
                    "From": f"+8617{n % 100_000_000:09d}", "To": settings.twilio_from_number,
                    "Body": texts[n % len(texts)], "NumMedia": "0", "NumSegments": "1",
                    "SmsStatus": "received", "ApiVersion": "2010-04-01", "FromCountry": "CN", "ToCountry": "CN"}
            out.write(f"{validator.compute_signature(url, form)} {urllib.parse.urlencode(form)}\n")


def queued_inbound(redis, stored: int) -> tuple[int, int]:
    """rq jobs in the inbound queue and the message ids they carry, once all stored are queued
    (the intake queues them just after answering) or 10 s have passed."""
    deadline = time.monotonic() + 10
    while True:
        jobs = Queue(INBOUND_QUEUE, connection=redis).get_jobs()
        ids = sum(len(job.args[0]) for job in jobs)
        if ids >= stored or time.monotonic() > deadline:
            return len(jobs), ids
        time.sleep(0.2)


def measure(args: argparse.Namespace, database: str) -> dict:
    """One `gridline up` on `database` (sqlite, or postgresql: a throwaway cluster with fsync on)."""
    home = Path(tempfile.mkdtemp(prefix="gridline-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDLINE_")}
    env.update({"GRIDLINE_HOME": str(home), "GRIDLINE_CONFIG_DIR": str(ROOT / "config"),
                "GRIDLINE_PORT": str(free_port()), "GRIDLINE_SANDBOX_PORT": str(free_port()),
                "GRIDLINE_TELEGRAM_SANDBOX_PORT": str(free_port()), "GRIDLINE_METRICS_PORT": str(free_port()),
                "GRIDLINE_WORKERS": str(args.workers)})
    cluster = postgresql_cluster() if database == "postgresql" else None
    if cluster is not None:
        env["GRIDLINE_DATABASE_URL"] = cluster.database()
    settings = load_settings(env)
    print(f"[{database}] signing {args.bodies} distinct webhooks ...", flush=True)
    bodies = home / "bodies.txt"
    signed_bodies(settings, args.bodies, bodies)
    print(f"[{database}] starting gridline up ...", flush=True)
    stack = subprocess.Popen([sys.executable, "-m", "gateway.cli", "up"], cwd=ROOT, env=env,
                             stdout=(home / "gridline.log").open("w"), stderr=subprocess.STDOUT)
    hosts: list[subprocess.Popen] = []
    try:
        wait_http(f"http://{settings.host}:{settings.port}/healthz")
        redis_url = f"unix://{home / 'redis' / 'redis.sock'}"  # the private Redis `gridline up` started
        redis = connect(redis_url)
        if not args.live:
            suspend(redis)
        # Measure the running gateway, not its start: each worker loads the classifier (~1.5 s of
        # CPU) before it registers, which would otherwise land in the first seconds of the burst.
        deadline = time.monotonic() + 60
        while Worker.count(connection=redis) < args.workers and time.monotonic() < deadline:
            time.sleep(0.1)
        if Worker.count(connection=redis) < args.workers:
            print(f"warning: only {Worker.count(connection=redis)} of {args.workers} workers ready after 60 s")
        mode = "workers running" if args.live else "workers suspended"
        print(f"[{database}] gateway: signed appeals, {args.connections} connections, {args.seconds} s, {mode}, "
              f"{args.web_hosts} web host(s) ...", flush=True)
        if args.web_hosts == 1:
            result = run_wrk(f"http://{settings.host}:{settings.port}", "/webhooks/twilio/sms",
                             [str(bodies), "2"], args.seconds, args.connections, WRK_SCRIPT)
        else:
            second_port = str(free_port())
            hosts.append(second_web_host(env, home, second_port, redis_url))
            result = run_wrk_on_both([env["GRIDLINE_PORT"], second_port], settings.host, bodies, args)
        accepted = result["requests"] - result["non2xx"]
        engine = create_engine(settings.sqlalchemy_url)
        with engine.connect() as connection:
            stored = connection.execute(select(func.count()).select_from(InboundRow)).scalar_one()
        queued_jobs, queued_ids = queued_inbound(redis, stored)
        resume(redis)
        started = time.monotonic()
        while True:  # the workers drain the backlog: every stored appeal is understood and answered
            with engine.connect() as connection:
                done = connection.execute(select(func.count()).select_from(InboundRow)
                                          .where(InboundRow.processed_at.is_not(None))).scalar_one()
            print(f"\r  appeals processed: {done}/{stored}", end="", flush=True)
            if done >= stored or time.monotonic() - started > 600:
                break
            time.sleep(1)
        drain = time.monotonic() - started
        with engine.connect() as connection:
            acks = connection.execute(select(func.count()).select_from(DeliveryRow)).scalar_one()
        engine.dispose()
        print()
    finally:
        for host in [*hosts, stack]:
            host.send_signal(signal.SIGTERM)
            host.wait(60)
        if cluster is not None:
            cluster.stop()
    shutil.rmtree(home, ignore_errors=True)
    return {"result": result, "accepted": accepted, "stored": stored, "queued_jobs": queued_jobs,
            "queued_ids": queued_ids, "done": done, "drain": drain, "acks": acks}


def second_web_host(env: dict[str, str], home: Path, port: str, redis_url: str) -> subprocess.Popen:
    """`gridline up --role web,intake` on `port` beside the first stack: its own home, the same
    store, Redis and public URL."""
    second_home = home / "second-host"
    second_home.mkdir()
    second_env = {**env, "GRIDLINE_HOME": str(second_home), "GRIDLINE_PORT": port, "GRIDLINE_REDIS_URL": redis_url,
                  "GRIDLINE_PUBLIC_URL": f"http://127.0.0.1:{env['GRIDLINE_PORT']}",
                  "GRIDLINE_METRICS_PORT": str(free_port())}
    process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "up", "--role", "web,intake"], cwd=ROOT,
                               env=second_env, stdout=(second_home / "gridline.log").open("w"),
                               stderr=subprocess.STDOUT)
    wait_http(f"http://127.0.0.1:{port}/healthz")
    return process


def run_wrk_on_both(ports: list[str], host: str, bodies: Path, args: argparse.Namespace) -> dict:
    """Both hosts at once, half the connections each, each wrk on its own half of the bodies. The
    percentiles are the worse host's (wrk reports no histogram to merge)."""
    with ThreadPoolExecutor(len(ports)) as pool:
        runs = list(pool.map(lambda n: run_wrk(f"http://{host}:{ports[n]}", "/webhooks/twilio/sms",
                                               [str(bodies), "4", str(2 * n)], args.seconds,
                                               args.connections // 2, WRK_SCRIPT), range(len(ports))))
    return {"requests": sum(r["requests"] for r in runs), "seconds": max(r["seconds"] for r in runs),
            "non2xx": sum(r["non2xx"] for r in runs), "socket_errors": sum(r["socket_errors"] for r in runs),
            "p50_ms": max(r["p50_ms"] for r in runs), "p99_ms": max(r["p99_ms"] for r in runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--bodies", type=int, default=150_000, help="distinct signed webhooks to cycle through")
    parser.add_argument("--workers", type=int, default=2, help="rq workers that drain the appeals")
    parser.add_argument("--live", action="store_true", help="let the workers run during the burst")
    parser.add_argument("--database", default="sqlite",
                        help="sqlite, postgresql, or both side by side: sqlite,postgresql")
    parser.add_argument("--web-hosts", type=int, choices=(1, 2), default=1,
                        help="2: a second web host (PostgreSQL only) beside the first")
    args = parser.parse_args()
    if args.web_hosts == 2 and args.database != "postgresql":
        parser.error("--web-hosts 2 needs --database postgresql (SQLite serves one host)")
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk")

    print(f"hello-world: bare aiohttp POST, {args.connections} connections, {args.seconds} s ...", flush=True)
    hellos = [hello_world_rate(args.seconds, args.connections)]
    runs = {database: measure(args, database) for database in args.database.split(",")}
    print("hello-world again, so a busy neighbour during one run cannot flatter the ratio ...", flush=True)
    hellos.append(hello_world_rate(args.seconds, args.connections))
    hello_rates = [run["requests"] / run["seconds"] for run in hellos]
    hello_rate, hello = max(zip(hello_rates, hellos, strict=True), key=lambda pair: pair[0])
    rows = [("bare aiohttp hello-world", f"{hello_rate:,.0f} req/s", f"{hello['p50_ms']:.1f}",
             f"{hello['p99_ms']:.1f}", "")]
    for database, run in runs.items():
        result = run["result"]
        run["rate"] = run["accepted"] / result["seconds"]
        rows.append((f"gridline on {database}", f"{run['rate']:,.0f} appeals/s", f"{result['p50_ms']:.1f}",
                     f"{result['p99_ms']:.1f}", f"{run['rate'] / hello_rate:.0%}"))
    print(f"\n{'':<26} {'throughput':>18} {'p50 ms':>8} {'p99 ms':>8} {'ratio':>6}")
    for name, throughput, p50, p99, ratio in rows:
        print(f"{name:<26} {throughput:>18} {p50:>8} {p99:>8} {ratio:>6}")
    print(f"\nratio to hello-world: goal >= 40%; against the faster of the two hello-world runs: "
          f"{' and '.join(f'{run_rate:,.0f}' for run_rate in hello_rates)} req/s")
    for database, run in runs.items():
        result = run["result"]
        print(f"[{database}] answered 200: {run['accepted']}; non-2xx: {result['non2xx']}; "
              f"socket errors: {result['socket_errors']}")
        all_queued = "all" if run["queued_ids"] == run["stored"] else "NOT ALL"
        print(f"[{database}] stored inbound rows: {run['stored']} "
              f"({'all' if run['stored'] >= run['accepted'] else 'MISSING ROWS'}); "
              f"queued for processing: {run['queued_ids']} ({all_queued}) in {run['queued_jobs']} rq jobs")
        print(f"[{database}] drain: {run['done']} appeals processed {run['drain']:.1f} s after the burst "
              f"({run['done'] / max(run['drain'], 0.001):,.0f} appeals/s through the workers; "
              f"{run['acks']} messages in the outbox)")


if __name__ == "__main__":
    main()
