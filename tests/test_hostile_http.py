"""Hostile input over HTTP, on a running `gridline up` of its own: every route fuzzed with
Hypothesis (bounded examples), valid appeals sent alongside, Schemathesis against the served
OpenAPI description, table tests for the findings of issue 14, and the log checked for texts
and phone numbers.

The property: a fuzzed request gets 2xx or 4xx, never 5xx, and the valid appeals sent with it
are answered 200, stored and acknowledged. The figures (requests sent, 5xx seen) are printed
when the module ends (`pytest -s`).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import subprocess
import sys
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from twilio.request_validator import RequestValidator

from tests.conftest import ROOT, Stack, wait_for
from tests.test_broadcast_stack import running_stack
from tests.twilio_client import inbound_form

pytestmark = pytest.mark.slow
FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
GOOD_SENDER = "+8617199007001"  # not a resident: their acknowledgements are counted in the sandbox
SEEN = Counter()  # requests fuzzed, 5xx answers, valid appeals sent alongside


@pytest.fixture(scope="module")
def fstack(tmp_path_factory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("hostile-stack"), GRIDLINE_WORKERS="1", GRIDLINE_WEB_PROCESSES="1",
                       GRIDLINE_QUIET_HOURS="", GRIDLINE_TELEGRAM_RATE_LIMIT="0",
                       GRIDLINE_TELEGRAM_CHAT_RATE_LIMIT="1000") as stack:
        yield stack
        print(f"\nhostile input: {SEEN['fuzzed']} fuzzed requests, {SEEN['5xx']} answered 5xx; "
              f"{SEEN['valid']} valid appeals sent alongside; Schemathesis: {SEEN['schemathesis_calls']} "
              f"requests, {SEEN['schemathesis_checks']} checks passed")


def token(stack: Stack, worker_id: str) -> str:
    issued = stack.gridline("operator", "token", worker_id)
    assert issued.returncode == 0, issued.stderr
    return issued.stdout.strip()


@pytest.fixture(scope="module")
def officer(fstack) -> str:
    """A community officer of 翠湖社区 (QH-DH-01): operator routes see only that subtree."""
    from tests.test_sms_flow import CITY

    return token(fstack, next(w.id for w in CITY.workers.values()
                              if w.role == "community_officer" and w.grid_code == "QH-DH-01"))


def send(stack: Stack, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
         ) -> tuple[int, dict[str, str], bytes]:
    """One raw request over loopback (http.client sends whatever bytes it is given)."""
    connection = http.client.HTTPConnection(stack.settings.host, stack.settings.port, timeout=20)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def signed(stack: Stack, path: str, form: dict[str, str]) -> dict[str, str]:
    _, auth_token = stack.settings.twilio_credentials
    return {"Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": RequestValidator(auth_token).compute_signature(stack.settings.base_url + path, form)}


def valid_appeal(stack: Stack) -> int:
    form = inbound_form(GOOD_SENDER, f"翠湖花园{secrets.randbelow(50)}号楼门口垃圾三天没人清了", stack.settings)
    status, _, _ = send(stack, "POST", "/webhooks/twilio/sms", urllib.parse.urlencode(form).encode(),
                        signed(stack, "/webhooks/twilio/sms", form))
    return status


def fuzz(stack: Stack, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
         ) -> tuple[int, bytes]:
    """The fuzzed request and a valid appeal at the same time: the first must not be a 5xx, the
    second must be stored (200)."""
    with ThreadPoolExecutor(2) as pool:
        fuzzed = pool.submit(send, stack, method, path, body, headers)
        good = pool.submit(valid_appeal, stack)
        status, answer_headers, answer = fuzzed.result()
        SEEN["fuzzed"] += 1
        SEEN["valid"] += 1
        SEEN["5xx"] += status >= 500
        assert good.result() == 200
    assert status < 500, (method, path, body[:300], status, answer[:300])
    if not (status == 400 and answer_headers.get("Content-Type", "").startswith("text/plain")):
        # every answer carries the request id, except aiohttp's own refusal of a request line or
        # header over 8,190 bytes, which comes before any route or middleware
        assert re.fullmatch(r"[A-Za-z0-9._-]{8,64}", answer_headers.get("X-Request-Id", "")), answer_headers
    return status, answer


def quoted(text: str) -> str:
    return urllib.parse.quote(text.encode("utf-8", "surrogatepass"), safe="")


# Values people and programs get wrong: Unicode digits, huge numbers, dates out of range, control
# characters, lone surrogates, very long and very nested input.
NASTY = st.sampled_from(["²", "٣", "9999999999999999999999999", "-1", "0", "1e9", "0001-01-01", "9999-12-31T23:59",
                         "tomorrow", "no", "\x00", "\ud800", "%", "'", "\"", "\\", "../", "Ｂｅａｒｅｒ", "",
                         "[" * 3000, "(" * 3000, "not " * 2000, "x" * 5000])
VALUES = NASTY | st.text(max_size=40) | st.integers().map(str)
JSON_LEAVES = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | VALUES
JSON = st.recursive(JSON_LEAVES, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.sampled_from(["audience", "texts", "title", "emergency", "send_at", "zh",
                                                       "en", "message", "text", "update_id"]) | st.text(max_size=8),
                                      inner, max_size=5), max_leaves=20)
DEEP = st.integers(30, 40_000).map(lambda n: b"[" * n) | st.integers(30, 5000).map(lambda n: b'{"a":' * n + b"1")
BODIES = JSON.map(lambda v: json.dumps(v).encode()) | DEEP | st.binary(max_size=300)


# --- the operator API, the broadcasts API, health and the description -------------------------------


@FUZZ
@given(path=st.sampled_from(["/api/cases", "/api/report", "/api/broadcasts", "/healthz", "/api/openapi.json"]),
       query=st.dictionaries(st.sampled_from(["limit", "state", "grid", "category", "level", "since"])
                             | st.text(max_size=5), VALUES, max_size=4))
def test_fuzzed_queries_are_answered_without_5xx(fstack, officer, path, query):
    encoded = "&".join(f"{quoted(k)}={quoted(v)}" for k, v in query.items())
    fuzz(fstack, "GET", f"{path}?{encoded}", headers={"Authorization": f"Bearer {officer}"})


@FUZZ
@given(template=st.sampled_from(["/api/cases/{}", "/api/broadcasts/{}", "/api/broadcasts/{}/preview"]),
       value=VALUES)
def test_fuzzed_path_values_are_answered_without_5xx(fstack, officer, template, value):
    fuzz(fstack, "GET", template.format(quoted(value)), headers={"Authorization": f"Bearer {officer}"})


@FUZZ
@given(path=st.sampled_from(["/api/broadcasts", "/api/broadcasts/preview", "/api/broadcasts/1/send",
                             "/api/broadcasts/1/pause", "/api/broadcasts/%C2%B2/cancel"]),
       body=BODIES,
       content_type=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded"]))
def test_fuzzed_broadcast_bodies_are_answered_without_5xx(fstack, officer, path, body, content_type):
    fuzz(fstack, "POST", path, body, {"Authorization": f"Bearer {officer}", "Content-Type": content_type})


@FUZZ
@given(audience=VALUES | st.lists(st.sampled_from(["(", ")", "and", "or", "not", "all", "tag:elderly",
                                                   "grid:QH-DH-01", "grid:QH", "channel:sms", "lang:en", "tag:"]),
                                  max_size=40).map(" ".join),
       texts=st.dictionaries(VALUES, VALUES, max_size=3), emergency=JSON_LEAVES, title=JSON_LEAVES,
       send_at=JSON_LEAVES)
def test_fuzzed_broadcasts_are_answered_without_5xx(fstack, officer, audience, texts, emergency, title, send_at):
    headers = {"Authorization": f"Bearer {officer}", "Content-Type": "application/json"}
    body = {"audience": audience, "texts": texts, "emergency": emergency, "title": title}
    status, answer = fuzz(fstack, "POST", "/api/broadcasts", json.dumps(body).encode(), headers)
    if status == 201:
        created = json.loads(answer)
        assert created["emergency"] is emergency  # only a JSON boolean is taken
        fuzz(fstack, "POST", f"/api/broadcasts/{created['id']}/send", json.dumps({"send_at": send_at}).encode(),
             headers)
        fuzz(fstack, "POST", f"/api/broadcasts/{created['id']}/cancel", b"", headers)


# --- the webhooks ----------------------------------------------------------------------------------


@FUZZ
@given(form=st.fixed_dictionaries({"From": st.just("+8617199007002")}, optional={
    "Body": VALUES, "MessageSid": VALUES, "MediaUrl0": VALUES, "To": VALUES, "NumSegments": VALUES}))
def test_fuzzed_signed_sms_are_answered_without_5xx(fstack, form):
    form = {name: value.encode("utf-8", "replace").decode() for name, value in form.items()}  # a form is UTF-8
    fuzz(fstack, "POST", "/webhooks/twilio/sms", urllib.parse.urlencode(form).encode(),
         signed(fstack, "/webhooks/twilio/sms", form))


@FUZZ
@given(form=st.fixed_dictionaries({"MessageSid": st.text(min_size=1, max_size=10)}, optional={
    "From": VALUES | st.sampled_from(["whatsapp:+14155550100", "17033259997", "+8617033259997"]),
    "NumMedia": VALUES}))
def test_fuzzed_signed_sms_senders_and_media_counts_are_answered_without_5xx(fstack, form):
    form = {name: value.encode("utf-8", "replace").decode() for name, value in form.items()}
    fuzz(fstack, "POST", "/webhooks/twilio/sms", urllib.parse.urlencode(form).encode(),
         signed(fstack, "/webhooks/twilio/sms", form))


@FUZZ
@given(path=st.sampled_from(["/webhooks/twilio/sms", "/webhooks/twilio/status", "/webhooks/twilio/broadcast-status",
                             "/webhooks/telegram/resident", "/webhooks/telegram/worker", "/webhooks/telegram/x"]),
       body=BODIES, headers=st.dictionaries(
           st.sampled_from(["Content-Type", "X-Twilio-Signature", "X-Telegram-Bot-Api-Secret-Token"]),
           st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40), max_size=3))
def test_fuzzed_unsigned_webhooks_are_refused_without_5xx(fstack, path, body, headers):
    status, _ = fuzz(fstack, "POST", path, body, headers)
    assert status in (200, 400, 403, 404, 405, 413, 415)


@FUZZ
@given(query=st.sampled_from(["delivery"]).flatmap(lambda name: VALUES.map(lambda v: f"{name}={quoted(v)}")),
       status=st.sampled_from(["sent", "delivered", "failed", "undelivered", "queued", "bogus", ""]))
def test_fuzzed_broadcast_delivery_reports_are_answered_without_5xx(fstack, query, status):
    path = f"/webhooks/twilio/broadcast-status?{query}"
    form = {"MessageSid": "SM" + secrets.token_hex(16), "MessageStatus": status}
    fuzz(fstack, "POST", path, urllib.parse.urlencode(form).encode(), signed(fstack, path, form))


# --- the findings of issue 14, one by one ------------------------------------------------------


def api(stack: Stack, method: str, path: str, who: str | None, body: object = None, raw: bytes | None = None
        ) -> tuple[int, dict, dict[str, str]]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {who}"} if who else {})}
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
    status, answer_headers, answer = send(stack, method, path, data, headers)
    return status, json.loads(answer or b"{}"), answer_headers


@pytest.mark.parametrize("method, path, body, raw, status, reason", [
    ("POST", "/api/broadcasts", None, b"[" * 30_000, 400, "nests deeper than 32"),
    ("POST", "/api/broadcasts/preview", None, b'{"a":' * 5000, 400, "nests deeper than 32"),
    ("GET", "/api/broadcasts/%C2%B2", None, None, 404, "Not Found"),
    ("GET", "/api/broadcasts/9999999999999999999999999", None, None, 400, "broadcast id must be between"),
    ("GET", "/api/report?since=0001-01-01", None, None, 400, "since must be between 2000-01-01 and 2099-12-31"),
    ("GET", "/api/report?since=%C2%B2", None, None, 400, "since must be an ISO 8601 date"),
    ("GET", "/api/cases?limit=%C2%B2", None, None, 400, "limit must be a whole number"),
    ("GET", "/api/cases?limt=5", None, None, 400, "unknown query parameter 'limt'"),
    ("GET", "/api/cases/%C2%B2", None, None, 404, "a case number is 10 digits"),
    ("POST", "/api/broadcasts", {"audience": "(" * 5000 + "all" + ")" * 5000, "texts": {"zh": "x"}}, None, 400,
     "longer than 2000"),
    ("POST", "/api/broadcasts", {"audience": "not " * 400 + "all", "texts": {"zh": "x"}}, None, 400,
     "nests deeper than 16"),
    ("POST", "/api/broadcasts", {"audience": "grid:QH-DH-01", "texts": {"zh": "x"}, "emergency": "no"}, None, 400,
     "emergency must be true or false"),
    ("POST", "/api/broadcasts", {"audience": "grid:QH-DH-01", "texts": {"zh": "{name:>99999999}"}}, None, 400,
     "formats a field"),
    ("POST", "/api/broadcasts", {"audience": "grid:QH-DH-01", "texts": {"zh": "x\ud800"}}, None, 400,
     "unpaired surrogate"),
])
def test_findings_are_refused_with_a_reason(fstack, officer, method, path, body, raw, status, reason):
    code, answer, headers = api(fstack, method, path, officer, body, raw)
    assert (code, reason in answer.get("error", "")) == (status, True), answer
    assert headers["X-Request-Id"]


def test_a_send_at_out_of_range_is_a_400_and_emergency_false_stays_false(fstack, officer):
    code, created, _ = api(fstack, "POST", "/api/broadcasts", officer,
                           {"audience": "grid:QH-DH-01-01", "texts": {"zh": "停水通知"}, "emergency": False})
    assert code == 201 and created["emergency"] is False
    code, refused, _ = api(fstack, "POST", f"/api/broadcasts/{created['id']}/send", officer, {"send_at": "0001-01-01"})
    assert code == 400 and "send_at must be between" in refused["error"]


def test_a_refusal_outside_the_jurisdiction_counts_nobody(fstack, officer):
    code, refused, _ = api(fstack, "POST", "/api/broadcasts", officer,
                           {"audience": "tag:disabled", "texts": {"zh": "x"}})
    assert code == 403 and "outside your jurisdiction (QH-DH-01)" in refused["error"]
    assert not re.search(r"\d+ resident", refused["error"]), refused


def test_a_request_id_offered_is_kept_and_one_is_made_otherwise(fstack):
    _, headers, _ = send(fstack, "GET", "/healthz", headers={"X-Request-Id": "proxy-1234abcd"})
    assert headers["X-Request-Id"] == "proxy-1234abcd"
    _, headers, _ = send(fstack, "GET", "/healthz", headers={"X-Request-Id": "evil\tline"})
    assert re.fullmatch(r"[0-9a-f]{16}", headers["X-Request-Id"])
    status, headers, body = send(fstack, "GET", "/nowhere")
    assert status == 404 and json.loads(body) == {"error": "Not Found"} and headers["X-Request-Id"]


def test_the_openapi_description_is_served(fstack):
    status, _, body = send(fstack, "GET", "/api/openapi.json")
    spec = json.loads(body)
    assert status == 200 and spec["openapi"].startswith("3.") and "/api/broadcasts" in spec["paths"]


def test_one_poison_telegram_update_fails_no_sms_beside_it(fstack):
    """20 rounds of one Telegram text with a lone surrogate and 15 SMS at once: the poison alone is
    refused (400 at the webhook, before any frame; the intake would store it with U+FFFD, see
    test_intake), all 300 SMS are answered 200."""
    secret = {"X-Telegram-Bot-Api-Secret-Token": fstack.settings.telegram_webhook_secret,
              "Content-Type": "application/json"}
    poisons, statuses = [], []
    with ThreadPoolExecutor(16) as pool:
        for round_ in range(20):
            poison = json.dumps({"update_id": 880000 + round_, "message": {  # json.dumps writes \\ud800
                "message_id": 1, "date": 1767241800, "chat": {"id": 5012345678, "type": "private"},
                "from": {"id": 5012345678, "is_bot": False, "first_name": "x"}, "text": f"路灯坏了\ud800 {round_}"}}
            ).encode()
            futures = [pool.submit(send, fstack, "POST", "/webhooks/telegram/resident", poison, secret)]
            futures += [pool.submit(valid_appeal, fstack) for _ in range(15)]
            poisons.append(futures[0].result()[0])
            statuses += [f.result() for f in futures[1:]]
    SEEN["valid"] += 300
    assert (poisons, statuses) == ([400] * 20, [200] * 300)


@pytest.mark.parametrize("args, says", [
    (["tick", "--now", "tomorrow"], "--now must be an ISO 8601 date or time"),
    (["sms", "路灯坏了", "--from", "abc"], "a phone number has only digits"),
    (["sms", "路灯坏了", "--from", "whatsapp:+8617033259997"], "a phone number has only digits"),
    (["report", "--since", "0001-01-01"], "--since must be between"),
    (["cases", "--limit", "²"], "--limit must be a whole number"),
    (["broadcast", "status", "²"], "a broadcast id must be a whole number"),
    (["broadcast", "send", "1", "--at", "9999-12-31"], "--at must be between"),
    (["broadcast", "create", "--audience", "all", "--text", "zh"], "--text takes LANGUAGE=TEXT"),
    (["case", "2601019999", "nonsense"], "invalid choice"),
])
def test_cli_mistakes_are_one_line_and_exit_2(fstack, args, says):
    done = fstack.gridline(*args)
    assert (done.returncode, says in done.stderr) == (2, True), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_cli_without_a_running_gateway_is_one_line_and_exit_2(fstack, tmp_path):
    from tests.conftest import free_port

    env = {**fstack.env, "GRIDLINE_PORT": str(free_port()), "GRIDLINE_SANDBOX_PORT": str(free_port()),
           "GRIDLINE_HOME": str(tmp_path)}
    for args, says in ((["sms", "路灯坏了", "--from", "+8617033259997"], "is `gridline up` running?"),
                       (["tick"], "Redis is not reachable")):
        done = subprocess.run([sys.executable, "-m", "gateway.cli", *args], env=env, cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
        assert (done.returncode, says in done.stderr) == (2, True), done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


def test_up_with_no_sms_sender_is_refused_in_one_line(tmp_path):
    env = {**os.environ, "GRIDLINE_HOME": str(tmp_path), "GRIDLINE_SMS_SENDERS": "0"}
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "up"], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    says = "gridline: bad settings: sms_senders must be at least 1, not 0"
    assert (done.returncode, done.stderr.strip()) == (2, says)


def test_a_national_number_is_read_in_the_default_region(fstack):
    done = fstack.gridline("sms", "查询", "--from", "17033259997", "--wait", "0")
    assert "gateway answered 200" in done.stdout, done.stderr


def test_merge_mistakes_are_refused_by_the_cli_with_the_reason(fstack):
    number = fstack.gridline("cases", "--state", "assigned", "--limit", "1").stdout.splitlines()[1].split()[0]
    for into, says in ((number, "cannot be merged into itself"), ("2001019999", "there is no case 2001019999")):
        done = fstack.gridline("case", number, "merge", "--into", into)
        assert (done.returncode, says in done.stderr) == (1, True), done.stderr


def test_the_log_holds_no_appeal_text_and_no_full_phone_number(fstack):
    """Everything above went through this stack: thousands of appeals and replies, refusals, 500s
    of the adapters' own, a 5xx logged with its exception. None of the texts or numbers is in the log."""
    sender = "+8617199007003"
    text = "幸福里小区东门路灯坏了一个星期了很危险"
    form = inbound_form(sender, text, fstack.settings)
    status, _, _ = send(fstack, "POST", "/webhooks/twilio/sms", urllib.parse.urlencode(form).encode(),
                        signed(fstack, "/webhooks/twilio/sms", form))
    assert status == 200
    wait_for(lambda: fstack.sent_to(sender), timeout=60, what="the acknowledgement")
    log = fstack.log_path.read_text()
    for secret in (text, "门口垃圾没人清", "路灯坏了", sender, GOOD_SENDER, "+8617033259997", "17033259997"):
        assert secret not in log, secret


