"""The generic HTTP channel in both directions, in the style of nyaruka/courier's handler tests.

In: signed JSON and form bodies, with a city's own field names, go through the channel as the
gateway's one webhook handler drives it, and come out as the parsed message or delivery report, or
as a refusal with its status and reason. Out: an Outgoing goes through `HttpChannel.send` to the
loopback fake, which records the exact request it received (method, path, content type, fields,
signature, Authorization).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from dataclasses import replace
from urllib.parse import urlencode

import pytest
from multidict import CIMultiDict, MultiDict

from adapters import DeliveryStatus, InboundError, InboundMessage, Outgoing, Request, SendError
from adapters.http_api import INBOUND_PATH, STATUS_PATH, Config, HttpChannel
from adapters.http_api.sandbox import fake_http_gateway
from tests.conftest import free_port, http_json

SECRET = "b7e1c2d94f0a4e6c8d2b1a3f5e7c9d0b"
RESIDENT = "+8613800138000"
LAMP = "3号楼楼道灯坏了一个星期，晚上老人上下楼很危险"
# A domestic SMS gateway with its own field names and status words.
CONFIG = Config(secret=SECRET, signature_header="X-Gateway-Signature", sender_field="mobile", text_field="content",
                id_field="msgid", status_id_field="msgid", status_field="stat", status_reference_field="ref",
                status_error_field="err", status_map="ACCEPTD:sending,SENT:sent,DELIVRD:delivered,"
                                                     "UNDELIV:undelivered,REJECTD:failed",
                region="CN", send_authorization="Bearer gw-token-1")
CHANNEL = HttpChannel(CONFIG)


def sign(body: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def call(path: str, body: bytes, content_type: str = "application/json", signature: str | None = "auto") -> Request:
    headers = CIMultiDict({"Content-Type": content_type})
    if signature is not None:
        headers["X-Gateway-Signature"] = sign(body) if signature == "auto" else signature
    return Request("https://gridline.example.cn" + path, path, headers, MultiDict(), body)


def as_json(**fields: object) -> bytes:
    return json.dumps(fields, ensure_ascii=False).encode()


def as_form(**fields: str) -> bytes:
    return urlencode(fields).encode()


def handle(request: Request, channel: HttpChannel = CHANNEL) -> tuple[int, object]:
    """The gateway's webhook handler, without the web framework and the store."""
    try:
        channel.verify(request)
        if request.path == INBOUND_PATH:
            return 200, channel.parse_inbound(request)
        return 200, channel.parse_status(request)
    except InboundError as refused:
        return refused.status, refused.reason


def message(text: str = LAMP, sender: str = RESIDENT, provider_id: str = "MO20261203-0001") -> list[InboundMessage]:
    return [InboundMessage(channel="http", provider_id=provider_id, sender=sender, text=text)]


FORM = "application/x-www-form-urlencoded"
BAD_SIGNATURE = "X-Gateway-Signature missing or invalid"
NOT_A_PHONE = ("mobile is not a phone number we can text: "
               "a phone number has only digits, spaces, ( ) . - and a leading +")
