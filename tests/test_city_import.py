"""`gridline import`: the same path loads the sample city and would load a real one; a bad file
is reported by file, row and column and nothing is loaded."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from gateway.domain.city import CityImportError, load_city
from gateway.store import ResidentRow, import_city, load_city_from_store, make_engine, migrate, session_factory
from tests.conftest import CONFIG, ROOT, stack_environment


def run_import(env: dict[str, str], folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "import", str(folder)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def broken_copy(tmp_path: Path, filename: str, old: str, new: str) -> Path:
    folder = tmp_path / "city"
    shutil.copytree(CONFIG / "city", folder)
    path = folder / filename
    path.write_text(path.read_text(encoding="utf-8").replace(old, new, 1), encoding="utf-8")
    return folder


def test_sample_city_loads_with_all_rows():
    city = load_city(CONFIG / "city")
    assert (len(city.grids), len(city.places), len(city.departments), len(city.categories),
            len(city.appeal_types), len(city.workers), len(city.residents)) == (106, 501, 19, 22, 6, 378, 2000)
    assert [g.level for g in city.lineage("QH-DH-01-03")] == [3, 2, 1, 0]


@pytest.mark.parametrize("filename, old, new, where", [
    ("residents.csv", "R0001,钱刚,+8617033259997,QH-XS-03-03", "R0001,钱刚,+8617033259997,QH-XX-99-99",
     "residents.csv:2:grid_code"),
    ("residents.csv", "R0002,金丽君,+8617010459241", "R0002,金丽君,0123", "residents.csv:3:phone"),
    ("categories.csv", "sanitation,环境卫生,Environmental sanitation,SANITATION,48",
     "sanitation,环境卫生,Environmental sanitation,SANITATION,two days", "categories.csv:2:sla_hours"),
    ("places.csv", "金桂苑,金桂|金桂小区,compound,QH-BY-01-01", "金桂苑,金桂|金桂小区,compound,QH-BY-01",
     "places.csv:2:grid_code"),
])
def test_a_bad_cell_is_reported_by_file_row_and_column(tmp_path, filename, old, new, where):
    with pytest.raises(CityImportError) as raised:
        load_city(broken_copy(tmp_path, filename, old, new))
    assert any(problem.startswith(where) for problem in raised.value.problems), raised.value.problems


@pytest.mark.slow
def test_a_failed_import_loads_nothing(tmp_path):
    env = stack_environment(tmp_path / "home")
    good = run_import(env, CONFIG / "city")
    assert good.returncode == 0 and "2000 residents" in good.stdout
    bad = broken_copy(tmp_path, "residents.csv", "R0001,钱刚,+8617033259997", "R0001,钱刚,not-a-phone")
    (bad / "residents.csv").write_text((bad / "residents.csv").read_text().replace("\nR2000,", "\nR2000x,"))
    failed = run_import(env, bad)
    assert failed.returncode == 1
    assert "residents.csv:2:phone" in failed.stderr and "Nothing was imported" in failed.stderr
    engine = create_engine(f"sqlite:///{tmp_path / 'home' / 'gridline.db'}")
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(ResidentRow)).scalar_one() == 2000
        assert connection.execute(select(ResidentRow.phone).where(ResidentRow.id == "R0001")).scalar_one() \
            == "+8617033259997"


def test_a_city_loaded_from_the_store_finds_residents_by_phone_without_holding_them(tmp_path):
    csv_city = load_city(CONFIG / "city")
    engine = make_engine(f"sqlite:///{tmp_path / 'gridline.db'}")
    migrate(engine)
    with session_factory(engine)() as session, session.begin():
        import_city(session, csv_city)
    with session_factory(engine)() as session:
        stored = load_city_from_store(session)
    assert stored.residents is None
    assert (stored.grids, stored.workers) == (csv_city.grids, csv_city.workers)
    for resident in list(csv_city.residents.values())[::250]:
        assert stored.resident_by_phone(resident.phone) == resident
    assert stored.resident_by_phone("+8613900000000") is None
    with Session(engine) as session, pytest.raises(ValueError):
        import_city(session, stored)
