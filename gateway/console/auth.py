"""Console sign-in without passwords: a one-time code on the workers' bot (or by SMS), then a session.

Codes are six digits, live five minutes, work once, allow five guesses, and at most three are sent
per operator per quarter hour; only a salted hash is stored. A session is a random cookie whose
hash is stored with its CSRF token; it ends after idling, at an absolute limit, on sign-out or on
`gridline operator revoke`. Every request re-reads the operator from the roster
(`operators.roster_operator`), so a change there takes effect on the next click.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import phonenumbers
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from adapters.phones import to_e164
from gateway.config import Settings
from gateway.domain import operators, workflow
from gateway.domain.city import Worker
from gateway.store import ConsoleSessionRow, DeliveryRow, OperatorAuditRow, SignInCodeRow, WorkerRow

CODE_LIFETIME = timedelta(minutes=5)
CODE_GUESSES = 5
CODES_PER_WINDOW = 3
CODE_WINDOW = timedelta(minutes=15)
SEEN_EVERY = timedelta(seconds=30)  # how stale last_seen_at may get before a request writes it


def _salted(code: str, salt: str) -> str:
    return f"{salt}${hashlib.sha256(f'{salt}:{code}'.encode()).hexdigest()}"


def city_region(settings: Settings) -> str | None:
    """The city's region (for phones typed without a country code): the city-wide number's."""
    try:
        return phonenumbers.region_code_for_number(phonenumbers.parse(settings.twilio_from_number))
    except phonenumbers.NumberParseException:
        return None


def normalise_phone(settings: Settings, raw: str) -> str:
    """The E.164 form of what an operator typed; NotAPhoneNumber says why not."""
    return to_e164(raw, city_region(settings))


def operator_by_phone(session: Session, phone: str) -> Worker | None:
    worker_id = session.scalar(select(WorkerRow.id).where(WorkerRow.phone == phone).limit(1))
    return operators.roster_operator(session, worker_id) if worker_id else None


def request_code(session: Session, settings: Settings, phone: str, now: datetime) -> list[DeliveryRow]:
    """Send a sign-in code to the operator with this phone, if there is one and they are under the
    rate limit. The caller tells everyone the same thing, so the form reveals nobody's number."""
    worker = operator_by_phone(session, phone)
    if worker is None:
        return []
    recent = session.scalar(select(func.count()).select_from(SignInCodeRow).where(
        SignInCodeRow.worker_id == worker.id, SignInCodeRow.created_at > now - CODE_WINDOW)) or 0
    if recent >= CODES_PER_WINDOW:
        return []
    session.execute(update(SignInCodeRow).where(SignInCodeRow.worker_id == worker.id,
                                                SignInCodeRow.used_at.is_(None)).values(used_at=now))
    code = f"{secrets.randbelow(10 ** 6):06d}"
    session.add(SignInCodeRow(worker_id=worker.id, code_hash=_salted(code, secrets.token_hex(8)),
                              created_at=now, expires_at=now + CODE_LIFETIME, attempts=0))
    minutes = int(CODE_LIFETIME.total_seconds() // 60)
    text = (f"Gridline 控制台登录验证码 {code}，{minutes} 分钟内有效。非本人操作请忽略。\n"
            f"Gridline console sign-in code {code}, valid for {minutes} minutes.")
    return [workflow.message_worker(session, worker, text)]


@dataclass
class SignedIn:
    worker: Worker
    token: str  # the cookie's value; only its hash is stored
    csrf: str


def verify_code(session: Session, settings: Settings, phone: str, code: str, now: datetime) -> SignedIn | None:
    """A new session if `code` is the operator's live code; a wrong guess uses one of its five."""
    worker = operator_by_phone(session, phone)
    if worker is None:
        return None
    row = session.scalar(select(SignInCodeRow).where(
        SignInCodeRow.worker_id == worker.id, SignInCodeRow.used_at.is_(None), SignInCodeRow.expires_at > now,
        SignInCodeRow.attempts < CODE_GUESSES).order_by(SignInCodeRow.id.desc()).limit(1))
    if row is None:
        return None
    salt = row.code_hash.partition("$")[0]
    if not hmac.compare_digest(_salted(code.strip(), salt), row.code_hash):
        row.attempts += 1
        return None
    row.used_at = now
    return open_session(session, settings, worker, now)


def open_session(session: Session, settings: Settings, worker: Worker, now: datetime) -> SignedIn:
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    session.add(ConsoleSessionRow(token_hash=operators.token_hash(token), worker_id=worker.id, csrf=csrf,
                                  created_at=now, last_seen_at=now,
                                  expires_at=now + timedelta(hours=settings.console_session_hours)))
    return SignedIn(worker, token, csrf)


def current(session: Session, settings: Settings, token: str, now: datetime) -> SignedIn | None:
    """The live session behind a cookie, with its operator as the roster has them now."""
    if not operators.TOKEN_RE.fullmatch(token):
        return None
    row = session.get(ConsoleSessionRow, operators.token_hash(token))
    idle = timedelta(minutes=settings.console_idle_minutes)
    if row is None or row.ended_at is not None or row.expires_at <= now or row.last_seen_at <= now - idle:
        return None
    worker = operators.roster_operator(session, row.worker_id)
    if worker is None:
        return None
    if row.last_seen_at <= now - SEEN_EVERY:
        row.last_seen_at = now
    return SignedIn(worker, token, row.csrf)


def sign_out(session: Session, token: str, now: datetime) -> None:
    if operators.TOKEN_RE.fullmatch(token):
        session.execute(update(ConsoleSessionRow).where(
            ConsoleSessionRow.token_hash == operators.token_hash(token)).values(ended_at=now))


def audit(session: Session, worker: Worker, via: str, action: str, target: str, outcome: str,
          now: datetime) -> None:
    """One row per operator action: who, how, what, on what, and whether it was allowed."""
    session.add(OperatorAuditRow(at=now, worker_id=worker.id, via=via, action=action[:32],
                                 target=target[:64], outcome=outcome[:500]))

