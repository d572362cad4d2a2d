"""Operator actions on one case, shared by the console's forms and `/api/cases/{number}/{action}`.

The rules are the domain's (gateway.domain.workflow, the same functions `gridline case` calls);
this layer adds what an operator over HTTP needs: the case must be in their jurisdiction (else
404, as if it did not exist), the codes they name must exist, and a grid operator may not hand a
case to a grid or worker outside their own subtree.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.domain import operators, workflow
from gateway.domain.cases import IllegalTransition
from gateway.domain.city import Worker
from gateway.store import CaseRow, DeliveryRow
from gateway.world import World

ACTIONS = ("assign", "reassign", "reject", "merge", "note", "escalate")


class Refused(ValueError):
    """An action we do not take, with the HTTP status and a reason for the operator."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def _visible(world: World, operator: Worker):
    return operators.jurisdiction(world.city, operator, world.settings.triage_department)


def visible_case(session: Session, world: World, operator: Worker, number: str) -> CaseRow:
    case = session.scalar(select(CaseRow).where(CaseRow.number == number, _visible(world, operator)))
    if case is None:  # not there and not yours look the same
        raise Refused(404, f"no case {number}")
    return case


def _within_reach(world: World, operator: Worker, grid: str | None) -> bool:
    """Department staff (the triage desk among them) route city-wide; grid staff within their subtree."""
    if operator.role == "dept_staff" or grid is None:
        return True
    return operator.grid_code is not None and world.city.within(grid, operator.grid_code)


def _field(fields: Mapping[str, str], name: str) -> str:
    value = fields.get(name) or ""
    return value.strip() if isinstance(value, str) else ""


def perform(session: Session, world: World, operator: Worker, number: str, action: str,
            fields: Mapping[str, str], now: datetime) -> tuple[CaseRow, list[DeliveryRow]]:
    """Do `action` on case `number` for `operator` in the caller's transaction; Refused says why not."""
    if action not in ACTIONS:
        raise Refused(404, f"no action {action!r}; actions are {', '.join(ACTIONS)}")
    city = world.city
    case = visible_case(session, world, operator, number)
    actor = f"operator:{operator.id}"
    to, category, grid = _field(fields, "to"), _field(fields, "category"), _field(fields, "grid")
    unknown = [f"no {what} {code!r}" for what, code, known in (
        ("worker", to, city.workers), ("category", category, city.categories),
        ("level-3 grid", grid, {c for c, g in city.grids.items() if g.level == 3})) if code and code not in known]
    if unknown:
        raise Refused(400, "; ".join(unknown))
    worker = city.workers.get(to) if to else None
    if not _within_reach(world, operator, grid or None) or (
            worker is not None and not _within_reach(world, operator, worker.grid_code)):
        raise Refused(403, "that grid or worker is outside your jurisdiction")
    try:
        if action == "assign":
            queued = workflow.settle(session, world, case, actor, now, category=category or None,
                                     grid=grid or None, worker=worker)
        elif action == "reassign":
            if worker is None:
                raise Refused(400, "a reassignment needs `to`: the worker id to hand it to")
            queued = workflow.assign(session, world, case, worker, actor, now)
        elif action == "reject":
            if not _field(fields, "reason"):
                raise Refused(400, "a rejection needs a reason: the resident is told why")
            queued = workflow.reject(session, case, actor, _field(fields, "reason"), now)
        elif action == "merge":
            into = _field(fields, "into")
            if not into:
                raise Refused(400, "a merge needs `into`: the number of the case it duplicates")
            if into != number and session.scalar(select(CaseRow.id).where(
                    CaseRow.number == into, _visible(world, operator))) is None:
                raise Refused(409, f"there is no case {into} in your jurisdiction to merge it into")
            queued = workflow.merge(session, case, into, actor, now)
        elif action == "note":
            workflow.add_note(session, case, actor, _field(fields, "text"), now)
            queued = []
        else:
            reason = _field(fields, "reason")
            if not reason:
                raise Refused(400, "an escalation needs a reason: the next level is told why")
            queued = workflow.escalate(session, world, case, actor, reason, now)
    except IllegalTransition as refused:
        raise Refused(409, str(refused)) from refused
    return case, queued