INBOUND = [
    ("JSON", call(INBOUND_PATH, as_json(mobile=RESIDENT, content=LAMP, msgid="MO20261203-0001")), (200, message())),
    ("form", call(INBOUND_PATH, as_form(mobile=RESIDENT, content=LAMP, msgid="MO20261203-0001"), FORM),
     (200, message())),
    ("id as a JSON number", call(INBOUND_PATH, as_json(mobile=RESIDENT, content=LAMP, msgid=20261203)),
     (200, message(provider_id="20261203"))),
    ("signature with a sha256= prefix",
     call(INBOUND_PATH, body := as_json(mobile=RESIDENT, content=LAMP, msgid="MO20261203-0001"),
          signature="sha256=" + sign(body)), (200, message())),
    ("local number read in the city's region",
     call(INBOUND_PATH, as_json(mobile="138 0013 8000", content=LAMP, msgid="MO20261203-0001")), (200, message())),
    ("emoji and quotes kept", call(INBOUND_PATH, as_json(mobile=RESIDENT, content='垃圾😡 "满了"', msgid="m2")),
     (200, message('垃圾😡 "满了"', provider_id="m2"))),
    # --- refused -----------------------------------------------------------------------------------
    ("unsigned", call(INBOUND_PATH, as_json(mobile=RESIDENT, content=LAMP, msgid="1"), signature=None),
     (403, BAD_SIGNATURE)),
    ("signed with another secret",
     call(INBOUND_PATH, body := as_json(mobile=RESIDENT, content=LAMP, msgid="1"), signature=sign(body, "x" * 32)),
     (403, BAD_SIGNATURE)),
    ("altered after signing",
     call(INBOUND_PATH, as_json(mobile=RESIDENT, content="已解决", msgid="1"),
          signature=sign(as_json(mobile=RESIDENT, content=LAMP, msgid="1"))), (403, BAD_SIGNATURE)),
    ("signature header with bytes that are not UTF-8",
     call(INBOUND_PATH, as_json(mobile=RESIDENT, content=LAMP, msgid="1"), signature="\udcff\udcfe"),
     (403, BAD_SIGNATURE)),
    ("not JSON", call(INBOUND_PATH, b"mobile=1"), (400, "body is not JSON: Expecting value: line 1 column 1 (char 0)")),
    ("a JSON array", call(INBOUND_PATH, b"[]"), (400, "body must be a JSON object")),
    ("nested 30,000 deep", call(INBOUND_PATH, b"[" * 30_000 + b"]" * 30_000),
     (400, "body is not JSON: nested too deep")),
    ("a lone surrogate in the text",
     call(INBOUND_PATH, b'{"mobile": "+8613800138000", "content": "\\ud800", "msgid": "1"}'),
     (400, "body holds a lone UTF-16 surrogate, which is not text")),
    ("neither JSON nor a form", call(INBOUND_PATH, b"hello", "text/plain"),
     (415, "expected application/json or application/x-www-form-urlencoded")),
    ("form that is not UTF-8", call(INBOUND_PATH, b"mobile=%FF&content=x&msgid=1", FORM),
     (400, "form body is not valid UTF-8")),
    ("missing sender", call(INBOUND_PATH, as_json(content=LAMP, msgid="1")), (400, "missing mobile")),
    ("missing text", call(INBOUND_PATH, as_json(mobile=RESIDENT, msgid="1")), (400, "missing content")),
    ("empty text", call(INBOUND_PATH, as_json(mobile=RESIDENT, content="", msgid="1")), (400, "missing content")),
    ("missing id", call(INBOUND_PATH, as_json(mobile=RESIDENT, content=LAMP)), (400, "missing msgid")),
    ("id past 64 characters", call(INBOUND_PATH, as_json(mobile=RESIDENT, content=LAMP, msgid="x" * 65)),
     (400, "msgid has more than 64 characters")),
    ("text as an object", call(INBOUND_PATH, as_json(mobile=RESIDENT, content={"a": 1}, msgid="1")),
     (400, "content must be a string")),
    ("WhatsApp sender", call(INBOUND_PATH, as_json(mobile="whatsapp:+8613800138000", content=LAMP, msgid="1")),
     (400, NOT_A_PHONE)),
    ("a word as sender", call(INBOUND_PATH, as_json(mobile="abc", content=LAMP, msgid="1")), (400, NOT_A_PHONE)),
    ("too short for its country", call(INBOUND_PATH, as_json(mobile="+86123", content=LAMP, msgid="1")),
     (400, "mobile is not a phone number we can text: not a possible phone number (wrong length for its country)")),
]


@pytest.mark.parametrize(("request_", "expected"), [c[1:] for c in INBOUND], ids=[c[0] for c in INBOUND])
def test_inbound(request_: Request, expected: tuple[int, object]) -> None:
    assert handle(request_) == expected


APP = HttpChannel(replace(CONFIG, phone_senders=False))


