"""Figures for leaders: the report's per-unit figures (gateway.domain.report) within the operator's
jurisdiction, drawn as server-side SVG charts, with drill-down street → community → grid → worker
and per department, and every table as CSV."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from aiohttp import web
from sqlalchemy import and_, select
from sqlalchemy.orm import Session

from gateway.console.base import Console, console_of, operator, refusal, render
from gateway.domain import operators, report
from gateway.domain.cases import category_label
from gateway.domain.city import Worker
from gateway.store import CaseRow, utcnow

DAYS = 30
NEXT_LEVEL = {"street": "community", "community": "grid", "grid": "worker", "department": "worker"}
PALETTE = ("#2b6cb0", "#c05621", "#2f855a", "#b7791f", "#6b46c1", "#c53030", "#319795", "#718096")


class BadQuery(ValueError):
    pass


def _visible(console: Console, worker: Worker, within: str, department: str):
    """The operator's jurisdiction, narrowed to a grid subtree or a department they chose."""
    city = console.city
    conditions = [operators.jurisdiction(city, worker, console.settings.triage_department)]
    if within:
        if within not in city.grids:
            raise BadQuery(f"no grid {within!r}")
        conditions.append(CaseRow.grid_code.in_(city.subtree(within)))
    if department:
        if department not in city.departments:
            raise BadQuery(f"no department {department!r}")
        conditions.append(CaseRow.department == department)
    return and_(*conditions)


def _params(request: web.Request) -> dict[str, str]:
    level = request.query.get("level", "street")
    if level not in report.LEVELS:
        raise BadQuery(f"level must be one of {', '.join(report.LEVELS)}")
    since = request.query.get("since", "")
    if since:
        try:
            date.fromisoformat(since)
        except ValueError as bad:
            raise BadQuery("since must be a date such as 2026-11-01") from bad
    return {"level": level, "within": request.query.get("within", "")[:64],
            "department": request.query.get("department", "")[:64], "since": since}


def _figures(session: Session, console: Console, worker: Worker, params: dict[str, str]) -> list:
    since = report.since_utc(datetime.fromisoformat(params["since"]), console.settings.timezone) \
        if params["since"] else None
    return report.unit_figures(session, console.city, level=params["level"], since=since,
                               visible=_visible(console, worker, params["within"], params["department"]))


def _daily(session: Session, console: Console, worker: Worker, params: dict[str, str]) -> dict:
    """Cases created per local day over the last 30 days, per category."""
    zone = ZoneInfo(console.settings.timezone)
    today = datetime.now(zone).date()
    start = datetime.combine(today - timedelta(days=DAYS - 1), datetime.min.time(), zone)
    rows = session.execute(select(CaseRow.created_at, CaseRow.category).where(
        CaseRow.created_at >= start.astimezone(UTC).replace(tzinfo=None),
        _visible(console, worker, params["within"], params["department"])))
    counts: dict[date, Counter[str]] = defaultdict(Counter)
    for created_at, category in rows:
        counts[created_at.replace(tzinfo=UTC).astimezone(zone).date()][category or ""] += 1
    categories = sorted({c for day in counts.values() for c in day}, key=lambda c: -sum(d[c] for d in counts.values()))
    days = [today - timedelta(days=n) for n in range(DAYS - 1, -1, -1)]
    return {"days": days, "categories": categories, "counts": counts,
            "peak": max((sum(day.values()) for day in counts.values()), default=0)}


async def figures(request: web.Request) -> web.StreamResponse:
    console, worker = console_of(request), operator(request)
    try:
        params = _params(request)
        rows, daily = await console.run(lambda session: (_figures(session, console, worker, params),
                                                         _daily(session, console, worker, params)))
    except BadQuery as bad:
        return refusal(request, 400, str(bad))
    language = request["lang"]
    labels = {c: category_label(console.city, c or None, language) for c in daily["categories"]}
    units = [row for row in rows if not row.total]
    return render(request, "figures.html", {
        "rows": rows, "units": units, "params": params, "next_level": NEXT_LEVEL.get(params["level"]),
        "daily": daily, "labels": labels, "palette": PALETTE, "levels": report.LEVELS,
        "max_overdue": max((row.overdue for row in units), default=0),
        "departments": console.city.departments, "generated": utcnow()})


async def figures_csv(request: web.Request) -> web.StreamResponse:
    """Either table as CSV: `table=units` (the report's columns) or `table=daily` (day × category)."""
    console, worker = console_of(request), operator(request)
    try:
        params = _params(request)
        table = request.query.get("table", "units")
        if table not in ("units", "daily"):
            raise BadQuery("table must be units or daily")
        if table == "units":
            text = report.as_csv(await console.run(lambda session: _figures(session, console, worker, params)))
        else:
            daily = await console.run(lambda session: _daily(session, console, worker, params))
            lines = ["date,category,cases"] + [f"{day.isoformat()},{category or ''},{daily['counts'][day][category]}"
                                               for day in daily["days"] for category in daily["categories"]
                                               if daily["counts"][day][category]]
            text = "\n".join(lines)
    except BadQuery as bad:
        return refusal(request, 400, str(bad))
    name = f"gridline-{table}-{params['level']}{'-' + params['within'] if params['within'] else ''}.csv"
    return web.Response(body=("\ufeff" + text + "\n").encode(), content_type="text/csv", charset="utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})
