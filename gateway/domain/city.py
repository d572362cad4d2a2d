"""The city a deployment serves: grid hierarchy, gazetteer, departments, taxonomy, staff, residents.

A grid centre exports these as CSV spreadsheets. `load_city` reads and validates a folder of
them into plain dataclasses; it is the single import path for the sample city and a real one.
Every problem is reported by file, row and column, and nothing is returned unless all is valid.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from adapters.phones import NotAPhoneNumber, to_e164
from gateway.strict import BadValue, integer

# Telegram chat ids are up to 52 bits, negative for groups (Bot API docs, "Chat").
CHAT_ID_RANGE = (-(2**52), 2**52)
GRID_ROLES = ("grid_leader", "grid_worker", "volunteer", "community_officer", "street_officer")
WORKER_ROLES = (*GRID_ROLES, "dept_staff")
CHANNELS = ("sms", "telegram")


@dataclass(frozen=True)
class Grid:
    code: str
    level: int  # 0 district, 1 street/town, 2 community/village, 3 responsibility grid
    name: str
    name_en: str
    parent_code: str | None
    households: int


@dataclass(frozen=True)
class Place:
    name: str
    aliases: tuple[str, ...]
    kind: str
    grid_code: str
    name_en: str


@dataclass(frozen=True)
class Department:
    code: str
    name: str
    name_en: str
    level: str
    phone: str


@dataclass(frozen=True)
class Category:
    code: str
    name: str
    name_en: str
    department_code: str
    sla_hours: int
    description: str
    description_en: str


@dataclass(frozen=True)
class AppealType:
    code: str
    name: str
    name_en: str
    description: str


@dataclass(frozen=True)
class Worker:
    id: str
    name: str
    role: str
    grid_code: str | None
    department_code: str | None
    phone: str
    telegram_chat_id: int | None
    languages: tuple[str, ...]


@dataclass(frozen=True)
class Resident:
    id: str
    name: str
    phone: str
    grid_code: str
    address: str
    tags: tuple[str, ...]
    preferred_channel: str
    telegram_chat_id: int | None
    language: str
    birth_year: int | None


ResidentLookup = Callable[[str], Resident | None]


@dataclass
class City:
    """The small tables in memory; residents either all in memory (a CSV import) or looked up.

    A city read from CSV holds every resident in `residents` (import and validation need them all).
    Long-running processes load the city from the store with `residents=None` and a `find_resident`
    that queries the database by phone: the audience can be millions, and every process holding it
    made memory grow with N. Everyone asks through `resident_by_phone` either way.
    """

    grids: dict[str, Grid]
    places: list[Place]
    departments: dict[str, Department]
    categories: dict[str, Category]
    appeal_types: dict[str, AppealType]
    workers: dict[str, Worker]
    residents: dict[str, Resident] | None  # None: not in memory, ask resident_by_phone
    find_resident: ResidentLookup | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.find_resident is None:
            if self.residents is None:
                raise ValueError("a City needs its residents or a way to find them")
            self.find_resident = {r.phone: r for r in self.residents.values()}.get

    def resident_by_phone(self, phone: str) -> Resident | None:
        assert self.find_resident is not None  # set by __post_init__
        return self.find_resident(phone)

    def lineage(self, grid_code: str) -> list[Grid]:
        """The grid and its ancestors, nearest first (grid → community → street → district)."""
        chain = []
        code: str | None = grid_code
        while code:
            grid = self.grids[code]
            chain.append(grid)
            code = grid.parent_code
        return chain

    def within(self, grid_code: str, ancestor_code: str) -> bool:
        return any(g.code == ancestor_code for g in self.lineage(grid_code))

    def subtree(self, ancestor_code: str) -> list[str]:
        """Every grid code under `ancestor_code`, itself included: a jurisdiction, a filter."""
        return [code for code in self.grids if self.within(code, ancestor_code)]

    def ancestor_at(self, grid_code: str | None, level: int) -> Grid | None:
        """The unit at `level` that `grid_code` lies in (its community, street, ...), if any."""
        return next((g for g in self.lineage(grid_code) if g.level == level), None) if grid_code else None


class CityImportError(Exception):
    """All problems found in a city folder, each as 'file:row:column: message'."""

    def __init__(self, problems: list[str]):
        super().__init__(f"{len(problems)} problem(s) in city data:\n" + "\n".join(problems))
        self.problems = problems


class _Reader:
    """Collects problems while rows are converted, so one run reports every bad cell."""

    def __init__(self, folder: Path, region: str):
        self.folder = folder
        self.region = region
        self.problems: list[str] = []

    def rows(self, filename: str, columns: tuple[str, ...],
             required: tuple[str, ...] = ()) -> Iterable[tuple[int, dict[str, str]]]:
        """Each record as (row number, header → value); a quoting error, a record with too many or
        too few fields, or a blank `required` value is a problem at file:row:column, and the record
        is skipped. Row 1 is the header; a quoted field spanning lines is still one row."""
        path = self.folder / filename
        if not path.is_file():
            self.problems.append(f"{filename}: file is missing")
            return
        row_number = 1
        try:
            with path.open(encoding="utf-8-sig", newline="") as handle:
                reader = csv.reader(handle, strict=True)
                header = [name.strip() for name in next(reader, [])]
                missing = [c for c in columns if c not in header]
                if missing:
                    self.problems.append(f"{filename}:1: missing column(s) {', '.join(missing)}")
                    return
                for row_number, values in enumerate(reader, start=2):
                    if len(values) != len(header):
                        where = header[len(values)] if len(values) < len(header) else f"{len(header) + 1}"
                        self.fail(filename, row_number, where, f"expected {len(header)} fields, found {len(values)}")
                        continue
                    row = {name: value.strip() for name, value in zip(header, values, strict=True)}
                    blank = [name for name in required if not row[name]]
                    for name in blank:
                        self.fail(filename, row_number, name, "is empty")
                    if not blank:
                        yield row_number, row
        except csv.Error as error:  # an unclosed quote runs to the end of the file
            self.fail(filename, row_number + 1, "1", f"bad CSV quoting: {error}")
        except UnicodeDecodeError as exc:
            self.problems.append(f"{filename}: not UTF-8 ({exc.reason} at byte {exc.start})")

    def fail(self, filename: str, row: int, column: str, message: str) -> None:
        self.problems.append(f"{filename}:{row}:{column}: {message}")

    def convert(self, filename: str, row_number: int, column: str, value: str, parse: Callable):
        try:
            return parse(value)
        except BadValue as bad:
            self.fail(filename, row_number, column, f"{value!r}: {bad.reason}")
        except ValueError:
            self.fail(filename, row_number, column, f"{value!r} is not valid")
        return None

    def phone(self, filename: str, row_number: int, raw: str, seen: set[str]) -> str:
        """The number as E.164, read in the city's region when it has no country code; unique."""
        try:
            phone = to_e164(raw, self.region)
        except NotAPhoneNumber as bad:
            self.fail(filename, row_number, "phone", f"{raw!r} is not a phone number: {bad}")
            return raw
        self.unique(filename, row_number, "phone", phone, seen)
        return phone

    def unique(self, filename: str, row_number: int, column: str, value: str, seen: set) -> None:
        if value in seen:
            self.fail(filename, row_number, column, f"{value!r} is a duplicate")
        seen.add(value)


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split("|") if part.strip())


