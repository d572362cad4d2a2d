"""The intake's SQLite write alone: groups of inbound messages with random MessageSids, as under load.

Each group is one transaction through `gateway.roles.intake.insert_on_sqlite`, committed with fsync, on
the real schema. It shows what the SQLite settings in `gateway.store.make_engine` are worth: with
random ids every row lands on its own page of the unique index, so a group of 25 changes some 25
pages, and both the statement journal (an undo copy of those pages, spilled to a temporary file
past 64 KiB) and the checkpoints (copying them back from the WAL) grow with it.

    .venv/bin/python bench/sqlite_insert.py [--groups 4000] [--size 25]
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import event

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters import InboundMessage  # noqa: E402
from gateway.roles.intake import insert_on_sqlite  # noqa: E402
from gateway.store import make_engine, migrate, utcnow  # noqa: E402

# name → (temp_store, wal_autocheckpoint) set after make_engine's own settings
VARIANTS = {
    "SQLite's defaults": ("DEFAULT", 1000),
    "statement journal in memory": ("MEMORY", 1000),
    "and checkpoint at 4000 pages (ours)": ("MEMORY", 4000),
}


def measure(folder: Path, temp_store: str, checkpoint_pages: int, groups: int, size: int) -> dict[str, float]:
    engine = make_engine(f"sqlite:///{folder / 'bench.db'}")

    @event.listens_for(engine, "connect")
    def _variant(dbapi_connection, _record) -> None:
        dbapi_connection.execute(f"PRAGMA temp_store={temp_store}")
        dbapi_connection.execute(f"PRAGMA wal_autocheckpoint={checkpoint_pages}")

    migrate(engine)
    inserting = committing = worst = 0.0
    cpu_before = os.times()
    for _ in range(groups):
        messages = [InboundMessage("sms", "SM" + secrets.token_hex(16), "+8617000000001",
                                   "翠湖花园3号楼门口垃圾三天没人清了") for _ in range(size)]
        started = time.perf_counter()
        with engine.begin() as connection:
            insert_on_sqlite(connection, messages, utcnow())
            inserted = time.perf_counter()
        committed = time.perf_counter()
        inserting += inserted - started
        committing += committed - inserted
        worst = max(worst, committed - started)
    cpu_after = os.times()
    engine.dispose()
    rows = groups * size
    return {"insert_ms": inserting / groups * 1e3, "commit_ms": committing / groups * 1e3, "worst_ms": worst * 1e3,
            "user_us": (cpu_after.user - cpu_before.user) / rows * 1e6,
            "sys_us": (cpu_after.system - cpu_before.system) / rows * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=4000, help="transactions per setting")
    parser.add_argument("--size", type=int, default=25, help="messages per transaction (~25 at 10k appeals/s)")
    args = parser.parse_args()
    print(f"{args.groups} groups of {args.size} messages per setting, fsync on every commit\n")
    print(f"{'':<36} {'insert ms':>10} {'commit ms':>10} {'worst ms':>9} {'CPU µs/message':>15}")
    for name, (temp_store, checkpoint_pages) in VARIANTS.items():
        with tempfile.TemporaryDirectory(prefix="gridline-sqlite-") as folder:
            figures = measure(Path(folder), temp_store, checkpoint_pages, args.groups, args.size)
        cpu = f"{figures['user_us']:.1f} + {figures['sys_us']:.1f} sys"
        print(f"{name:<36} {figures['insert_ms']:>10.3f} {figures['commit_ms']:>10.3f} {figures['worst_ms']:>9.1f} "
              f"{cpu:>15}", flush=True)


if __name__ == "__main__":
    main()