@pytest.mark.parametrize(("sender", "expected"), [
    ("user-42", (200, message(sender="user-42", provider_id="1"))),
    ("user\n42", (400, "mobile must be printable")),
    ("u" * 65, (400, "mobile has more than 64 characters")),
])
def test_an_app_whose_users_are_not_phones(sender: str, expected: tuple[int, object]) -> None:
    assert handle(call(INBOUND_PATH, as_json(mobile=sender, content=LAMP, msgid="1")), APP) == expected
    assert not APP.phone_addresses and CHANNEL.phone_addresses


REFERENCE_DIGITS = "ref must be a number of at most 18 ASCII digits"
STATUSES = [
    ("delivered, echoing our id", call(STATUS_PATH, as_json(msgid="HT1", stat="DELIVRD", ref="17")),
     (200, [DeliveryStatus("HT1", "delivered", delivery_id=17)])),
    ("as a form", call(STATUS_PATH, as_form(msgid="HT1", stat="SENT", ref="17"), FORM),
     (200, [DeliveryStatus("HT1", "sent", delivery_id=17)])),
    ("accepted is still sending", call(STATUS_PATH, as_json(msgid="HT1", stat="ACCEPTD")),
     (200, [DeliveryStatus("HT1", "sending")])),
    ("undelivered with the provider's error", call(STATUS_PATH, as_json(msgid="HT1", stat="UNDELIV", err="MK:0005")),
     (200, [DeliveryStatus("HT1", "undelivered", "MK:0005")])),
    ("rejected is failed", call(STATUS_PATH, as_json(msgid="HT1", stat="REJECTD")),
     (200, [DeliveryStatus("HT1", "failed")])),
    ("our id alone is enough", call(STATUS_PATH, as_json(stat="DELIVRD", ref="17")),
     (200, [DeliveryStatus("", "delivered", delivery_id=17)])),
    ("unknown word", call(STATUS_PATH, as_json(msgid="HT1", stat="delivered")), (400, "unknown stat 'delivered'")),
    ("missing status", call(STATUS_PATH, as_json(msgid="HT1")), (400, "missing stat")),
    ("neither their id nor ours", call(STATUS_PATH, as_json(stat="DELIVRD")), (400, "missing msgid")),
    ("reference superscript two", call(STATUS_PATH, as_json(msgid="HT1", stat="DELIVRD", ref="²")),
     (400, REFERENCE_DIGITS)),
    ("reference 10^23", call(STATUS_PATH, as_json(msgid="HT1", stat="DELIVRD", ref="1" + "0" * 23)),
     (400, REFERENCE_DIGITS)),
    ("unsigned", call(STATUS_PATH, as_json(msgid="HT1", stat="DELIVRD"), signature=None), (403, BAD_SIGNATURE)),
]


