"""`gridline backup DEST`: a consistent copy of the store while Gridline keeps running.

SQLite: the online backup API copies the database page by page, restarting a step when another
connection writes meanwhile, so the copy is one consistent moment and nobody is locked out for
long. PostgreSQL: `pg_dump` in its custom format (restore with `pg_restore`), which reads one
snapshot in a single transaction.
"""

from __future__ import annotations

import glob
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

from sqlalchemy.engine import make_url

PAGES_PER_STEP = 1024  # 4 MiB at SQLite's default page size; writers get in between steps


def backup(url: str, destination: Path) -> str:
    """Write the copy; a line saying what was done."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        source = sqlite3.connect(f"file:{parsed.database}?mode=ro", uri=True)
        target = sqlite3.connect(destination)
        try:
            source.backup(target, pages=PAGES_PER_STEP)
        finally:
            target.close()
            source.close()
        return f"SQLite online backup of {parsed.database} written to {destination}"
    if parsed.get_backend_name() == "postgresql":
        env = dict(os.environ)
        if parsed.password:  # through the environment: a command line is visible to every user
            env["PGPASSWORD"] = parsed.password
        libpq = parsed.set(drivername="postgresql", password=None).render_as_string(hide_password=False)
        subprocess.run([pg_dump(), "--format=custom", "--file", str(destination), "--dbname", libpq],
                       env=env, check=True)
        return f"pg_dump of {parsed.database} written to {destination} (restore with pg_restore)"
    raise ValueError(f"no backup for {parsed.get_backend_name()}: use the database's own tools")


def pg_dump() -> str:
    """The newest server version's pg_dump (it must not be older than the server), else PATH's."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_dump"), key=lambda p: int(Path(p).parts[-3]))
    chosen = found[-1] if found else shutil.which("pg_dump")
    if chosen is None:
        raise RuntimeError("pg_dump not found: install the postgresql-client package")
    return chosen
