"""Operator access below the HTTP layer, on a real SQLite store with the sample city: sign-in codes
(expiry, single use, guesses, rate limit), console sessions (idle and absolute expiry, sign-out),
API tokens (expiry, revoke, the Bearer header) and the roster re-read on every request."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from gateway.console import auth
from gateway.domain import operators
from gateway.store import WorkerRow, load_city_from_store, make_engine, session_factory

NOW = datetime(2026, 12, 3, 6, 0)  # naive UTC, like the store


@pytest.fixture
def session(store_settings) -> Iterator[Session]:
    """A transaction on the shared store, rolled back after the test."""
    with session_factory(make_engine(store_settings.sqlalchemy_url))() as session:
        session.begin()
        yield session
        session.rollback()


@pytest.fixture
def desk(session, store_settings):
    """A triage-desk operator on the workers' bot, and their phone."""
    city = load_city_from_store(session)
    worker = next(w for w in city.workers.values() if w.role == "dept_staff" and w.telegram_chat_id
                  and w.department_code == store_settings.triage_department)
    return worker


def code_from(rows) -> str:
    assert len(rows) == 1
    return re.search(r"\d{6}", rows[0].body).group(0)


def test_a_code_reaches_the_operators_chat_and_signs_in_once(session, store_settings, desk):
    rows = auth.request_code(session, store_settings, desk.phone, NOW)
    assert rows[0].channel == "telegram-worker" and rows[0].recipient == str(desk.telegram_chat_id)
    code = code_from(rows)
    signed_in = auth.verify_code(session, store_settings, desk.phone, code, NOW + timedelta(minutes=1))
    assert signed_in is not None and signed_in.worker.id == desk.id and signed_in.csrf
    assert auth.verify_code(session, store_settings, desk.phone, code, NOW + timedelta(minutes=2)) is None


def test_codes_are_stored_hashed(session, store_settings, desk):
    from gateway.store import SignInCodeRow

    code = code_from(auth.request_code(session, store_settings, desk.phone, NOW))
    stored = session.query(SignInCodeRow).filter_by(worker_id=desk.id).one()
    assert code not in stored.code_hash


def test_a_code_expires_after_five_minutes(session, store_settings, desk):
    code = code_from(auth.request_code(session, store_settings, desk.phone, NOW))
    assert auth.verify_code(session, store_settings, desk.phone, code, NOW + timedelta(minutes=5, seconds=1)) is None


def test_five_wrong_guesses_burn_the_code(session, store_settings, desk):
    code = code_from(auth.request_code(session, store_settings, desk.phone, NOW))
    wrong = f"{(int(code) + 1) % 10 ** 6:06d}"
    for _ in range(auth.CODE_GUESSES):
        assert auth.verify_code(session, store_settings, desk.phone, wrong, NOW) is None
    assert auth.verify_code(session, store_settings, desk.phone, code, NOW) is None


def test_a_new_code_replaces_the_previous_one(session, store_settings, desk):
    first = code_from(auth.request_code(session, store_settings, desk.phone, NOW))
    second = code_from(auth.request_code(session, store_settings, desk.phone, NOW + timedelta(seconds=30)))
    later = NOW + timedelta(minutes=1)
    if first != second:
        assert auth.verify_code(session, store_settings, desk.phone, first, later) is None
    assert auth.verify_code(session, store_settings, desk.phone, second, later) is not None


def test_at_most_three_codes_per_quarter_hour(session, store_settings, desk):
    for minute in range(auth.CODES_PER_WINDOW):
        assert auth.request_code(session, store_settings, desk.phone, NOW + timedelta(minutes=minute))
    assert auth.request_code(session, store_settings, desk.phone, NOW + timedelta(minutes=5)) == []
    assert auth.request_code(session, store_settings, desk.phone, NOW + timedelta(minutes=16))


def test_unknown_numbers_and_volunteers_get_nothing(session, store_settings):
    city = load_city_from_store(session)
    volunteer = next(w for w in city.workers.values() if w.role == "volunteer")
    assert auth.request_code(session, store_settings, volunteer.phone, NOW) == []
    assert auth.request_code(session, store_settings, "+8617199999999", NOW) == []


