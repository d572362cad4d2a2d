"""Triage desk, case board, case detail and case actions: as console pages and as the HTTP API
`POST /api/cases/{number}/{action}` (a Bearer token; JSON or form fields; the same rules)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from gateway.console import actions, auth
from gateway.console.base import Console, console_of, form, operator, redirect, refusal, render
from gateway.delivery import outbox
from gateway.domain import operators
from gateway.domain.cases import OPEN_STATES, TRANSITIONS, case_view
from gateway.domain.city import Worker
from gateway.store import CaseAttachmentRow, CaseEventRow, CaseRow, DeliveryRow, InboundRow, utcnow

BOARD_LIMIT = 200
TRIAGE_LIMIT = 50
MAX_FIELD = 2000  # characters of a reason, note or filter


def _jurisdiction(console: Console, worker: Worker):
    return operators.jurisdiction(console.city, worker, console.settings.triage_department)


def staff_choices(console: Console, worker: Worker) -> list[Worker]:
    """Workers an operator may hand a case to: operators within their reach (everyone for department staff)."""
    city = console.city
    return [w for w in city.workers.values() if w.role in operators.OPERATOR_ROLES and (
        worker.role == "dept_staff"
        or (w.grid_code and worker.grid_code and city.within(w.grid_code, worker.grid_code)))]


def level3_grids(console: Console, worker: Worker) -> list:
    city = console.city
    return [g for g in city.grids.values() if g.level == 3 and (
        worker.role == "dept_staff" or (worker.grid_code and city.within(g.code, worker.grid_code)))]


async def home(request: web.Request) -> web.StreamResponse:
    worker, desk = operator(request), console_of(request).settings.triage_department
    triage_desk = worker.role == "dept_staff" and worker.department_code == desk
    return redirect("/console/triage" if triage_desk else "/console/cases")


async def triage(request: web.Request) -> web.StreamResponse:
    console, worker = console_of(request), operator(request)

    def work(session: Session) -> list[dict]:
        waiting = session.scalars(select(CaseRow).where(
            CaseRow.queue == "triage", CaseRow.state == "received", _jurisdiction(console, worker))
            .order_by(CaseRow.created_at, CaseRow.id).limit(TRIAGE_LIMIT)).all()
        return [{"case": case, "attachments": _attachments(session, case), "suggestions": _suggestions(case)}
                for case in waiting]

    return render(request, "triage.html", {
        "items": await console.run(work), "city": console.city, "staff": staff_choices(console, worker),
        "grids": level3_grids(console, worker), "notice": request.query.get("notice", "")})


def _suggestions(case: CaseRow) -> list[dict]:
    """The classifier's top three, or at least its own unsure verdict, for one-click settling."""
    found = [s for s in case.triage_notes.get("suggestions", []) if s.get("category")][:3]
    if not found and case.category:
        found = [{"category": case.category, "score": case.confidence}]
    return found


def _attachments(session: Session, case: CaseRow) -> list[CaseAttachmentRow]:
    return list(session.scalars(select(CaseAttachmentRow).where(CaseAttachmentRow.case_id == case.id)
                                .order_by(CaseAttachmentRow.id)))


def _filters(request: web.Request) -> dict[str, str]:
    return {name: request.query.get(name, "")[:MAX_FIELD].strip()
            for name in ("state", "grid", "category", "department", "overdue", "q")}


async def board(request: web.Request) -> web.StreamResponse:
    console, worker = console_of(request), operator(request)
    chosen, city = _filters(request), console.city
    now = utcnow()

    def work(session: Session) -> list[CaseRow]:
        query = select(CaseRow).where(_jurisdiction(console, worker)).order_by(CaseRow.id.desc()).limit(BOARD_LIMIT)
        if chosen["state"] in TRANSITIONS:
            query = query.where(CaseRow.state == chosen["state"])
        if chosen["grid"] in city.grids:
            query = query.where(CaseRow.grid_code.in_(city.subtree(chosen["grid"])))
        if chosen["category"]:
            query = query.where(CaseRow.category == chosen["category"])
        if chosen["department"]:
            query = query.where(CaseRow.department == chosen["department"])
        if chosen["overdue"]:
            query = query.where(CaseRow.state.in_(OPEN_STATES), CaseRow.deadline < now)
        if chosen["q"]:
            like = "%" + chosen["q"].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            query = query.where(or_(CaseRow.text.like(like, escape="\\"), CaseRow.number.like(like, escape="\\")))
        return list(session.scalars(query))

    visible_grids = [g for g in city.grids.values() if worker.role == "dept_staff" or (
        worker.grid_code and city.within(g.code, worker.grid_code))]
    return render(request, "board.html", {
        "cases": await console.run(work), "chosen": chosen, "city": city, "states": list(TRANSITIONS),
        "grids": visible_grids, "now": now, "open_states": OPEN_STATES})


