"""The real twilio client and our adapter against the fake Twilio API on a loopback port.

Proves both sides at once: the adapter's send/error mapping, and that the fake speaks the wire
format twilio-python expects (paths, auth, JSON shapes, paging, signed status callbacks).
"""

from __future__ import annotations

import queue
import re
import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import pytest
import requests
from aiohttp import web
from twilio.rest import Client

from adapters import SendError
from adapters.twilio_sms import SANDBOX_ACCOUNT_SID, SANDBOX_AUTH_TOKEN, make_client, parse_status, send, verify
from adapters.twilio_sms.sandbox import LoopbackServer, fake_twilio_server
from gateway.config import Settings
from tests.conftest import sandbox_process

GRIDLINE = "+8617000000000"
RESIDENT = "+8613800138000"
NEIGHBOUR = "+8613900139000"
REPLY = "您反映的3号楼楼道灯问题已派单，工单号GL-1042，维修人员今天下午到场。"
MESSAGES_PATH = f"/2010-04-01/Accounts/{SANDBOX_ACCOUNT_SID}/Messages.json"
_T = TypeVar("_T")


def eventually(check: Callable[[], _T], timeout: float = 5.0) -> _T:
    """Poll `check` until it returns something truthy (delivery runs in the background)."""
    deadline = time.monotonic() + timeout
    while not (result := check()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return result


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def fake() -> Iterator[LoopbackServer]:
    with fake_twilio_server() as server:
        yield server


@pytest.fixture(autouse=True)
def clean_fake(fake: LoopbackServer) -> None:
    requests.post(f"{fake.url}/_sandbox/reset", timeout=5).raise_for_status()


@pytest.fixture(scope="module")
def client(fake: LoopbackServer) -> Client:
    return make_client(Settings(twilio_api_base=fake.url))


def reply(client: Client, to: str = RESIDENT, body: str = REPLY, status_callback: str | None = None) -> str:
    return send(client, from_number=GRIDLINE, to=to, body=body, status_callback=status_callback)


def control(fake: LoopbackServer, path: str, spec: dict[str, Any]) -> None:
    requests.post(f"{fake.url}/_sandbox/{path}", json=spec, timeout=5).raise_for_status()


class StatusReceiver:
    """A StatusCallback endpoint on loopback that checks signatures the way the gateway does."""

    def __init__(self) -> None:
        self.url = ""
        self._posts: queue.Queue[tuple[bool, dict[str, str]]] = queue.Queue()

    async def receive(self, request: web.Request) -> web.Response:
        form = await request.post()
        signature = request.headers.get("X-Twilio-Signature")
        self._posts.put((verify(str(request.url), form, signature, SANDBOX_AUTH_TOKEN),
                         {name: str(value) for name, value in form.items()}))
        return web.Response(text="<Response/>", content_type="text/xml")

    def take(self, count: int) -> list[tuple[bool, dict[str, str]]]:
        return [self._posts.get(timeout=5) for _ in range(count)]


@pytest.fixture
def receiver() -> Iterator[StatusReceiver]:
    status_receiver = StatusReceiver()
    app = web.Application()
    app.router.add_post("/webhooks/twilio/status", status_receiver.receive)
    with LoopbackServer(app) as server:
        status_receiver.url = f"{server.url}/webhooks/twilio/status?outbox=7"
        yield status_receiver


# --- creating and reading messages -----------------------------------------------------------


def test_create_answers_a_twilio_message(fake: LoopbackServer) -> None:
    answer = requests.post(fake.url + MESSAGES_PATH, auth=(SANDBOX_ACCOUNT_SID, SANDBOX_AUTH_TOKEN),
                           data={"To": RESIDENT, "From": GRIDLINE, "Body": REPLY}, timeout=5)
    assert answer.status_code == 201
    message = answer.json()
    assert set(message) == {
        "account_sid", "api_version", "body", "date_created", "date_sent", "date_updated", "direction",
        "error_code", "error_message", "from", "messaging_service_sid", "num_media", "num_segments", "price",
        "price_unit", "sid", "status", "subresource_uris", "to", "uri"}
    assert re.fullmatch(r"SM[0-9a-f]{32}", message["sid"])
    assert (message["status"], message["direction"], message["body"]) == ("queued", "outbound-api", REPLY)
    assert (message["to"], message["from"], message["num_segments"]) == (RESIDENT, GRIDLINE, "1")
    assert message["uri"] == MESSAGES_PATH.replace(".json", f"/{message['sid']}.json")
    assert parsedate_to_datetime(message["date_created"]).tzinfo is not None
    assert message["date_sent"] is None


def test_send_returns_the_sid_and_delivery_follows(client: Client) -> None:
    sid = send(client, from_number=GRIDLINE, to=RESIDENT, body=REPLY * 2, status_callback=None)
    delivered = eventually(lambda: client.messages(sid).fetch().status == "delivered")
    assert delivered
    message = client.messages(sid).fetch()
    assert (message.sid, message.to, message.body, message.num_segments) == (sid, RESIDENT, REPLY * 2, "2")
    assert message.date_sent is not None


def test_list_filters_by_recipient_newest_first_across_pages(client: Client) -> None:
    sids = [reply(client, RESIDENT), reply(client, NEIGHBOUR), reply(client, RESIDENT)]
    expected = [sids[2], sids[0]]
    assert [m.sid for m in client.messages.list(to=RESIDENT)] == expected
    paged = client.messages.list(to=RESIDENT, page_size=1)  # one per page: follows next_page_uri
    assert [m.sid for m in paged] == expected
    assert [m.sid for m in client.messages.list(from_=GRIDLINE)] == sids[::-1]
    assert eventually(lambda: len(client.messages.list(
        to=RESIDENT, date_sent_after=datetime.now(UTC) - timedelta(minutes=5))) == 2)
    assert client.messages.list(to=RESIDENT, date_sent_after=datetime.now(UTC) + timedelta(minutes=5)) == []


def test_control_api_shows_and_forgets_messages(fake: LoopbackServer, client: Client) -> None:
    first, _ = reply(client, RESIDENT), reply(client, NEIGHBOUR)
    shown = requests.get(f"{fake.url}/_sandbox/messages", params={"to": RESIDENT}, timeout=5).json()
    assert [m["sid"] for m in shown["messages"]] == [first]
    reply(client, RESIDENT)
    assert requests.get(f"{fake.url}/_sandbox/recipients", timeout=5).json() == {RESIDENT: 2, NEIGHBOUR: 1}
    assert requests.delete(f"{fake.url}/_sandbox/messages", timeout=5).json() == {"deleted": 3}
    assert requests.get(f"{fake.url}/_sandbox/messages", timeout=5).json() == {"messages": []}
    refused = requests.post(f"{fake.url}/_sandbox/faults", json={"status": 200}, timeout=5)
    assert refused.status_code == 400


# --- errors ------------------------------------------------------------------------------------


def test_bad_credentials_get_twilios_401(fake: LoopbackServer) -> None:
    answer = requests.get(fake.url + MESSAGES_PATH, auth=(SANDBOX_ACCOUNT_SID, "wrong"), timeout=5)
    assert answer.status_code == 401
    assert answer.json() == {"code": 20003, "message": "Authenticate",
                             "more_info": "https://www.twilio.com/docs/errors/20003", "status": 401}
    assert answer.headers["WWW-Authenticate"] == 'Basic realm="Twilio API"'
    wrong = make_client(Settings(twilio_account_sid=SANDBOX_ACCOUNT_SID, twilio_auth_token="wrong",
                                 twilio_api_base=fake.url))
    with pytest.raises(SendError) as failed:
        reply(wrong)
    assert (failed.value.retryable, failed.value.code) == (False, "20003")


@pytest.mark.parametrize(("status", "code"), [(429, "20429"), (500, "20500"), (503, "20503")])
def test_injected_faults_are_retryable(fake: LoopbackServer, client: Client, status: int, code: str) -> None:
    control(fake, "faults", {"status": status, "count": 2})
    for _ in range(2):
        with pytest.raises(SendError) as failed:
            reply(client)
        assert (failed.value.retryable, failed.value.code) == (True, code)
        assert str(status) in str(failed.value)
    assert reply(client).startswith("SM")


def test_opted_out_recipient_is_final(fake: LoopbackServer, client: Client) -> None:
    control(fake, "opt-out", {"phone": RESIDENT})
    with pytest.raises(SendError) as failed:
        reply(client, RESIDENT)
    assert (failed.value.retryable, failed.value.code) == (False, "21610")
    assert "unsubscribed" in str(failed.value)
    assert reply(client, NEIGHBOUR).startswith("SM")


@pytest.mark.parametrize(("to", "body", "code"), [
    ("", REPLY, "21604"),
    (RESIDENT, "", "21602"),
    ("13800138000", REPLY, "21211"),  # not E.164
    (RESIDENT, "长" * 1601, "21617"),
])
def test_invalid_messages_are_final(client: Client, to: str, body: str, code: str) -> None:
    with pytest.raises(SendError) as failed:
        reply(client, to, body)
    assert (failed.value.retryable, failed.value.code) == (False, code)


def test_unreachable_twilio_is_retryable() -> None:
    nowhere = make_client(Settings(sandbox_port=closed_port()))
    with pytest.raises(SendError) as failed:
        reply(nowhere)
    assert failed.value.retryable
    assert failed.value.code is None


# --- status callbacks ---------------------------------------------------------------------------


def test_status_callbacks_arrive_signed(client: Client, receiver: StatusReceiver) -> None:
    sid = reply(client, status_callback=receiver.url)
    posts = receiver.take(2)
    assert [verified for verified, _ in posts] == [True, True]
    assert [parse_status(form).status for _, form in posts] == ["sent", "delivered"]
    _, form = posts[-1]
    assert form == {"SmsSid": sid, "SmsStatus": "delivered", "MessageStatus": "delivered", "To": RESIDENT,
                    "MessageSid": sid, "AccountSid": SANDBOX_ACCOUNT_SID, "From": GRIDLINE,
                    "ApiVersion": "2010-04-01"}


def test_out_of_order_callbacks_leave_twilio_at_the_furthest_status(
        fake: LoopbackServer, client: Client, receiver: StatusReceiver) -> None:
    control(fake, "faults", {"callbacks": ["delivered", "sent"]})
    sid = reply(client, status_callback=receiver.url)
    assert [parse_status(form).status for _, form in receiver.take(2)] == ["delivered", "sent"]
    assert client.messages(sid).fetch().status == "delivered"


def test_undelivered_reports_the_carrier_error(
        fake: LoopbackServer, client: Client, receiver: StatusReceiver) -> None:
    control(fake, "faults", {"callbacks": ["sent", "undelivered"], "error_code": 30003})
    sid = reply(client, status_callback=receiver.url)
    (_, sent), (verified, undelivered) = receiver.take(2)
    assert "ErrorCode" not in sent
    assert verified
    report = parse_status(undelivered)
    assert (report.provider_id, report.status, report.error_code) == (sid, "undelivered", "30003")
    message = client.messages(sid).fetch()
    assert (message.status, message.error_code) == ("undelivered", 30003)


def statuses_by_sid(posts: list[tuple[bool, dict[str, str]]]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for verified, form in posts:
        assert verified
        found.setdefault(form["MessageSid"], []).append(form["MessageStatus"])
    return found


def test_callbacks_mode_final_posts_only_the_last_status(
        fake: LoopbackServer, client: Client, receiver: StatusReceiver) -> None:
    control(fake, "callbacks", {"mode": "final"})
    control(fake, "faults", {"callbacks": ["sent", "undelivered"], "error_code": 30003})
    failed, delivered = reply(client, status_callback=receiver.url), reply(client, status_callback=receiver.url)
    control(fake, "callbacks", {"mode": "all"})  # applies to messages accepted from now on
    realistic = reply(client, status_callback=receiver.url)
    assert statuses_by_sid(receiver.take(4)) == {
        failed: ["undelivered"], delivered: ["delivered"], realistic: ["sent", "delivered"]}


def test_callbacks_mode_none_posts_nothing_but_delivery_goes_on(
        fake: LoopbackServer, client: Client, receiver: StatusReceiver) -> None:
    control(fake, "callbacks", {"mode": "none"})
    silent = reply(client, status_callback=receiver.url)
    control(fake, "callbacks", {"mode": "all"})
    reported = reply(client, status_callback=receiver.url)
    assert statuses_by_sid(receiver.take(2)) == {reported: ["sent", "delivered"]}
    assert eventually(lambda: client.messages(silent).fetch().status == "delivered")
    refused = requests.post(f"{fake.url}/_sandbox/callbacks", json={"mode": "some"}, timeout=5)
    assert refused.status_code == 400


def test_unreachable_status_callback_does_not_stop_sending(client: Client) -> None:
    sid = reply(client, status_callback=f"http://127.0.0.1:{closed_port()}/webhooks/twilio/status")
    assert eventually(lambda: client.messages(sid).fetch().status == "delivered")


# --- as a process, the way `gridline up` runs it ------------------------------------------------


def test_runs_as_a_module_on_a_free_port() -> None:
    with sandbox_process("adapters.twilio_sms.sandbox", "--account-sid", SANDBOX_ACCOUNT_SID,
                         "--auth-token", SANDBOX_AUTH_TOKEN) as url:
        assert reply(make_client(Settings(twilio_api_base=url))).startswith("SM")