def test_valid_appeals_sent_alongside_each_became_a_case(fstack):
    """Every valid appeal fuzz() sent was answered 200 (checked there), stored and processed into
    its own case (checked here, in the stack's store). Acknowledgements then go out at the
    sandbox's long-code pace (about one SMS segment a second), so they are not waited for."""
    from sqlalchemy import func, select

    from gateway.store import CaseRow, make_engine, session_factory

    if not SEEN["valid"]:  # run alone
        assert valid_appeal(fstack) == 200
        SEEN["valid"] += 1
    sessions = session_factory(make_engine(fstack.settings.sqlalchemy_url))

    def cases() -> int:
        with sessions() as session:
            return session.scalar(select(func.count()).where(CaseRow.reporter == GOOD_SENDER))

    wait_for(lambda: cases() >= SEEN["valid"], timeout=120, what="a case for every valid appeal")
    assert cases() == SEEN["valid"]


# --- Schemathesis against the description the gateway serves -----------------------------------


CHECKS = [schemathesis.checks.not_a_server_error, schemathesis.checks.status_code_conformance,
          schemathesis.checks.content_type_conformance, schemathesis.checks.response_headers_conformance,
          schemathesis.checks.response_schema_conformance, schemathesis.checks.negative_data_rejection,
          schemathesis.checks.positive_data_acceptance, schemathesis.checks.missing_required_header,
          schemathesis.checks.ignored_auth]