def _chat_id(value: str) -> int | None:
    return integer(value, "a Telegram chat id", *CHAT_ID_RANGE) if value else None


def _birth_year(value: str) -> int | None:
    return integer(value, "a birth year", 1880, 2100) if value else None


def load_city(folder: str | Path, region: str = "CN") -> City:
    """Read and validate the seven CSV files of a city; raise CityImportError listing every problem.
    Phone numbers without a country code are read as numbers of `region` and stored as E.164."""
    r = _Reader(Path(folder), region)
    grids = _load_grids(r)
    departments: dict[str, Department] = {}
    for n, row in r.rows("departments.csv", ("code", "name", "name_en", "level", "phone"), ("code", "name")):
        code = row["code"]
        r.unique("departments.csv", n, "code", code, set(departments))
        phone = r.phone("departments.csv", n, row["phone"], set()) if row["phone"] else ""
        departments[code] = Department(code, row["name"], row["name_en"], row["level"], phone)
    categories: dict[str, Category] = {}
    cat_columns = ("code", "name", "name_en", "department_code", "sla_hours", "description", "description_en")
    for n, row in r.rows("categories.csv", cat_columns, ("code", "name", "department_code", "sla_hours")):
        code = row["code"]
        r.unique("categories.csv", n, "code", code, set(categories))
        if row["department_code"] not in departments:
            r.fail("categories.csv", n, "department_code", f"unknown department {row['department_code']!r}")
        sla = r.convert("categories.csv", n, "sla_hours", row["sla_hours"], _positive_int)
        categories[code] = Category(code, row["name"], row["name_en"], row["department_code"], sla or 0,
                                    row["description"], row["description_en"])
    appeal_types: dict[str, AppealType] = {}
    for n, row in r.rows("appeal_types.csv", ("code", "name", "name_en", "description"), ("code", "name")):
        code = row["code"]
        r.unique("appeal_types.csv", n, "code", code, set(appeal_types))
        appeal_types[code] = AppealType(code, row["name"], row["name_en"], row["description"])
    places = _load_places(r, grids)
    phones: set[str] = set()
    workers = _load_workers(r, grids, departments, phones)
    residents = _load_residents(r, grids, phones)
    if r.problems:
        raise CityImportError(r.problems)
    return City(grids, places, departments, categories, appeal_types, workers, residents)


