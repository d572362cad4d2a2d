"""Cases: numbering, opening, state changes with their audit trail, and what a resident may see."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, delete, select, update
from sqlalchemy.orm import Session

from classifiers import Classification
from gateway import metrics
from gateway.config import Settings
from gateway.domain import replies
from gateway.domain.city import City
from gateway.logs import mask
from gateway.store import CaseCounterRow, CaseEventRow, CaseRow, WorkerPromptRow, insert_for

OPEN_STATES = ("received", "assigned", "accepted", "in_progress", "escalated")
DEFAULT_SLA_HOURS = 72

# Which state may follow which. `→ assigned` from a held state is a reassignment; a duplicate or
# an appeal that is not the city's may be merged or rejected until it is resolved;
# `resolved → in_progress` is the one reopening a dissatisfied resident gets; closed, merged and
# rejected are final.
TRANSITIONS: dict[str, frozenset[str]] = {
    "received": frozenset({"assigned", "escalated", "rejected", "merged"}),
    "assigned": frozenset({"assigned", "accepted", "escalated", "rejected", "merged"}),
    "accepted": frozenset({"in_progress", "resolved", "escalated", "assigned", "rejected", "merged"}),
    "in_progress": frozenset({"resolved", "escalated", "assigned", "rejected", "merged"}),
    "escalated": frozenset({"assigned", "accepted", "escalated", "resolved", "rejected", "merged"}),
    "resolved": frozenset({"closed", "in_progress"}),
    "closed": frozenset(),
    "merged": frozenset(),
    "rejected": frozenset(),
}


FINAL_STATES = ("closed", "merged", "rejected")


class IllegalTransition(ValueError):
    """A state change the lifecycle does not allow, with a message a person can act on."""

    def __init__(self, case: CaseRow, to_state: str, why: str | None = None):
        allowed = ", ".join(sorted(TRANSITIONS[case.state])) or "nothing (it is final)"
        super().__init__(f"case {case.number} is {case.state}: it cannot become {to_state}; "
                         + (why or f"it can become {allowed}"))


def next_case_number(session: Session, now: datetime) -> str:
    """`YYMMDD` + a per-day sequence: ten digits, easy to type back on any phone."""
    day = now.strftime("%y%m%d")
    insert = insert_for(session, CaseCounterRow).values(day=day, last=1)
    statement = insert.on_conflict_do_update(
        index_elements=["day"], set_={"last": CaseCounterRow.last + 1}
    ).returning(CaseCounterRow.last)
    sequence = session.execute(statement).scalar_one()
    return f"{day}{sequence:04d}"


def transition(session: Session, case: CaseRow, to_state: str, actor: str, note: str, now: datetime) -> None:
    """Move `case` to `to_state`, refusing illegal moves, and write the audit row.

    The move is a conditional UPDATE on the state and last update we read: if a worker, the
    resident or the clock changed the case meanwhile, this one is refused instead of overwriting.
    """
    if to_state not in TRANSITIONS[case.state]:
        raise IllegalTransition(case, to_state)
    moved = session.execute(
        update(CaseRow).where(CaseRow.id == case.id, CaseRow.state == case.state,
                              CaseRow.updated_at == case.updated_at)
        .values(state=to_state, updated_at=now)
        .execution_options(synchronize_session=False)).rowcount
    if not moved:
        raise IllegalTransition(case, to_state, "it changed meanwhile; look again")
    session.add(CaseEventRow(case_id=case.id, at=now, actor=actor, from_state=case.state,
                             to_state=to_state, note=note))
    case.state = to_state
    case.updated_at = now
    if to_state == "resolved":
        case.resolved_at = now
    if to_state in FINAL_STATES:
        case.closed_at = now
        case.awaiting = None  # nothing more to rate or answer
        session.execute(delete(WorkerPromptRow).where(WorkerPromptRow.case_number == case.number))


def open_case(session: Session, *, city: City, settings: Settings, channel: str, reporter: str,
              text: str, language: str, verdict: Classification, now: datetime) -> CaseRow:
    """A new case in `received`, queued as routed or, when the classifier was unsure, for triage."""
    resident = city.resident_by_phone(reporter)
    category = city.categories.get(verdict.category or "")
    triage = verdict.needs_triage or verdict.department == settings.triage_department
    sla_hours = category.sla_hours if category else DEFAULT_SLA_HOURS
    case = CaseRow(
        number=next_case_number(session, now), channel=channel, reporter=reporter,
        resident_id=resident.id if resident else None, language=language, text=text,
        category=verdict.category, appeal_type=verdict.appeal_type, department=verdict.department,
        grid_code=verdict.grid, place=verdict.place, confidence=verdict.confidence,
        queue="triage" if triage else "routed",
        triage_notes={
            "suggestions": [vars(s) for s in verdict.suggestions],
            "grid_candidates": list(verdict.grid_candidates),
        },
        state="received", deadline=now + timedelta(hours=sla_hours), level=3, created_at=now, updated_at=now,
    )
    session.add(case)
    session.flush()
    session.add(CaseEventRow(case_id=case.id, at=now, actor="gateway", from_state=None,
                             to_state="received", note=f"queue={case.queue}"))
    metrics.case_opened(case.queue, verdict.confidence)
    return case


def reporter_case(session: Session, reporters: tuple[str, ...], number: str) -> CaseRow | None:
    return session.scalar(select(CaseRow).where(CaseRow.number == number, CaseRow.reporter.in_(reporters)))


def open_cases_of(session: Session, reporters: tuple[str, ...], limit: int = 3) -> list[CaseRow]:
    query = (select(CaseRow).where(CaseRow.reporter.in_(reporters), CaseRow.state.in_(OPEN_STATES))
             .order_by(CaseRow.created_at.desc()).limit(limit))
    return list(session.scalars(query))


def _label(language: str, zh: str, en: str) -> str:
    return en if language == "en" and en else zh


def category_label(city: City, code: str | None, language: str) -> str:
    category = city.categories.get(code or "")
    if category is None:
        return replies.render("category_unknown", language)
    return _label(language, category.name, category.name_en)


def grid_label(city: City, code: str | None, language: str) -> str | None:
    grid = city.grids.get(code or "")
    return _label(language, grid.name, grid.name_en) if grid else None


def department_label(city: City, code: str, language: str) -> str:
    department = city.departments.get(code)
    return _label(language, department.name, department.name_en) if department else code


def acknowledgement(city: City, case: CaseRow) -> str:
    language = case.language
    grid = grid_label(city, case.grid_code, language)
    area = (replies.render("area_known", language, grid=grid) if grid
            else replies.render("area_unknown", language))
    key = "ack_triage" if case.queue == "triage" else "ack_routed"
    worker = city.workers.get(case.assigned_worker_id or "")
    assignee = replies.render("ack_assignee", language, worker=worker.name,
                              role=replies.role_name(worker.role, language)) if worker else ""
    return replies.render(key, language, number=case.number, area=area, assignee=assignee,
                          category=category_label(city, case.category, language),
                          department=department_label(city, case.department, language))


def local_time(moment: datetime, timezone: str) -> str:
    """A stored (naive UTC) time as the resident's wall clock shows it."""
    return moment.replace(tzinfo=UTC).astimezone(ZoneInfo(timezone)).strftime("%Y-%m-%d %H:%M")


