"""`gridline backup DEST` on each store: the copy opens (or restores) and holds the same rows."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sqlalchemy import create_engine, func, select

from gateway.store import ResidentRow, WorkerRow
from gateway.store.backup import pg_dump
from tests.conftest import ROOT, stack_environment


def counts(url: str) -> tuple[int, int]:
    engine = create_engine(url)
    with engine.connect() as connection:
        found = tuple(connection.scalar(select(func.count()).select_from(t)) for t in (ResidentRow, WorkerRow))
    engine.dispose()
    return found


@pytest.mark.slow
def test_backup_copies_the_store(store_settings, tmp_path, request):
    url = store_settings.sqlalchemy_url
    env = stack_environment(store_settings.home, GRIDLINE_DATABASE_URL=url)
    destination = tmp_path / "gridline.backup"
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "backup", str(destination)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    if url.startswith("sqlite"):
        copy = f"sqlite:///{destination}"
    else:  # restored into a fresh database of the same cluster
        copy = request.getfixturevalue("postgres").database()
        libpq = copy.replace("postgresql+psycopg://", "postgresql://")
        subprocess.run([pg_dump().replace("pg_dump", "pg_restore"),
                        "--no-owner", "--dbname", libpq, str(destination)], check=True, timeout=120)
    assert counts(copy) == counts(url) and counts(url)[0] > 0
    again = subprocess.run([sys.executable, "-m", "gateway.cli", "backup", str(destination)], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "exists" in again.stderr  # never overwrites a backup
