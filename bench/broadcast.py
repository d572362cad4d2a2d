"""Broadcast throughput: one notice to N synthetic residents through the loopback Twilio sandbox.

Builds a scratch store with the sample city's grids and staff plus N synthetic residents (all on
SMS, 5% English), starts `gridline up` with rate limits lifted and no quiet hours, orders one
broadcast to everyone, and follows it to the end, twice on the same stack:

1. without delivery reports (the sandbox posts no status callbacks): the cost of sending alone;
2. with delivery reports (every status Twilio would post; `--reports final`: the last one only).

For each it reports messages/s end to end (from the send order until the provider has accepted
every message, and until every delivery report is stored), each process's peak RSS and CPU time
in that phase, and whether every recipient got exactly one message at the sandbox.

    .venv/bin/python bench/broadcast.py              # 100,000 residents
    .venv/bin/python bench/broadcast.py --residents 20000 --only without
    .venv/bin/python bench/broadcast.py --million    # 1,000,000
    .venv/bin/python bench/broadcast.py --million --database postgresql --only without

On PostgreSQL it starts a throwaway cluster from Debian's postgresql package (tests/postgres.py,
fsync on); the memory figures are our processes' (the server's is its own configuration).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path

from sqlalchemy import delete, insert, select

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.inbound import free_port, postgresql_cluster, wait_http  # noqa: E402
from broadcasts import service  # noqa: E402
from broadcasts.audience import GridTree  # noqa: E402
from broadcasts.cli import progress_line  # noqa: E402
from broadcasts.models import BroadcastRow  # noqa: E402
from gateway.config import load_settings  # noqa: E402
from gateway.roles.supervisor import prepare_store  # noqa: E402
from gateway.store import GridRow, ResidentRow, make_engine, session_factory, utcnow  # noqa: E402

STALL = 30  # seconds without progress before the bench stops waiting
TAGS = ("elderly", "empty_nest", "disabled", "low_income", "veteran", "party_member")
TEXTS = {"zh": "{name}您好：明日8:00-12:00计划停水，请提前储水。如有困难请联系网格员{worker_name} {worker_phone}。",
         "en": "Dear {name}, water will be off tomorrow 8:00-12:00. Need help? Call {worker_name} {worker_phone}."}


def phone(n: int) -> str:
    return f"+86171{n:08d}"


def synthetic_residents(settings, count: int) -> None:
    """Replace the residents with `count` synthetic ones spread over the level-3 grids."""
    engine = make_engine(settings.sqlalchemy_url)
    rng = random.Random(5)
    with session_factory(engine)() as session, session.begin():
        grids = list(session.scalars(select(GridRow.code).where(GridRow.level == 3)))
        session.execute(delete(ResidentRow))
        for start in range(0, count, 20_000):
            session.execute(insert(ResidentRow), [
                {"id": f"S{n:07d}", "name": f"居民{n}" if n % 20 else f"Resident {n}", "phone": phone(n),
                 "grid_code": grids[n % len(grids)], "address": "", "preferred_channel": "sms",
                 "tags": rng.sample(TAGS, rng.randint(0, 2)), "telegram_chat_id": None,
                 "language": "zh" if n % 20 else "en", "birth_year": 1950 + n % 50}
                for n in range(start, min(start + 20_000, count))])
    engine.dispose()


def descendants(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                children.append(int(entry.name))
    return children + [d for c in children for d in descendants(c)]


def usage(pids: list[int]) -> dict[str, tuple[int, float]]:
    """Peak RSS in MiB (the kernel's VmHWM) and CPU seconds of each process, by command line."""
    found = {}
    ticks = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        name = next((c.decode() for c in command if c.startswith((b"gateway.", b"adapters."))),
                    Path(command[0].decode()).name)
        hwm = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM")), None)
        if hwm is None:  # exiting: a zombie has no memory left to report
            continue
        found[f"{name} ({pid})"] = (hwm // 1024, (int(stat[11]) + int(stat[12])) / ticks)
    return found


def sandbox(url: str, method: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{url}/_sandbox/{path}", data, method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.load(response)


def reset_peaks(pids: list[int]) -> None:
    """Start each process's VmHWM afresh (clear_refs 5), so every phase reports its own peak."""
    for pid in pids:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            pass


@dataclass
class Phase:
    label: str
    callbacks: str  # the sandbox's mode: which delivery reports it posts
    accepted: float | None = None  # seconds until the provider had accepted every message
    reported: float | None = None  # seconds until every delivery report was stored
    reports: int = 0
    exactly_once: str = ""
    usage: dict[str, tuple[int, float]] = field(default_factory=dict)


def run_phase(phase: Phase, settings, stack_pid: int, count: int) -> None:
    """One broadcast to everyone, followed until it is done (and, with reports, until all are stored)."""
    pids = descendants(stack_pid)
    sandbox(settings.twilio_base, "DELETE", "messages")
    sandbox(settings.twilio_base, "POST", "callbacks", {"mode": phase.callbacks})
    reset_peaks(pids)
    cpu_before = usage(pids)
    sessions = session_factory(make_engine(settings.sqlalchemy_url))
    with sessions() as session, session.begin():
        tree = GridTree.load(session)
        broadcast = service.create(session, settings, tree, None, title=phase.label, expression="all",
                                   texts=TEXTS, emergency=False, now=utcnow())
        service.send(session, settings, tree, broadcast, None, utcnow())
        broadcast_id = broadcast.id
    started = progressed = time.monotonic()
    wants_reports = phase.callbacks != "none"
    seen = 0
    while time.monotonic() - progressed < STALL:
        time.sleep(0.5)
        with sessions() as session:
            view = service.status(session, settings, session.get(BroadcastRow, broadcast_id), utcnow())
        elapsed = time.monotonic() - started
        print("\r" + progress_line(view, view["sent"] / elapsed), end="", flush=True)
        phase.reports = view["delivered"] + view["failed"]
        if view["sent"] + phase.reports > seen:
            seen, progressed = view["sent"] + phase.reports, time.monotonic()
        if phase.accepted is None and view["state"] == "done":
            phase.accepted = elapsed
        if phase.reported is None and phase.reports >= count:
            phase.reported = elapsed
        if phase.accepted is not None and (phase.reported is not None or not wants_reports):
            break
    print()
    phase.usage = {name: (mib, cpu - cpu_before.get(name, (0, 0.0))[1])
                   for name, (mib, cpu) in usage(descendants(stack_pid)).items()}
    counts = sandbox(settings.twilio_base, "GET", "recipients")
    expected = {phone(n) for n in range(count)}
    missing, duplicated = len(expected - set(counts)), sum(1 for n in counts.values() if n > 1)
    phase.exactly_once = "yes" if set(counts) == expected and not duplicated else \
        f"NO (missing {missing}, duplicated {duplicated}, strangers {len(set(counts) - expected)})"


def report(phase: Phase, count: int) -> None:
    print(f"\n== {phase.label} (sandbox callbacks: {phase.callbacks}) ==")
    if phase.accepted:
        print(f"all accepted by the provider after {phase.accepted:.1f} s: "
              f"{count / phase.accepted:,.0f} messages/s end to end")
    else:
        print(f"not all accepted (no progress for {STALL} s)")
    if phase.callbacks != "none":
        if phase.reported:
            print(f"all delivery reports stored after {phase.reported:.1f} s: "
                  f"{count / phase.reported:,.0f} messages/s end to end")
        else:
            print(f"delivery reports stored: {phase.reports:,} of {count:,} (no progress for {STALL} s)")
    print("per process: peak RSS MiB / CPU s (this phase)")
    for name, (mib, cpu) in sorted(phase.usage.items()):
        print(f"  {name:<40} {mib:>6} {cpu:>8.1f}")
    print(f"every recipient exactly one message: {phase.exactly_once}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--residents", type=int, default=100_000)
    parser.add_argument("--million", action="store_true", help="1,000,000 residents")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sms-senders", type=int, default=2, help="sender processes of the SMS lane")
    parser.add_argument("--reports", choices=("all", "final"), default="all",
                        help="delivery reports in the second phase: all (as Twilio: sent and delivered) "
                             "or final (delivered only)")
    parser.add_argument("--only", choices=("without", "with"), help="run one phase only")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    args = parser.parse_args()
    count = 1_000_000 if args.million else args.residents
    phases = [Phase("without delivery reports", "none"), Phase("with delivery reports", args.reports)]
    if args.only:
        phases = [phases[0] if args.only == "without" else phases[1]]

    home = Path(tempfile.mkdtemp(prefix="gridline-bench-broadcast-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDLINE_")}
    env.update({"GRIDLINE_HOME": str(home), "GRIDLINE_CONFIG_DIR": str(ROOT / "config"),
                "GRIDLINE_PORT": str(free_port()), "GRIDLINE_SANDBOX_PORT": str(free_port()),
                "GRIDLINE_WORKERS": str(args.workers),
                "GRIDLINE_SMS_SENDERS": str(args.sms_senders), "GRIDLINE_QUIET_HOURS": "",
                "GRIDLINE_SMS_RATE_LIMIT": "0", "GRIDLINE_TELEGRAM_RATE_LIMIT": "0",
                "GRIDLINE_SMS_SIGNATURE": "【网格中心】"})
    cluster = postgresql_cluster() if args.database == "postgresql" else None
    if cluster is not None:
        env["GRIDLINE_DATABASE_URL"] = cluster.database()
    settings = load_settings(env)
    print(f"store: sample city + {count:,} synthetic residents ...", flush=True)
    generating = time.monotonic()
    prepare_store(settings)
    synthetic_residents(settings, count)
    print(f"  generated in {time.monotonic() - generating:.0f} s; starting gridline up ...", flush=True)
    stack = subprocess.Popen([sys.executable, "-m", "gateway.cli", "up"], cwd=ROOT, env=env,
                             stdout=(home / "gridline.log").open("w"), stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://{settings.host}:{settings.port}/healthz", timeout=600)
        settings = replace(settings, home=settings.home.resolve())
        for phase in phases:
            print(f"{phase.label} ...", flush=True)
            run_phase(phase, settings, stack.pid, count)
    finally:
        stack.send_signal(signal.SIGTERM)
        stack.wait(120)
        if cluster is not None:
            cluster.stop()
    print(f"\nrecipients: {count:,} ({args.database})")
    for phase in phases:
        report(phase, count)
    shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