def status_text(city: City, case: CaseRow, language: str, timezone: str) -> str:
    worker = city.workers.get(case.assigned_worker_id or "")
    return replies.render(
        "status_line", language, number=case.number, state=replies.state_name(case.state, language),
        department=department_label(city, case.department, language),
        grid=grid_label(city, case.grid_code, language) or replies.render("nowhere", language),
        worker=worker.name if worker else replies.render("nobody", language),
        updated=local_time(case.updated_at, timezone),
        deadline=local_time(case.deadline, timezone),
    )


def find_cases(session: Session, city: City, *, state: str | None = None, grid: str | None = None,
               category: str | None = None, visible: ColumnElement[bool] | None = None,
               limit: int = 100) -> list[CaseRow]:
    """Cases, newest first, filtered by state, grid subtree and category, within `visible`."""
    query = select(CaseRow).order_by(CaseRow.id.desc()).limit(limit)
    if visible is not None:
        query = query.where(visible)
    if state:
        query = query.where(CaseRow.state == state)
    if category:
        query = query.where(CaseRow.category == category)
    if grid:
        query = query.where(CaseRow.grid_code.in_(city.subtree(grid)))
    return list(session.scalars(query))


def case_view(session: Session, case: CaseRow, *, with_history: bool = False) -> dict:
    """A case as JSON for operators; the reporter's phone is masked."""
    view = {
        "number": case.number, "state": case.state, "queue": case.queue, "channel": case.channel,
        "reporter": mask(case.reporter), "resident_id": case.resident_id, "text": case.text,
        "category": case.category, "appeal_type": case.appeal_type, "department": case.department,
        "grid": case.grid_code, "place": case.place, "confidence": round(case.confidence, 3),
        "assigned_worker": case.assigned_worker_id, "triage": case.triage_notes,
        "created_at": case.created_at.isoformat() + "Z", "updated_at": case.updated_at.isoformat() + "Z",
        "deadline": case.deadline.isoformat() + "Z",
    }
    if with_history:
        events = session.scalars(select(CaseEventRow).where(CaseEventRow.case_id == case.id)
                                 .order_by(CaseEventRow.id))
        view["history"] = [{"at": e.at.isoformat() + "Z", "actor": e.actor, "from": e.from_state,
                            "to": e.to_state, "note": e.note} for e in events]
    return view
