"""`POST /api/cases/{number}/{action}` on a running stack: the CLI's rules over HTTP, scoped to the
operator's jurisdiction, every action an audit row; tokens revoked or lower-case schemes handled."""

from __future__ import annotations

import http.client
import json

import pytest
from sqlalchemy import select

from gateway.store import OperatorAuditRow
from tests.conftest import http_json
from tests.test_case_lifecycle import LEADER, PLACE, WORKER, WORKER_TOKEN, case_of, sms_appeal, wait_bot
from tests.test_operators import token_for, worker
from tests.test_sms_flow import CITY, db

DESK = next(w.id for w in CITY.workers.values() if w.role == "dept_staff" and w.department_code == "GRID_CENTER")
COMMUNITY = next(g.code for g in CITY.lineage(PLACE.grid_code) if g.level == 2)


@pytest.fixture(scope="module")
def desk(stack) -> dict[str, str]:
    return token_for(stack, DESK)


def act(stack, number: str, action: str, headers: dict[str, str], **fields) -> tuple[int, dict]:
    return http_json("POST", f"{stack.url}/api/cases/{number}/{action}", fields, headers)


def test_the_desk_settles_a_triage_case_and_the_worker_is_alerted(stack, desk):
    number = sms_appeal(stack, "+8617199000501", "有件事想反映，不知道找谁")
    status, case = act(stack, number, "assign", desk, category="sanitation", grid=PLACE.grid_code)
    assert status == 200, case
    assert (case["state"], case["grid"], case["assigned_worker"]) == ("assigned", PLACE.grid_code, WORKER.id)
    assert case["history"][-1]["actor"] == f"operator:{DESK}"
    wait_bot(stack, WORKER_TOKEN, WORKER.telegram_chat_id, number)


def test_notes_reassignment_and_escalation(stack, desk):
    number = sms_appeal(stack, "+8617199000502", f"{PLACE.name}门口垃圾堆了三天没人清理")
    status, case = act(stack, number, "note", desk, text="已电话联系居民")
    assert status == 200 and case["history"][-1]["note"] == "note: 已电话联系居民"
    status, case = act(stack, number, "reassign", desk, to=LEADER.id)
    assert status == 200 and case["assigned_worker"] == LEADER.id
    status, case = act(stack, number, "escalate", desk, reason="需要社区协调")
    assert status == 200 and case["state"] == "escalated" and case["assigned_worker"] != LEADER.id


@pytest.mark.parametrize("action, fields, status, reason", [
    ("reject", {}, 400, "needs a reason"),
    ("merge", {}, 400, "needs `into`"),
    ("merge", {"into": "SELF"}, 409, "into itself"),
    ("merge", {"into": "9912310001"}, 409, "no case 9912310001"),
    ("assign", {"category": "no_such_category"}, 400, "no category"),
    ("assign", {"grid": "QH"}, 400, "no level-3 grid"),
    ("reassign", {}, 400, "needs `to`"),
    ("escalate", {}, 400, "needs a reason"),
    ("note", {"text": "  "}, 409, "needs some text"),
    ("archive", {}, 404, "no action"),
])
def test_refusals_say_why(stack, desk, action, fields, status, reason):
    number = sms_appeal(stack, "+8617199000503", "有件事想反映，不知道找谁")
    fields = {k: number if v == "SELF" else v for k, v in fields.items()}
    got, body = act(stack, number, action, desk, **fields)
    assert (got, reason in body.get("error", "")) == (status, True), body
    assert case_of(stack, number)["state"] == "received"


def test_a_final_case_is_no_merge_target(stack, desk):
    rejected = sms_appeal(stack, "+8617199000504", "有件事想反映，不知道找谁")
    assert act(stack, rejected, "reject", desk, reason="不属于本区")[0] == 200
    duplicate = sms_appeal(stack, "+8617199000505", "有件事想反映，不知道找谁")
    status, body = act(stack, duplicate, "merge", desk, into=rejected)
    assert status == 409 and "rejected" in body["error"]
    target = sms_appeal(stack, "+8617199000506", "有件事想反映，不知道找谁")
    status, case = act(stack, duplicate, "merge", desk, into=target)
    assert status == 200 and case["state"] == "merged"


def test_outside_the_jurisdiction_looks_like_nothing(stack):
    number = sms_appeal(stack, "+8617199000507", f"{PLACE.name}门口垃圾堆了三天没人清理")
    other_community = next(g.code for g in CITY.grids.values() if g.level == 2 and g.code != COMMUNITY)
    outsider = token_for(stack, worker("community_officer", grid=other_community))
    status, body = act(stack, number, "note", outsider, text="看看")
    missing = act(stack, "9912310002", "note", outsider, text="看看")
    assert (status, body) == (404, {"error": f"no case {number}"}) and missing[0] == 404
    inside = token_for(stack, worker("community_officer", grid=COMMUNITY))
    assert act(stack, number, "note", inside, text="看看")[0] == 200
    with db(stack).connect() as connection:
        rows = connection.execute(select(OperatorAuditRow.worker_id, OperatorAuditRow.via, OperatorAuditRow.outcome)
                                  .where(OperatorAuditRow.target == number)).all()
    assert {(r.via, r.outcome) for r in rows} == {("api", f"no case {number}"), ("api", "ok")}


def test_bad_bodies_are_refused_with_a_reason(stack, desk):
    number = sms_appeal(stack, "+8617199000508", "有件事想反映，不知道找谁")
    for body in (b"{not json", b"[" * 30000, b"\xff\xfe", b"[1, 2]"):
        connection = http.client.HTTPConnection(stack.settings.host, stack.settings.port, timeout=10)
        connection.request("POST", f"/api/cases/{number}/note", body=body,
                           headers={**desk, "Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 400 and json.loads(response.read())["error"]
        connection.close()


def test_the_scheme_is_case_insensitive_and_odd_bytes_are_a_401(stack):
    token = token_for(stack, DESK)["Authorization"].split()[1]
    assert http_json("GET", f"{stack.url}/api/cases?limit=1", headers={"Authorization": f"bearer {token}"})[0] == 200
    connection = http.client.HTTPConnection(stack.settings.host, stack.settings.port, timeout=10)
    connection.putrequest("GET", "/api/cases")
    connection.putheader("Authorization", b"Bearer \xff\xfe\x80" + token.encode())
    connection.endheaders()
    assert connection.getresponse().status == 401


def test_a_revoked_token_is_refused_at_once(stack):
    officer = worker("street_officer", grid="QH-XS")
    headers = token_for(stack, officer)
    assert http_json("GET", f"{stack.url}/api/cases?limit=1", headers=headers)[0] == 200
    revoked = stack.gridline("operator", "revoke", officer)
    assert revoked.returncode == 0 and "1 token" in revoked.stdout
    status, body = http_json("GET", f"{stack.url}/api/cases?limit=1", headers=headers)
    assert status == 401 and "revoked" in body["error"]