@pytest.mark.parametrize(("request_", "expected"), [c[1:] for c in STATUSES], ids=[c[0] for c in STATUSES])
def test_delivery_reports(request_: Request, expected: tuple[int, object]) -> None:
    assert handle(request_) == expected


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("status_map", "DELIVRD:done", "does not map to one of"),
    ("send_body", "[1, 2]", "must be a JSON object"),
    ("send_body", "{to}", "is not JSON"),
    ("send_format", "xml", "GRIDLINE_HTTP_SEND_FORMAT must be one of"),
])
def test_a_configuration_that_does_not_hold_together_is_refused_when_built(field: str, value: str,
                                                                            reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        HttpChannel(replace(CONFIG, **{field: value}))


def test_settings_come_as_text() -> None:
    config = Config.from_strings({"secret": "s", "phone_senders": "no", "rate_limit": "2.5", "max_length": "480"})
    assert (config.phone_senders, config.rate_limit, config.max_length) == (False, 2.5, 480)
    assert HttpChannel(config).limits.rate == 2.5 and HttpChannel(config).limits.max_length == 480
    with pytest.raises(ValueError, match="GRIDLINE_HTTP_PHONE_SENDERS"):
        Config.from_strings({"phone_senders": "maybe"})
    with pytest.raises(ValueError, match="unknown HTTP channel setting"):
        Config.from_strings({"secrte": "s"})


# --- outbound: the exact request the provider receives -------------------------------------------------

NESTED = '{"mobile": "{to}", "content": "{text}", "ext": {"ref": "{id}", "tags": ["grid", "{id}"]}}'
OUTGOING = [
    ("JSON, the default template", {}, Outgoing(42, RESIDENT, LAMP),
     "application/json", {"to": RESIDENT, "text": LAMP, "id": "42"}),
    ("JSON, nested template", {"send_body": NESTED}, Outgoing(43, RESIDENT, LAMP),
     "application/json", {"mobile": RESIDENT, "content": LAMP, "ext": {"ref": "43", "tags": ["grid", "43"]}}),
    ("a text with quotes, braces and placeholders stays data", {}, Outgoing(44, RESIDENT, 'a "b" {id} {to} }{'),
     "application/json", {"to": RESIDENT, "text": 'a "b" {id} {to} }{', "id": "44"}),
    ("form with a constant field",
     {"send_format": "form", "send_body": '{"phone": "{to}", "msg": "{text}", "ref": "{id}", "sign": "【网格】"}'},
     Outgoing(45, RESIDENT, LAMP), "application/x-www-form-urlencoded",
     {"phone": RESIDENT, "msg": LAMP, "ref": "45", "sign": "【网格】"}),
]


def send(channel: HttpChannel, outgoing: Outgoing) -> str:
    async def go() -> str:
        try:
            return await channel.send(outgoing)
        finally:
            await channel.close()

    return asyncio.run(go())


@pytest.mark.parametrize(("changes", "outgoing", "content_type", "fields"), [c[1:] for c in OUTGOING],
                         ids=[c[0] for c in OUTGOING])
def test_send_posts_exactly_this(changes: dict[str, str], outgoing: Outgoing, content_type: str,
                                 fields: dict[str, object]) -> None:
    port = free_port()
    config = replace(CONFIG, sandbox_port=port, response_id_field="data.msgid", **changes)
    with fake_http_gateway(config, "http://127.0.0.1:1", port=port) as fake:  # reports go nowhere
        provider_id = send(HttpChannel(config), outgoing)
        _, recorded = http_json("GET", fake.url + "/_sandbox/messages")
    [request] = recorded["messages"]
    assert provider_id == request["id"] and provider_id.startswith("HT")
    assert (request["method"], request["path"], request["content_type"]) == ("POST", "/send", content_type)
    assert request["fields"] == fields
    assert request["authorization"] == "Bearer gw-token-1"
    assert request["signature"] == sign(request["body"].encode())


@pytest.mark.parametrize(("status", "retryable", "code"), [
    (503, True, "503"), (429, True, "rate_limited"), (400, False, "400"), (401, False, "401"),
])
def test_send_failures_say_whether_a_retry_may_help(status: int, retryable: bool, code: str) -> None:
    port = free_port()
    config = replace(CONFIG, sandbox_port=port)
    with fake_http_gateway(config, "http://127.0.0.1:1", port=port) as fake:
        assert http_json("POST", fake.url + "/_sandbox/faults", {"status": status})[0] == 200
        with pytest.raises(SendError) as failed:
            send(HttpChannel(config), Outgoing(1, RESIDENT, LAMP))
    assert (failed.value.retryable, failed.value.code) == (retryable, code)


def test_send_to_a_gateway_that_is_not_there_is_retried() -> None:
    config = replace(CONFIG, send_url=f"http://127.0.0.1:{free_port()}/send")
    with pytest.raises(SendError) as failed:
        send(HttpChannel(config), Outgoing(1, RESIDENT, LAMP))
    assert (failed.value.retryable, failed.value.code) == (True, "network")


def test_an_answer_without_the_id_field_is_a_configuration_error() -> None:
    port = free_port()
    config = replace(CONFIG, sandbox_port=port)
    with fake_http_gateway(config, "http://127.0.0.1:1", port=port):
        with pytest.raises(SendError, match="without 'other'") as failed:
            send(HttpChannel(replace(config, response_id_field="other")), Outgoing(1, RESIDENT, LAMP))
    assert not failed.value.retryable
