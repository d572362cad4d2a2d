"""The case state machine on the real store: legal moves, refusals with a usable message, and a
move refused when someone else changed the case since it was read."""

from __future__ import annotations

from datetime import timedelta

import pytest

from classifiers import Classification
from gateway.domain.cases import IllegalTransition, open_case, transition
from gateway.domain.city import load_city
from gateway.store import CaseEventRow, CaseRow, make_engine, session_factory, utcnow
from tests.conftest import CONFIG

CITY = load_city(CONFIG / "city")
VERDICT = Classification(category="sanitation", appeal_type="complaint", department="SANITATION",
                         grid="QH-DH-01-01", place=None, confidence=0.9)


@pytest.fixture
def sessions(store_settings):
    return session_factory(make_engine(store_settings.sqlalchemy_url))


@pytest.fixture
def case_id(sessions, store_settings) -> int:
    with sessions() as session, session.begin():
        case = open_case(session, city=CITY, settings=store_settings, channel="sms", reporter="+8617199000901",
                         text="垃圾没人清", language="zh", verdict=VERDICT, now=utcnow())
        session.flush()
        return case.id


def test_legal_moves_write_the_audit_trail(sessions, case_id):
    with sessions() as session, session.begin():
        case = session.get(CaseRow, case_id)
        now = utcnow()
        for state in ("assigned", "accepted", "resolved", "closed"):
            now += timedelta(seconds=1)
            transition(session, case, state, "tester", f"to {state}", now)
    with sessions() as session:
        case = session.get(CaseRow, case_id)
        events = session.query(CaseEventRow).filter_by(case_id=case_id).order_by(CaseEventRow.id).all()
        assert [(e.from_state, e.to_state) for e in events] == [
            (None, "received"), ("received", "assigned"), ("assigned", "accepted"), ("accepted", "resolved"),
            ("resolved", "closed")]
        assert case.state == "closed" and case.resolved_at and case.closed_at


def test_illegal_moves_say_what_is_allowed(sessions, case_id):
    with sessions() as session, session.begin():
        case = session.get(CaseRow, case_id)
        with pytest.raises(IllegalTransition, match="cannot become resolved; it can become assigned, escalated"):
            transition(session, case, "resolved", "tester", "", utcnow())
        transition(session, case, "rejected", "tester", "not ours", utcnow())
        with pytest.raises(IllegalTransition, match="nothing \\(it is final\\)"):
            transition(session, case, "assigned", "tester", "", utcnow())


def test_a_move_on_a_case_changed_meanwhile_is_refused(sessions, case_id):
    with sessions() as first, sessions() as second:
        mine, theirs = first.get(CaseRow, case_id), second.get(CaseRow, case_id)
        transition(second, theirs, "assigned", "worker", "", utcnow())
        second.commit()
        with pytest.raises(IllegalTransition, match="changed meanwhile"):
            transition(first, mine, "rejected", "operator", "", utcnow())
        first.rollback()
    with sessions() as session:
        assert session.get(CaseRow, case_id).state == "assigned"
