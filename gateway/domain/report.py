"""The figures leaders look at: progress and assessment per street, community, grid, department or worker.

Every figure describes one cohort: the cases created since `since` (default: all time) that the
caller may see (`visible`, e.g. `operators.jurisdiction(city, worker)`).

- unit: the case's grid's ancestor at the requested level (street 1, community 2, grid 3), its
  `department`, or its `assigned_worker_id`. Cases without a (known) grid at that level fall in
  the "未定位" row; cases nobody is assigned to in the "未指派" row.
- received: cases in the cohort (merged duplicates and rejected appeals included: they arrived).
- resolved: cases now resolved or closed. A case reopened after a dissatisfied rating is being
  handled again (its `resolved_at` is cleared), so it counts once it is resolved anew.
- closed: cases in state closed (the resident confirmed, or the confirmation window passed).
- on-time rate: among resolved cases, the share resolved by the SLA deadline fixed at creation.
- median hours: median of resolved_at − created_at among resolved cases.
- satisfaction rate: among rated cases, the share rated 4 or 5 (满意 or 基本满意).
- overdue: cases still open whose deadline has passed at `now`; older backlog shows with an
  earlier `since` (or none).
- A totals row ("合计") comes last; rates and the median are recomputed over all cases, not averaged.

Counts come from one GROUP BY query; handling times from a second query of three columns per
resolved case (a median cannot be rolled up from sub-units, nor computed portably in SQL).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import statistics
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import ColumnElement, and_, case, func, select
from sqlalchemy.orm import Session

from gateway.domain.cases import OPEN_STATES
from gateway.domain.city import City
from gateway.store import CaseRow, utcnow

GRID_LEVELS = {"street": 1, "community": 2, "grid": 3}
LEVELS = (*GRID_LEVELS, "department", "worker")
RESOLVED_STATES = ("resolved", "closed")
SATISFIED_RATING = 4  # 基本满意 and better
TOTAL_NAME = "合计"
NO_DATA = "—"
COUNTS = ("received", "resolved", "closed", "on_time", "rated", "satisfied", "overdue")


@dataclass
class UnitFigures:
    """One row of the report; counts add up, so sub-units roll up into their parent."""

    unit: str | None  # grid or department code, worker id; None for the unlocated/unassigned/totals row
    name: str
    received: int = 0
    resolved: int = 0
    closed: int = 0
    on_time: int = 0
    rated: int = 0
    satisfied: int = 0
    overdue: int = 0
    handling_hours: list[float] = field(default_factory=list, repr=False)
    total: bool = False

    @property
    def on_time_rate(self) -> float | None:
        return self.on_time / self.resolved if self.resolved else None

    @property
    def satisfaction_rate(self) -> float | None:
        return self.satisfied / self.rated if self.rated else None

    @property
    def median_hours(self) -> float | None:
        return statistics.median(self.handling_hours) if self.handling_hours else None

    def add(self, other: UnitFigures) -> None:
        for name in COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.handling_hours += other.handling_hours

    def as_dict(self) -> dict[str, object]:
        def rounded(value: float | None, digits: int) -> float | None:
            return None if value is None else round(value, digits)

        return {
            "unit": self.unit, "name": self.name, "total": self.total,
            "received": self.received, "resolved": self.resolved, "closed": self.closed,
            "on_time": self.on_time, "on_time_rate": rounded(self.on_time_rate, 4),
            "median_hours": rounded(self.median_hours, 2),
            "rated": self.rated, "satisfied": self.satisfied,
            "satisfaction_rate": rounded(self.satisfaction_rate, 4), "overdue": self.overdue,
        }


def _is_resolved() -> ColumnElement[bool]:
    return and_(CaseRow.state.in_(RESOLVED_STATES), CaseRow.resolved_at.is_not(None))


def _count_columns(now: datetime) -> dict[str, ColumnElement[int]]:
    """One aggregate per count; COUNT(CASE WHEN ...) is 0, never NULL, when nothing matches."""
    def where(condition: ColumnElement[bool]) -> ColumnElement[int]:
        return func.count(case((condition, 1)))

    return {
        "received": func.count(),
        "resolved": where(_is_resolved()),
        "closed": where(CaseRow.state == "closed"),
        "on_time": where(and_(_is_resolved(), CaseRow.resolved_at <= CaseRow.deadline)),
        "rated": func.count(CaseRow.rating),
        "satisfied": where(CaseRow.rating >= SATISFIED_RATING),
        "overdue": where(and_(CaseRow.state.in_(OPEN_STATES), CaseRow.deadline < now)),
    }


def _unit_column(level: str) -> ColumnElement:
    if level in GRID_LEVELS:
        return CaseRow.grid_code
    return CaseRow.department if level == "department" else CaseRow.assigned_worker_id


def _unit_of(city: City, level: str, code: str | None) -> str | None:
    """The unit a case's grid/department/worker code counts under; None when it has none."""
    if level not in GRID_LEVELS:
        return code
    if code not in city.grids:
        return None
    unit = city.ancestor_at(code, GRID_LEVELS[level])
    return unit.code if unit else None