def test_phones_are_read_in_the_citys_region(store_settings, desk):
    assert auth.normalise_phone(store_settings, desk.phone.removeprefix("+86")) == desk.phone
    with pytest.raises(ValueError):
        auth.normalise_phone(store_settings, "whatsapp:+8617000000000")


def signed_in(session, settings, worker):
    code = code_from(auth.request_code(session, settings, worker.phone, NOW))
    return auth.verify_code(session, settings, worker.phone, code, NOW)


def test_a_session_ends_after_idling(session, store_settings, desk):
    token = signed_in(session, store_settings, desk).token
    idle = timedelta(minutes=store_settings.console_idle_minutes)
    assert auth.current(session, store_settings, token, NOW + idle - timedelta(minutes=1)) is not None
    # That request counted as activity: the idle clock restarts from it.
    assert auth.current(session, store_settings, token, NOW + 2 * idle - timedelta(minutes=2)) is not None
    assert auth.current(session, store_settings, token, NOW + 3 * idle) is None


def test_a_busy_session_still_ends_at_the_absolute_limit(session, store_settings, desk):
    token = signed_in(session, store_settings, desk).token
    limit = timedelta(hours=store_settings.console_session_hours)
    at = NOW
    while at + timedelta(minutes=10) < NOW + limit:
        at += timedelta(minutes=10)
        assert auth.current(session, store_settings, token, at) is not None
    assert auth.current(session, store_settings, token, NOW + limit) is None


def test_sign_out_ends_the_session(session, store_settings, desk):
    token = signed_in(session, store_settings, desk).token
    auth.sign_out(session, token, NOW)
    assert auth.current(session, store_settings, token, NOW) is None


def test_a_token_expires(session, store_settings, desk):
    city = load_city_from_store(session)
    token = operators.issue_token(session, city, desk.id, days=30, now=NOW)
    assert operators.authenticate(session, token, NOW + timedelta(days=29)).id == desk.id
    assert operators.authenticate(session, token, NOW + timedelta(days=30)) is None


def test_revoke_ends_tokens_and_sessions(session, store_settings, desk):
    city = load_city_from_store(session)
    token = operators.issue_token(session, city, desk.id, now=NOW)
    console = signed_in(session, store_settings, desk).token
    assert operators.revoke(session, desk.id, NOW) == 2
    assert operators.authenticate(session, token, NOW) is None
    assert auth.current(session, store_settings, console, NOW) is None


def test_a_roster_change_applies_on_the_next_request(session, store_settings):
    city = load_city_from_store(session)
    officer = next(w for w in city.workers.values() if w.role == "community_officer")
    other = next(g for g in city.grids.values() if g.level == 2 and g.code != officer.grid_code)
    token = operators.issue_token(session, city, officer.id, now=NOW)
    console = signed_in(session, store_settings, officer).token
    session.execute(update(WorkerRow).where(WorkerRow.id == officer.id).values(grid_code=other.code))
    assert operators.authenticate(session, token, NOW).grid_code == other.code
    assert auth.current(session, store_settings, console, NOW).worker.grid_code == other.code
    session.execute(update(WorkerRow).where(WorkerRow.id == officer.id).values(role="volunteer"))
    assert operators.authenticate(session, token, NOW) is None
    assert auth.current(session, store_settings, console, NOW) is None


@pytest.mark.parametrize("header, token", [
    ("Bearer " + "a" * 43, "a" * 43),
    ("bearer " + "a" * 43, "a" * 43),
    ("BEARER   " + "a" * 43 + " ", "a" * 43),
    ("Basic " + "a" * 43, None),
    ("Bearer", None),
    ("Bearer \udcff\udcfe" + "a" * 40, None),  # bytes that were not UTF-8, as aiohttp hands them on
    ("Bearer ａａａａａａａａａａａａａａａａａａａａａ", None),
    ("", None),
    (None, None),
])
def test_the_bearer_header(header, token):
    assert operators.bearer_token(header) == token
