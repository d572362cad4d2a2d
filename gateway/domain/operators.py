"""Operators are staff from the workers' roster; each sees only their own jurisdiction.

A grid-role worker sees the cases of their grid's subtree (a street officer the whole street);
department staff see their department's cases. Tokens are stored only as SHA-256 hashes, expire,
can be revoked, and every request re-reads the operator from the roster in the store: someone
removed from it, made a volunteer or moved to another grid loses (or changes) access at once.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, false, select, true, update
from sqlalchemy.orm import Session

from gateway.domain.city import City, Worker
from gateway.store import CaseRow, ConsoleSessionRow, OperatorTokenRow, WorkerRow, utcnow

# Volunteers (兼职网格员) help on the ground but do not read residents' case files.
OPERATOR_ROLES = ("grid_leader", "grid_worker", "community_officer", "street_officer", "dept_staff")
# What a token we issue looks like (token_urlsafe); anything else is refused before it is hashed.
TOKEN_RE = re.compile(r"[A-Za-z0-9_\-]{20,128}")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def roster_operator(session: Session, worker_id: str) -> Worker | None:
    """The worker as the roster in the store has them now, if they are (still) an operator."""
    row = session.get(WorkerRow, worker_id)
    if row is None or row.role not in OPERATOR_ROLES:
        return None
    return Worker(id=row.id, name=row.name, role=row.role, grid_code=row.grid_code,
                  department_code=row.department_code, phone=row.phone,
                  telegram_chat_id=row.telegram_chat_id, languages=tuple(row.languages or ()))


def issue_token(session: Session, city: City, worker_id: str, *, days: float = 30.0,
                now: datetime | None = None) -> str:
    """A new API token for an operator, valid for `days`."""
    if worker_id not in city.workers:
        raise KeyError(f"no worker {worker_id!r} in the roster")
    if city.workers[worker_id].role not in OPERATOR_ROLES:
        raise KeyError(f"{worker_id} is a {city.workers[worker_id].role}: operators are "
                       + ", ".join(OPERATOR_ROLES))
    now = now or utcnow()
    token = secrets.token_urlsafe(32)
    session.add(OperatorTokenRow(token_hash=token_hash(token), worker_id=worker_id, created_at=now,
                                 expires_at=now + timedelta(days=days)))
    return token


def revoke(session: Session, worker_id: str, now: datetime | None = None) -> int:
    """End every token and console session of `worker_id`; returns how many were live."""
    now = now or utcnow()
    tokens = session.execute(update(OperatorTokenRow).where(
        OperatorTokenRow.worker_id == worker_id, OperatorTokenRow.revoked_at.is_(None),
        OperatorTokenRow.expires_at > now).values(revoked_at=now)).rowcount
    sessions = session.execute(update(ConsoleSessionRow).where(
        ConsoleSessionRow.worker_id == worker_id, ConsoleSessionRow.ended_at.is_(None),
        ConsoleSessionRow.expires_at > now).values(ended_at=now)).rowcount
    return tokens + sessions


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (scheme in any case), or None for
    anything else, odd bytes included: it is then simply not a token we issued."""
    scheme, _, token = (header or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not TOKEN_RE.fullmatch(token):
        return None
    return token


def authenticate(session: Session, token: str, now: datetime | None = None) -> Worker | None:
    """The operator holding a live (unexpired, unrevoked) token, as the roster has them now."""
    if not TOKEN_RE.fullmatch(token):
        return None
    now = now or utcnow()
    worker_id = session.scalar(select(OperatorTokenRow.worker_id).where(
        OperatorTokenRow.token_hash == token_hash(token), OperatorTokenRow.revoked_at.is_(None),
        OperatorTokenRow.expires_at > now))
    return roster_operator(session, worker_id) if worker_id else None


def jurisdiction(city: City, worker: Worker, triage_department: str | None = None) -> ColumnElement[bool]:
    """The SQL condition for the cases `worker` may see. The triage desk's staff see the whole city
    (they settle cases whose department is not known yet), as they may address it in broadcasts."""
    if worker.role == "dept_staff" and triage_department and worker.department_code == triage_department:
        return true()
    if worker.role == "dept_staff":
        return CaseRow.department == worker.department_code
    if worker.grid_code is None or worker.grid_code not in city.grids:
        return false()
    return CaseRow.grid_code.in_(city.subtree(worker.grid_code))
