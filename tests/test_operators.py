"""Operators see cases only inside their jurisdiction; everything else is a 404, never a leak."""

from __future__ import annotations

import pytest

from tests.conftest import http_json
from tests.test_sms_flow import CITY, appeal


def worker(role: str, *, grid: str | None = None, department: str | None = None) -> str:
    return next(w.id for w in CITY.workers.values()
                if w.role == role and (grid is None or w.grid_code == grid)
                and (department is None or w.department_code == department))


@pytest.fixture(scope="module")
def cuihu_case(stack) -> str:
    return appeal(stack, "+8617199000301", "翠湖花园3号楼门口垃圾三天没人清了")


def token_for(stack, worker_id: str) -> dict[str, str]:
    issued = stack.gridline("operator", "token", worker_id)
    assert issued.returncode == 0, issued.stderr
    return {"Authorization": f"Bearer {issued.stdout.strip()}"}


@pytest.mark.parametrize("who, sees", [
    (worker("grid_worker", grid="QH-DH-01-01"), True),
    (worker("community_officer", grid="QH-DH-01"), True),
    (worker("street_officer", grid="QH-DH"), True),
    (worker("dept_staff", department="SANITATION"), True),
    (worker("grid_worker", grid="QH-DH-01-02"), False),
    (worker("street_officer", grid="QH-XS"), False),
    (worker("dept_staff", department="POLICE"), False),
])
def test_jurisdiction(stack, cuihu_case, who, sees):
    headers = token_for(stack, who)
    status, body = http_json("GET", f"{stack.url}/api/cases/{cuihu_case}", headers=headers)
    assert status == (200 if sees else 404)
    if sees:
        assert body["number"] == cuihu_case and body["history"]
    else:
        assert cuihu_case not in str(body) or body == {"error": f"no case {cuihu_case}"}
    status, listing = http_json("GET", f"{stack.url}/api/cases?limit=1000", headers=headers)
    assert status == 200
    assert (cuihu_case in [c["number"] for c in listing["cases"]]) == sees


def test_filters_narrow_the_list(stack, cuihu_case):
    headers = token_for(stack, worker("street_officer", grid="QH-DH"))
    _, by_category = http_json("GET", f"{stack.url}/api/cases?category=sanitation&grid=QH-DH-01", headers=headers)
    assert cuihu_case in [c["number"] for c in by_category["cases"]]
    assert all(c["category"] == "sanitation" for c in by_category["cases"])
    _, other = http_json("GET", f"{stack.url}/api/cases?category=noise", headers=headers)
    assert cuihu_case not in [c["number"] for c in other["cases"]]


def test_the_api_needs_a_valid_token(stack, cuihu_case):
    assert http_json("GET", f"{stack.url}/api/cases")[0] == 401
    assert http_json("GET", f"{stack.url}/api/cases", headers={"Authorization": "Bearer nope"})[0] == 401
    assert stack.gridline("operator", "token", "NOBODY").returncode == 1


def test_cases_command_lists_and_filters(stack, cuihu_case):
    listed = stack.gridline("cases", "--grid", "QH-DH-01-01", "--category", "sanitation")
    assert listed.returncode == 0 and cuihu_case in listed.stdout
    assert cuihu_case not in stack.gridline("cases", "--grid", "QH-XS").stdout


def test_volunteers_get_no_operator_token(stack):
    refused = stack.gridline("operator", "token", worker("volunteer", grid="QH-DH-01-01"))
    assert refused.returncode == 1 and "volunteer" in refused.stderr


def test_leaders_see_figures_only_for_their_jurisdiction(stack, cuihu_case):
    own = token_for(stack, worker("street_officer", grid="QH-DH"))
    status, units = http_json("GET", f"{stack.url}/api/report?level=grid", headers=own)
    assert status == 200
    rows = {u["unit"]: u for u in units if not u["total"]}
    assert rows["QH-DH-01-01"]["received"] >= 1
    assert all(code is None or code.startswith("QH-DH") for code in rows)
    other = token_for(stack, worker("street_officer", grid="QH-XS"))
    _, theirs = http_json("GET", f"{stack.url}/api/report?level=grid", headers=other)
    assert "QH-DH-01-01" not in {u["unit"] for u in theirs}
    assert http_json("GET", f"{stack.url}/api/report?level=planet", headers=own)[0] == 400
    assert http_json("GET", f"{stack.url}/api/report")[0] == 401
