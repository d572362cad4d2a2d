"""The console over plain HTTP on the shared stack: security headers on every response, sign-in
needed for every page, CSRF tokens on the sign-in forms too, and cookies as the browser must keep them."""

from __future__ import annotations

import http.cookiejar
import re
import urllib.error
import urllib.parse
import urllib.request

import pytest

from tests.conftest import http_json, wait_for
from tests.test_case_lifecycle import WORKER, WORKER_TOKEN, bot_messages
from tests.test_sms_flow import CITY


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def opener() -> tuple[urllib.request.OpenerDirector, http.cookiejar.CookieJar]:
    jar = http.cookiejar.CookieJar()
    return urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), NoRedirect()), jar


def fetch(client, url: str | urllib.request.Request, form: dict | None = None):
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    try:
        return client.open(url if isinstance(url, urllib.request.Request) else urllib.request.Request(url, data=data),
                           timeout=10)
    except urllib.error.HTTPError as error:
        return error


@pytest.mark.parametrize("path", ["/console/signin", "/console/cases", "/console/figures.csv",
                                  "/console/static/console.css"])
def test_security_headers_on_every_response(stack, path):
    client, _ = opener()
    response = fetch(client, stack.url + path)
    csp = response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"


def test_pages_need_a_session(stack):
    client, _ = opener()
    for path in ("/console/", "/console/triage", "/console/cases/2601010001", "/console/broadcasts"):
        response = fetch(client, stack.url + path)
        assert (response.status, response.headers["Location"]) == (303, "/console/signin")
    assert fetch(client, stack.url + "/console/cases/2601010001/note", {"text": "x"}).status == 303


def test_sign_in_forms_carry_a_csrf_token(stack):
    client, jar = opener()
    page = fetch(client, stack.url + "/console/signin").read().decode()
    token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    pre = next(c for c in jar if c.name == "gridline_pre")
    assert pre.value == token and pre.has_nonstandard_attr("HttpOnly") and not pre.secure
    refused = fetch(client, stack.url + "/console/signin", {"phone": WORKER.phone})
    assert refused.status == 403 and "CSRF" in refused.read().decode()
    before = len(codes_sent(stack))
    sent = fetch(client, stack.url + "/console/signin", {"phone": WORKER.phone, "csrf": token})
    assert sent.status == 200 and 'name="code"' in sent.read().decode()
    wait_for(lambda: len(codes_sent(stack)) == before + 1, what="the code on the workers' bot")


def codes_sent(stack) -> list[str]:
    return [m["text"] for m in bot_messages(stack, WORKER_TOKEN, WORKER.telegram_chat_id)
            if "sign-in code" in m.get("text", "")]


def test_a_wrong_code_is_a_401_and_a_bad_phone_a_400(stack):
    client, _ = opener()
    token = re.search(r'name="csrf" value="([^"]+)"', fetch(client, stack.url + "/console/signin").read().decode())[1]
    wrong = fetch(client, stack.url + "/console/signin/code", {"phone": WORKER.phone, "code": "000000", "csrf": token})
    assert wrong.status == 401
    bad = fetch(client, stack.url + "/console/signin", {"phone": "whatsapp:+1", "csrf": token})
    assert bad.status == 400 and "phone number" in bad.read().decode()


def test_an_audience_outside_the_jurisdiction_is_refused_without_a_count(stack):
    officer = next(w for w in CITY.workers.values() if w.role == "community_officer")
    headers = {"Authorization": "Bearer " + stack.gridline("operator", "token", officer.id).stdout.strip()}
    status, body = http_json("POST", f"{stack.url}/api/broadcasts",
                             {"audience": "tag:elderly", "texts": {"zh": "通知"}}, headers)
    assert status == 403 and "outside your jurisdiction" in body["error"]
    assert not re.search(r"\d+ resident", body["error"])


@pytest.mark.parametrize("body, content_type, status", [
    (b"csrf=%ED%A0%80&phone=1", "application/x-www-form-urlencoded", 403),  # a lone surrogate's bytes
    (b"csrf=\xff\xfe&phone=\xff", "application/x-www-form-urlencoded", 400),  # not UTF-8: unreadable
    (b"--x\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\nA\r\n--x--\r\n", "multipart/form-data; boundary=x",
     415),
    (b"{}", "application/json", 415),
])
def test_odd_forms_are_refused_not_failed(stack, body, content_type, status):
    request = urllib.request.Request(stack.url + "/console/signin", data=body, headers={"Content-Type": content_type})
    assert fetch(opener()[0], request).status == status