def _unit_name(city: City, level: str, unit: str | None) -> str:
    if unit is None:
        return "未指派" if level == "worker" else "未定位"
    if level in GRID_LEVELS:
        return city.grids[unit].name
    known = city.departments.get(unit) if level == "department" else city.workers.get(unit)
    return known.name if known else ""


def unit_figures(session: Session, city: City, *, level: str, since: datetime | None = None,
                 now: datetime | None = None, visible: ColumnElement[bool] | None = None) -> list[UnitFigures]:
    """Figures per unit at `level` (naive UTC `since`/`now`), sorted by unit code, totals last."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, not {level!r}")
    key = _unit_column(level)
    conditions = [] if since is None else [CaseRow.created_at >= since]
    if visible is not None:
        conditions.append(visible)
    columns = _count_columns(now or utcnow())
    counts = select(key, *columns.values()).where(*conditions).group_by(key)
    units: dict[str | None, UnitFigures] = {}
    unit_of = functools.cache(lambda code: _unit_of(city, level, code))

    def row_for(code: str | None) -> UnitFigures:
        # Not keyed on the first query's codes alone: under READ COMMITTED the second may see newer cases.
        unit = unit_of(code)
        if unit not in units:
            units[unit] = UnitFigures(unit, _unit_name(city, level, unit))
        return units[unit]

    for code, *numbers in session.execute(counts):
        row_for(code).add(UnitFigures(None, "", **dict(zip(columns, numbers, strict=True))))
    handled = select(key, CaseRow.created_at, CaseRow.resolved_at).where(_is_resolved(), *conditions)
    for code, created_at, resolved_at in session.execute(handled):
        row_for(code).handling_hours.append((resolved_at - created_at).total_seconds() / 3600)
    rows = sorted(units.values(), key=lambda row: (row.unit is None, row.unit or ""))
    totals = UnitFigures(None, TOTAL_NAME, total=True)
    for row in rows:
        totals.add(row)
    return [*rows, totals]


def scope(city: City, *, within: str | None = None, department: str | None = None) -> ColumnElement[bool] | None:
    """The CLI's `--within GRID` / `--department CODE` as a visibility condition for `unit_figures`."""
    conditions: list[ColumnElement[bool]] = []
    if within is not None:
        if within not in city.grids:
            raise KeyError(f"no grid {within!r} in the city")
        conditions.append(CaseRow.grid_code.in_(city.subtree(within)))
    if department is not None:
        if department not in city.departments:
            raise KeyError(f"no department {department!r} in the city")
        conditions.append(CaseRow.department == department)
    return and_(*conditions) if conditions else None


# --- rendering ---------------------------------------------------------------------------------


def _percent(rate: float | None) -> str:
    return NO_DATA if rate is None else f"{rate:.1%}"


def _width(text: str) -> int:
    """Terminal columns: CJK names take two per character."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def as_table(rows: list[UnitFigures]) -> str:
    """Aligned columns for a terminal; "—" where a rate has nothing to divide by."""
    header = ("unit", "name", "received", "resolved", "closed", "on-time", "median h", "satisfied", "overdue")
    cells = [header]
    for row in rows:
        median = NO_DATA if row.median_hours is None else f"{row.median_hours:.1f}"
        unit = "" if row.total else row.unit or NO_DATA
        cells.append((unit, row.name or NO_DATA, str(row.received), str(row.resolved), str(row.closed),
                      _percent(row.on_time_rate), median, _percent(row.satisfaction_rate), str(row.overdue)))
    widths = [max(_width(line[i]) for line in cells) for i in range(len(header))]

    def line(values: tuple[str, ...]) -> str:
        padded = [value + " " * (width - _width(value)) if i < 2 else " " * (width - _width(value)) + value
                  for i, (value, width) in enumerate(zip(values, widths, strict=True))]
        return "  ".join(padded)

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(cells[0]), rule, *map(line, cells[1:-1]), rule, line(cells[-1])])


def as_json(rows: list[UnitFigures]) -> str:
    """A list of objects; rates are fractions (null with nothing to divide by), `total` marks the last."""
    return json.dumps([row.as_dict() for row in rows], ensure_ascii=False, indent=2)


def as_csv(rows: list[UnitFigures]) -> str:
    """A header and one line per row for spreadsheets: rates as fractions, empty where there is no data."""
    out = io.StringIO()
    fields = [name for name in UnitFigures(None, "").as_dict() if name != "total"]
    writer = csv.DictWriter(out, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(row.as_dict() for row in rows)
    return out.getvalue().rstrip("\n")


RENDERERS: dict[str, Callable[[list[UnitFigures]], str]] = {"table": as_table, "json": as_json, "csv": as_csv}