def _timeline(session: Session, case: CaseRow) -> list[dict[str, Any]]:
    """Transitions and notes, messages to the resident and from them, in time order."""
    items: list[tuple[datetime, dict[str, Any]]] = []
    for event in session.scalars(select(CaseEventRow).where(CaseEventRow.case_id == case.id)):
        kind = "note" if event.from_state == event.to_state and event.note.startswith("note: ") else "event"
        items.append((event.at, {"kind": kind, "at": event.at, "actor": event.actor, "from": event.from_state,
                                 "to": event.to_state, "note": event.note.removeprefix("note: ")}))
    for row in session.scalars(select(DeliveryRow).where(DeliveryRow.case_id == case.id,
                                                       DeliveryRow.recipient == case.reporter)):
        items.append((row.created_at, {"kind": "to_resident", "at": row.created_at, "text": row.body,
                                       "channel": row.channel, "state": row.state}))
    for row in session.scalars(select(InboundRow).where(InboundRow.case_id == case.id)):
        items.append((row.received_at, {"kind": "from_resident", "at": row.received_at, "text": row.text,
                                        "channel": row.channel}))
    return [item for _, item in sorted(items, key=lambda pair: pair[0])]


async def detail(request: web.Request) -> web.StreamResponse:
    console, worker = console_of(request), operator(request)
    number = request.match_info["number"]

    def work(session: Session) -> dict | None:
        case = session.scalar(select(CaseRow).where(CaseRow.number == number, _jurisdiction(console, worker)))
        if case is None:
            return None
        return {"case": case, "timeline": _timeline(session, case), "attachments": _attachments(session, case)}

    found = await console.run(work)
    if found is None:
        return refusal(request, 404, f"no case {number}")
    case = found["case"]
    return render(request, "case.html", {
        **found, "city": console.city, "holder": console.city.workers.get(case.assigned_worker_id or ""),
        "staff": staff_choices(console, worker), "grids": level3_grids(console, worker),
        "notice": request.query.get("notice", ""), "final": not TRANSITIONS[case.state]})


async def _act(console: Console, worker: Worker, via: str, number: str, action: str,
               fields: dict[str, str]) -> tuple[int, str, dict | None]:
    """Do the action in one transaction with its audit row; a refusal is audited too. Returns
    (status, reason, case view)."""
    now = utcnow()

    def work(session: Session) -> tuple[dict, list[outbox.Queued]]:
        case, rows = actions.perform(session, console.world, worker, number, action, fields, now)
        auth.audit(session, worker, via, action, number, "ok", now)
        session.flush()
        return case_view(session, case, with_history=True), outbox.queued(rows)

    try:
        view, outgoing = await console.run(work)
    except actions.Refused as refused:
        reason = refused.reason
        await console.run(lambda session: auth.audit(session, worker, via, action, number, reason, now))
        return refused.status, reason, None
    console.deliver(outgoing)
    return 200, "ok", view


def _clean(fields: Any) -> dict[str, str]:
    return {key: str(value)[:MAX_FIELD] for key, value in fields.items()
            if key in ("to", "category", "grid", "reason", "into", "text") and isinstance(value, str | int)}


async def case_action(request: web.Request) -> web.StreamResponse:
    """A console form: the action, then back to where it was taken with what happened."""
    console, worker = console_of(request), operator(request)
    number, action = request.match_info["number"], request.match_info["action"]
    posted = await form(request)
    status, reason, _ = await _act(console, worker, "console", number, action, _clean(posted))
    if status == 404:
        return refusal(request, 404, reason)
    back = "/console/triage" if posted.get("back") == "triage" else f"/console/cases/{number}"
    notice = f"{number}: {action} ✓" if status == 200 else f"{number}: {reason}"
    return redirect(f"{back}?{urlencode({'notice': notice})}")


async def api_case_action(request: web.Request) -> web.Response:
    """`POST /api/cases/{number}/{action}` with a Bearer token and a JSON object of fields."""
    worker = await console_of(request).current_operator(request)
    try:
        body = json.loads(await request.read() or b"{}")
    except (ValueError, RecursionError) as bad:
        return web.json_response({"error": f"body is not JSON: {type(bad).__name__}"}, status=400)
    if not isinstance(body, dict):
        return web.json_response({"error": "body must be a JSON object"}, status=400)
    status, reason, view = await _act(console_of(request), worker, "api", request.match_info["number"],
                                      request.match_info["action"], _clean(body))
    return web.json_response(view if view is not None else {"error": reason}, status=status)