def _positive_int(value: str) -> int:
    return integer(value, "a number of hours", 1, 24 * 365)


def _load_grids(r: _Reader) -> dict[str, Grid]:
    grids: dict[str, Grid] = {}
    for n, row in r.rows("grids.csv", ("code", "level", "name", "name_en", "parent_code", "households"),
                         ("code", "level", "name")):
        code = row["code"]
        r.unique("grids.csv", n, "code", code, set(grids))
        level = r.convert("grids.csv", n, "level", row["level"], lambda raw: integer(raw, "level", 0, 3))
        households = r.convert("grids.csv", n, "households", row["households"] or "0",
                               lambda raw: integer(raw, "households", 0, 10**7))
        parent = row["parent_code"] or None
        if parent and parent not in grids:
            r.fail("grids.csv", n, "parent_code", f"unknown or later parent {parent!r}")
        elif parent and level is not None and grids[parent].level != level - 1:
            r.fail("grids.csv", n, "parent_code", f"{parent!r} is not one level up")
        elif not parent and level not in (0, None):
            r.fail("grids.csv", n, "parent_code", "is empty below level 0")
        grids[code] = Grid(code, level if level is not None else -1, row["name"], row["name_en"], parent,
                           households or 0)
    return grids


def _load_places(r: _Reader, grids: dict[str, Grid]) -> list[Place]:
    places: list[Place] = []
    names: set[str] = set()
    for n, row in r.rows("places.csv", ("name", "aliases", "kind", "grid_code", "name_en"), ("name", "kind")):
        name = row["name"]
        r.unique("places.csv", n, "name", name, names)
        grid = grids.get(row["grid_code"])
        if grid is None or grid.level != 3:
            r.fail("places.csv", n, "grid_code", f"{row['grid_code']!r} is not a level-3 grid")
        places.append(Place(name, _split(row["aliases"]), row["kind"], row["grid_code"], row["name_en"]))
    return places


def _load_workers(r: _Reader, grids: dict[str, Grid], departments: dict[str, Department],
                  phones: set[str]) -> dict[str, Worker]:
    workers: dict[str, Worker] = {}
    columns = ("id", "name", "role", "grid_code", "department_code", "phone", "telegram_chat_id", "languages")
    for n, row in r.rows("workers.csv", columns, ("id", "name", "role", "phone")):
        worker_id = row["id"]
        r.unique("workers.csv", n, "id", worker_id, set(workers))
        role = row["role"]
        if role not in WORKER_ROLES:
            r.fail("workers.csv", n, "role", f"{role!r} is not one of {', '.join(WORKER_ROLES)}")
        if role == "dept_staff" and row["department_code"] not in departments:
            r.fail("workers.csv", n, "department_code", f"unknown department {row['department_code']!r}")
        if role in GRID_ROLES and row["grid_code"] not in grids:
            r.fail("workers.csv", n, "grid_code", f"unknown grid {row['grid_code']!r}")
        phone = r.phone("workers.csv", n, row["phone"], phones)
        chat = r.convert("workers.csv", n, "telegram_chat_id", row["telegram_chat_id"], _chat_id)
        workers[worker_id] = Worker(worker_id, row["name"], role, row["grid_code"] or None,
                                    row["department_code"] or None, phone, chat,
                                    _split(row["languages"]) or ("zh",))
    return workers


def _load_residents(r: _Reader, grids: dict[str, Grid], phones: set[str]) -> dict[str, Resident]:
    residents: dict[str, Resident] = {}
    columns = ("id", "name", "phone", "grid_code", "address", "tags", "preferred_channel",
               "telegram_chat_id", "language", "birth_year")
    for n, row in r.rows("residents.csv", columns, ("id", "name", "phone", "grid_code")):
        resident_id = row["id"]
        r.unique("residents.csv", n, "id", resident_id, set(residents))
        grid = grids.get(row["grid_code"])
        if grid is None or grid.level != 3:
            r.fail("residents.csv", n, "grid_code", f"{row['grid_code']!r} is not a level-3 grid")
        phone = r.phone("residents.csv", n, row["phone"], phones)
        channel = row["preferred_channel"] or "sms"
        if channel not in CHANNELS:
            r.fail("residents.csv", n, "preferred_channel",
                   f"{channel!r} is not one of {', '.join(CHANNELS)}")
        chat = r.convert("residents.csv", n, "telegram_chat_id", row["telegram_chat_id"], _chat_id)
        birth = r.convert("residents.csv", n, "birth_year", row["birth_year"], _birth_year)
        residents[resident_id] = Resident(resident_id, row["name"], phone, row["grid_code"],
                                          row["address"], _split(row["tags"]), channel, chat,
                                          row["language"] or "zh", birth)
    return residents
