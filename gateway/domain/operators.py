"""Operators are staff from the workers' roster; each sees only their own jurisdiction.

A grid-role worker sees the cases of their grid's subtree (a street officer the whole street);
department staff see their department's cases. Tokens are stored only as SHA-256 hashes.
"""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import ColumnElement, false, select
from sqlalchemy.orm import Session

from gateway.domain.city import City, Worker
from gateway.store import CaseRow, OperatorTokenRow, utcnow


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# Volunteers (兼职网格员) help on the ground but do not read residents' case files.
OPERATOR_ROLES = ("grid_leader", "grid_worker", "community_officer", "street_officer", "dept_staff")


def issue_token(session: Session, city: City, worker_id: str) -> str:
    if worker_id not in city.workers:
        raise KeyError(f"no worker {worker_id!r} in the roster")
    if city.workers[worker_id].role not in OPERATOR_ROLES:
        raise KeyError(f"{worker_id} is a {city.workers[worker_id].role}: operators are "
                       + ", ".join(OPERATOR_ROLES))
    token = secrets.token_urlsafe(32)
    session.add(OperatorTokenRow(token_hash=_hash(token), worker_id=worker_id, created_at=utcnow()))
    return token


def authenticate(session: Session, city: City, token: str) -> Worker | None:
    worker_id = session.scalar(select(OperatorTokenRow.worker_id)
                               .where(OperatorTokenRow.token_hash == _hash(token)))
    return city.workers.get(worker_id or "")


def jurisdiction(city: City, worker: Worker) -> ColumnElement[bool]:
    """The SQL condition for the cases `worker` may see."""
    if worker.role == "dept_staff":
        return CaseRow.department == worker.department_code
    if worker.grid_code is None:
        return false()
    return CaseRow.grid_code.in_(city.subtree(worker.grid_code))