# An audience is a grammar over the city's own tags and grids, which a JSON schema cannot say: a
# schema-valid expression may still name an unknown tag, and that is a 400 with the reason.
GRAMMAR = {"/api/broadcasts", "/api/broadcasts/preview"}


def test_the_gateway_keeps_its_openapi_description(fstack, officer):
    """Schemathesis generates valid and invalid requests for every operation from the description
    served at /api/openapi.json (15 of each per operation) and checks every answer against it."""
    # A body over 64 KiB is refused with 413 before it is read: a rejection like any 4xx.
    config = schemathesis.config.SchemathesisConfig.from_dict({"checks": {"negative_data_rejection": {
        "expected-statuses": [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]}}})
    schema = schemathesis.openapi.from_url(f"{fstack.url}/api/openapi.json", config=config)
    headers = {"Authorization": f"Bearer {officer}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 14
    for operation in operations:
        inputs = [*operation.path_parameters, *operation.query, *operation.headers, *operation.body]
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if inputs else (GenerationMode.POSITIVE,):
            exercise(operation, mode, headers)


def exercise(operation, mode: GenerationMode, headers: dict[str, str]) -> None:
    checks = [c for c in CHECKS if not (c is schemathesis.checks.positive_data_acceptance
                                        and operation.path in GRAMMAR)]

    @settings(max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(operation.as_strategy(mode))
    def call(case) -> None:
        case.call_and_validate(headers=headers, checks=checks)
        SEEN["schemathesis_calls"] += 1
        SEEN["schemathesis_checks"] += len(checks)

    call()
