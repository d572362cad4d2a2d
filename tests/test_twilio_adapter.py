"""The Twilio SMS channel in both directions, in the style of nyaruka/courier's handler tests.

In: each case is a form body shaped like the ones Twilio really posts, how it is signed, and what
the gateway should answer. `handle` is what the gateway's one webhook handler does with a channel:
`verify` (403), then `parse_inbound` / `parse_status` (InboundError's status and reason), else 200
with what was parsed. Out: an Outgoing goes through `TwilioSms.send` (twilio's own asyncio client)
to the loopback sandbox, which records the exact request it received.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
from multidict import CIMultiDict, MultiDict
from twilio.request_validator import RequestValidator

from adapters import DELIVERY_STATES, DeliveryStatus, InboundError, InboundMessage, Outgoing, Request, parse_form
from adapters.twilio_sms import (
    EMPTY_TWIML,
    STATUS_ORDER,
    TwilioSms,
    parse_status,
    segments,
    sign,
    status_rank,
    verify,
)
from adapters.twilio_sms.sandbox import fake_twilio_server
from tests.conftest import http_json

AUTH_TOKEN = "3f9c2a7d51e84b6c9a0d2e4f6b8c1d3e"
ACCOUNT_SID = "AC5d3c1e9f7b2a4c6e8d0f1a3b5c7d9e2f"
PUBLIC_URL = "https://gridline.example.cn/webhooks/twilio/sms"
SID = "SM7c2e4a6b8d0f1e3c5a7b9d1f3e5c7a9b"
RESIDENT = "+8613800138000"
GRIDLINE = "+8617000000000"
ANGRY = "3号楼楼道灯坏了一个星期，晚上老人上下楼很危险，请尽快派人修理！"
LONG = ("幸福里社区6栋的垃圾桶已经三天没有清运了，天气热，味道很大，还招来很多苍蝇，"
        "楼下小孩玩耍很不卫生。之前打过物业电话，说会处理，但是一直没有人来。") * 3


def twilio_form(**fields: str | None) -> dict[str, str]:
    """Every parameter Twilio documents for an inbound SMS webhook; None drops one."""
    form = {
        "ToCountry": "CN", "ToState": "", "SmsMessageSid": SID, "NumMedia": "0", "ToCity": "",
        "FromZip": "", "SmsSid": SID, "FromState": "Beijing", "SmsStatus": "received", "FromCity": "Beijing",
        "Body": ANGRY, "FromCountry": "CN", "To": GRIDLINE, "MessagingServiceSid": "MG" + "4b" * 16,
        "ToZip": "", "NumSegments": "1", "MessageSid": SID, "AccountSid": ACCOUNT_SID, "From": RESIDENT,
        "ApiVersion": "2010-04-01",
    }
    for name, value in fields.items():
        if value is None:
            form.pop(name, None)
        else:
            form[name] = value
    return form


def message(text: str = ANGRY, media: tuple[str, ...] = (), provider_id: str = SID) -> InboundMessage:
    return InboundMessage(channel="sms", provider_id=provider_id, sender=RESIDENT, text=text, media=media)


# --- how a case is signed: each takes the form and gives the X-Twilio-Signature header ---------

Signer = Callable[[dict[str, str]], str | None]


def signed(form: dict[str, str]) -> str:
    return sign(PUBLIC_URL, form, AUTH_TOKEN)


def unsigned(form: dict[str, str]) -> None:
    return None


def garbled(form: dict[str, str]) -> str:
    return signed(form)[::-1]


def signed_for(url: str) -> Signer:
    return lambda form: sign(url, form, AUTH_TOKEN)


def signed_with(token: str) -> Signer:
    return lambda form: sign(PUBLIC_URL, form, token)


def signed_before(**changes: str) -> Signer:
    """Signed, then altered in transit."""
    return lambda form: signed({**form, **changes})


def channel(api_base: str = "https://api.twilio.com") -> TwilioSms:
    return TwilioSms(ACCOUNT_SID, AUTH_TOKEN, GRIDLINE, api_base, "https://gridline.example.cn/webhooks/twilio/status",
                     region="CN")


def request(url: str, form: dict[str, str], signature: str | None,
            content_type: str = "application/x-www-form-urlencoded") -> Request:
    """The call as the gateway's webhook handler hands it to the channel."""
    parts = urlsplit(url)
    headers = CIMultiDict({"Content-Type": content_type})
    if signature is not None:
        headers["X-Twilio-Signature"] = signature
    return Request(url, parts.path, headers, MultiDict(parse_qsl(parts.query)), urlencode(form).encode())


def handle(call: Request, kind: str = "inbound") -> tuple[int, object]:
    """The gateway's webhook handler, without the web framework and the store."""
    sms = channel()
    try:
        sms.verify(call)
        parsed = sms.parse_inbound(call) if kind == "inbound" else sms.parse_status(call)
    except InboundError as refused:
        return refused.status, refused.reason
    [one] = parsed
    assert sms.answer(sms.routes()[0]).body == EMPTY_TWIML
    return 200, one


@dataclass(frozen=True)
class Case:
    name: str
    form: dict[str, str]
    expected: InboundMessage | str  # the message on 200, else the reason
    status: int = 200
    signer: Signer = signed
    url: str = PUBLIC_URL  # the URL the gateway rebuilds from GRIDLINE_PUBLIC_URL + path


INBOUND_CASES = [
    Case("chinese text", twilio_form(), message()),
    Case("emoji", twilio_form(Body="垃圾站又满了😡🗑️ 谁来管管？"), message("垃圾站又满了😡🗑️ 谁来管管？")),
    Case("long text joined by twilio", twilio_form(Body=LONG, NumSegments="4"), message(LONG)),
    Case("text kept verbatim", twilio_form(Body="  退订 \n"), message("  退订 \n")),
    Case("legacy SmsMessageSid only", twilio_form(MessageSid=None), message()),
    Case("mms with text",
         twilio_form(Body="看照片，井盖没了", NumMedia="2", MediaUrl0="https://api.twilio.com/m/ME1",
                     MediaContentType0="image/jpeg", MediaUrl1="https://api.twilio.com/m/ME2",
                     MediaContentType1="image/png"),
         message("看照片，井盖没了", ("https://api.twilio.com/m/ME1", "https://api.twilio.com/m/ME2"))),
    Case("mms without text",
         twilio_form(Body="", NumMedia="1", MediaUrl0="https://api.twilio.com/m/ME1",
                     MediaContentType0="image/jpeg"),
         message("", ("https://api.twilio.com/m/ME1",))),
    Case("mms without Body field",
         twilio_form(Body=None, NumMedia="1", MediaUrl0="https://api.twilio.com/m/ME1"),
         message("", ("https://api.twilio.com/m/ME1",))),
    Case("missing MessageSid", twilio_form(MessageSid=None, SmsMessageSid=None), "missing MessageSid", 400),
    Case("missing From", twilio_form(From=None), "missing From", 400),
    Case("missing Body", twilio_form(Body=None), "missing Body", 400),
    Case("empty Body without media", twilio_form(Body=""), "empty Body", 400),
    Case("NumMedia without MediaUrl", twilio_form(NumMedia="2", MediaUrl0="https://api.twilio.com/m/ME1"),
         "missing MediaUrl1", 400),
    Case("NumMedia not a number", twilio_form(NumMedia="two"), "NumMedia must be a number of at most 18 ASCII digits",
         400),
    # Unicode digits pass str.isdigit(): "²" then fails int(), "٣" (Arabic-Indic three) passes it.
    Case("NumMedia superscript two", twilio_form(NumMedia="²"), "NumMedia must be a number of at most 18 ASCII digits",
         400),
    Case("NumMedia Arabic-Indic digit", twilio_form(NumMedia="٣"),
         "NumMedia must be a number of at most 18 ASCII digits", 400),
    Case("NumMedia past 64 bits", twilio_form(NumMedia="1" + "0" * 23),
         "NumMedia must be a number of at most 18 ASCII digits", 400),
    Case("NumMedia past Twilio's 10", twilio_form(NumMedia="11"), "NumMedia must be at most 10", 400),
    # A sender nobody could text back is refused, never a case: WhatsApp, short names, words.
    Case("WhatsApp sender", twilio_form(From="whatsapp:+8613800138000"),
         "From is not a phone number we can text: a phone number has only digits, spaces, ( ) . - and a leading +",
         400),
    Case("WhatsApp sender without a number", twilio_form(From="whatsapp:US.1234"),
         "From is not a phone number we can text: a phone number has only digits, spaces, ( ) . - and a leading +",
         400),
    Case("a word as sender", twilio_form(From="abc"),
         "From is not a phone number we can text: a phone number has only digits, spaces, ( ) . - and a leading +",
         400),
    Case("too short for its country", twilio_form(From="+86123"),
         "From is not a phone number we can text: not a possible phone number (wrong length for its country)", 400),
    Case("national number read in the city's region", twilio_form(From="13800138000"), message()),
    Case("empty form", {}, "missing MessageSid", 400),
    Case("bad signature", twilio_form(), "X-Twilio-Signature missing or invalid", 403, garbled),
    Case("missing signature", twilio_form(), "X-Twilio-Signature missing or invalid", 403, unsigned),
    Case("signed for another URL", twilio_form(), "X-Twilio-Signature missing or invalid", 403,
         signed_for("https://gridline.example.cn/webhooks/twilio/status")),
    Case("signed with another token", twilio_form(), "X-Twilio-Signature missing or invalid", 403,
         signed_with("0" * 32)),
    Case("body altered after signing", twilio_form(), "X-Twilio-Signature missing or invalid", 403,
         signed_before(Body="已解决")),
    Case("signed with default port", twilio_form(), message(), 200,
         signed_for("https://gridline.example.cn:443/webhooks/twilio/sms")),
    Case("signed without the port we listen on", twilio_form(), message(), 200,
         signed_for("http://gridline.example.cn/webhooks/twilio/sms"),
         url="http://gridline.example.cn:8080/webhooks/twilio/sms"),
    Case("signed for another port", twilio_form(), "X-Twilio-Signature missing or invalid", 403,
         signed_for("http://gridline.example.cn:9090/webhooks/twilio/sms"),
         url="http://gridline.example.cn:8080/webhooks/twilio/sms"),
]


@pytest.mark.parametrize("case", INBOUND_CASES, ids=[case.name for case in INBOUND_CASES])
def test_inbound_webhook(case: Case) -> None:
    signature = case.signer(case.form)
    assert handle(request(case.url, case.form, signature)) == (case.status, case.expected)
    if signature is not None:  # same verdict as the library's own validate()
        valid = RequestValidator(AUTH_TOKEN).validate(case.url, case.form, signature)
        assert verify(case.url, case.form, signature, AUTH_TOKEN) is valid


def test_a_body_that_is_not_a_form_is_refused_before_its_signature_is_checked() -> None:
    form = twilio_form()
    call = request(PUBLIC_URL, form, signed(form), content_type="application/json")
    assert handle(call) == (415, "expected application/x-www-form-urlencoded")


def test_verify_takes_plain_dicts_and_multidicts_alike() -> None:
    form = twilio_form()
    signature = signed(form)
    assert signature == RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC_URL, form)
    assert verify(PUBLIC_URL, form, signature, AUTH_TOKEN)
    assert verify(PUBLIC_URL, MultiDict(form), signature, AUTH_TOKEN)


def test_verify_computes_one_signature_when_the_url_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    compute = RequestValidator.compute_signature

    def counting(self: RequestValidator, uri: str, params: object, algorithm: str | None = None) -> str:
        calls.append(uri)
        return compute(self, uri, params, algorithm)

    form = twilio_form()
    signature, forged = signed(form), garbled(form)
    monkeypatch.setattr(RequestValidator, "compute_signature", counting)
    assert verify(PUBLIC_URL, form, signature, AUTH_TOKEN)
    assert calls == [PUBLIC_URL]
    calls.clear()
    assert not verify(PUBLIC_URL, form, forged, AUTH_TOKEN)
    assert calls == [PUBLIC_URL, "https://gridline.example.cn:443/webhooks/twilio/sms"]


# --- delivery reports ------------------------------------------------------------------------


def status_form(**fields: str | None) -> dict[str, str]:
    """The fields Twilio posts to a StatusCallback for an SMS; None drops one."""
    form = {"SmsSid": SID, "SmsStatus": "delivered", "MessageStatus": "delivered", "To": RESIDENT,
            "MessageSid": SID, "AccountSid": ACCOUNT_SID, "From": GRIDLINE, "ApiVersion": "2010-04-01"}
    for name, value in fields.items():
        if value is None:
            form.pop(name, None)
        else:
            form[name] = value
    return form


STATUS_URL = "https://gridline.example.cn/webhooks/twilio/status"
LEGACY_URL = "https://gridline.example.cn/webhooks/twilio/broadcast-status"
DIGITS = "delivery must be a number of at most 18 ASCII digits"

# (name, callback URL, form, what the channel makes of it). Twilio's words become the one delivery
# vocabulary here; our row id comes from the callback URL.
STATUS_CASES = [
    ("sent", STATUS_URL + "?delivery=42", status_form(SmsStatus="sent", MessageStatus="sent"),
     DeliveryStatus(SID, "sent", delivery_id=42)),
    ("delivered", STATUS_URL + "?delivery=42", status_form(), DeliveryStatus(SID, "delivered", delivery_id=42)),
    ("queued is still sending", STATUS_URL + "?delivery=42", status_form(MessageStatus="queued"),
     DeliveryStatus(SID, "sending", delivery_id=42)),
    ("accepted is still sending", STATUS_URL + "?delivery=42", status_form(MessageStatus="accepted"),
     DeliveryStatus(SID, "sending", delivery_id=42)),
    ("undelivered with carrier error", STATUS_URL + "?delivery=42",
     status_form(SmsStatus="undelivered", MessageStatus="undelivered", ErrorCode="30003"),
     DeliveryStatus(SID, "undelivered", "30003", delivery_id=42)),
    ("opted out", STATUS_URL + "?delivery=42", status_form(SmsStatus="failed", MessageStatus="failed",
                                                            ErrorCode="21610"),
     DeliveryStatus(SID, "failed", "21610", delivery_id=42)),
    ("canceled is failed", STATUS_URL + "?delivery=42", status_form(MessageStatus="canceled"),
     DeliveryStatus(SID, "failed", delivery_id=42)),
    ("empty ErrorCode", STATUS_URL + "?delivery=42", status_form(ErrorCode=""),
     DeliveryStatus(SID, "delivered", delivery_id=42)),
    ("read receipt is delivered", STATUS_URL + "?delivery=42", status_form(SmsStatus="read", MessageStatus="read"),
     DeliveryStatus(SID, "delivered", delivery_id=42)),
    ("legacy SmsStatus only", STATUS_URL + "?delivery=42", status_form(MessageStatus=None),
     DeliveryStatus(SID, "delivered", delivery_id=42)),
    ("legacy ?outbox=", STATUS_URL + "?outbox=7", status_form(), DeliveryStatus(SID, "delivered", delivery_id=7)),
    ("no id on the URL: found by MessageSid", STATUS_URL, status_form(), DeliveryStatus(SID, "delivered")),
    ("legacy broadcast route: its ids are of a table that is gone", LEGACY_URL + "?delivery=42", status_form(),
     DeliveryStatus(SID, "delivered")),
    ("delivery superscript two", STATUS_URL + "?delivery=%C2%B2", status_form(), (400, DIGITS)),
    ("delivery 10^23", STATUS_URL + "?delivery=1" + "0" * 23, status_form(), (400, DIGITS)),
    ("outbox superscript two", STATUS_URL + "?outbox=%C2%B2", status_form(), (400, DIGITS)),
    ("delivery negative", STATUS_URL + "?delivery=-1", status_form(), (400, DIGITS)),
    ("missing MessageSid", STATUS_URL, status_form(MessageSid=None), (400, "missing MessageSid")),
    ("missing status", STATUS_URL, status_form(MessageStatus=None, SmsStatus=None), (400, "missing MessageStatus")),
    ("unknown status", STATUS_URL, status_form(MessageStatus="huh"), (400, "unknown MessageStatus 'huh'")),
    ("inbound status is no delivery report", STATUS_URL, status_form(MessageStatus="received"),
     (400, "unknown MessageStatus 'received'")),
    ("signed for another callback URL", STATUS_URL + "?delivery=43", status_form(),
     (403, "X-Twilio-Signature missing or invalid")),
]


@pytest.mark.parametrize(("url", "form", "expected"), [case[1:] for case in STATUS_CASES],
                         ids=[case[0] for case in STATUS_CASES])
def test_status_callback(url: str, form: dict[str, str], expected: DeliveryStatus | tuple[int, str]) -> None:
    signed_url = STATUS_URL + "?delivery=42" if url.endswith("?delivery=43") else url
    outcome = handle(request(url, form, sign(signed_url, form, AUTH_TOKEN)), kind="status")
    assert outcome == (expected if isinstance(expected, tuple) else (200, expected))


def test_every_twilio_status_maps_into_the_one_vocabulary() -> None:
    for status in STATUS_ORDER:
        assert parse_status(MultiDict(status_form(MessageStatus=status))).status in DELIVERY_STATES


@pytest.mark.parametrize(("arrivals", "stored"), [
    (["queued", "sent", "delivered"], "delivered"),
    (["delivered", "sent"], "delivered"),  # the late "sent" must not undo delivery
    (["sent", "queued"], "sent"),
    (["sending", "failed", "sent"], "failed"),
    (["delivered", "undelivered"], "delivered"),  # the first verdict sticks
    (["delivered", "read"], "read"),
    (["accepted", "queued", "sent"], "sent"),
])
def test_reports_move_delivery_state_forward_only(arrivals: list[str], stored: str) -> None:
    state = ""
    for status in arrivals:
        if status_rank(status) > status_rank(state):
            state = status
    assert state == stored


def test_status_ranks() -> None:
    assert status_rank("huh") == -1
    assert status_rank("queued") < status_rank("sending") < status_rank("sent") < status_rank("delivered")
    assert {status_rank(s) for s in ("delivered", "undelivered", "failed", "canceled")} == {5}
    assert all(rank >= 0 for rank in STATUS_ORDER.values())


# --- segments --------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "parts"), [
    ("", 1),
    ("Your appeal GL-1042 is closed.", 1),
    ("a" * 160, 1),
    ("a" * 161, 2),
    ("a" * 306, 2),
    ("a" * 307, 3),
    ("Ç" * 160, 1),  # capital C-cedilla is GSM-7...
    ("ç" + "a" * 69, 1),  # ...the small one is not: UCS-2, 70 fit
    ("ç" + "a" * 70, 2),
    ("€" * 80, 1),  # € is a GSM-7 escape: two septets each
    ("€" * 81, 2),
    ("中" * 70, 1),
    ("中" * 71, 2),
    ("中" * 134, 2),
    ("中" * 135, 3),
    ("你好 Hello", 1),
    ("😀" * 35, 1),  # emoji are surrogate pairs: two UTF-16 units
    ("😀" * 36, 2),
    ("中" * 66 + "😀" + "中" * 66, 3),  # 134 units, yet the pair cannot straddle parts 1 and 2
    (LONG, 4),
])
def test_segments(text: str, parts: int) -> None:
    assert segments(text) == parts


# --- form bodies ----------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [
    "Body=%E7%BF%A0%E6%B9%96%E8%8A%B1%E5%9B%AD3%E5%8F%B7%E6%A5%BC&From=%2B8617033259997",
    "Body=a+b%2Bc&To=%2B86&Body=second",  # '+' is a space, %2B a plus; a repeated name keeps both
    "Body=%F0%9F%98%80&NumMedia=0&MediaUrl0=",  # emoji, blank value
    "Body=50%25+off&x=%zz&y=%",  # invalid escapes are kept as they are, as urllib does
    "a=1#x&&b",  # '#' is data in a body, empty pairs are skipped, a bare name has a blank value
    "Body=%EF%BF%BD",  # a real U+FFFD the resident typed
])
def test_parse_form_agrees_with_urllib(body: str) -> None:
    expected = parse_qsl(body, keep_blank_values=True, encoding="utf-8", errors="strict")
    assert list(parse_form(body.encode()).items()) == expected


@pytest.mark.parametrize("body, reason", [
    (b"Body=%FF%FE", "not valid UTF-8"),
    ("Body=翠湖".encode(), "not valid UTF-8"),  # raw bytes instead of percent-escapes
    (b"&".join(b"f%d=1" % n for n in range(201)), "more than 200 fields"),
])
def test_parse_form_refuses_bad_bodies_with_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(InboundError) as refused:
        parse_form(body)
    assert refused.value.status == 400 and reason in refused.value.reason


def test_verify_refuses_a_signature_header_with_non_ascii_bytes() -> None:
    form = {"Body": "hi", "From": "+8617033259997"}
    assert not verify("http://127.0.0.1:8080/webhooks/twilio/sms", form, "签名\udcff", "token")


# --- outbound: the exact request Twilio receives ----------------------------------------------------

OUTGOING = [
    ("acknowledgement", Outgoing(42, RESIDENT, ANGRY),
     {"To": RESIDENT, "From": GRIDLINE, "Body": ANGRY, "StatusCallback": STATUS_URL + "?delivery=42"}),
    ("long text in one create: twilio splits it", Outgoing(7, "+8617033259997", LONG),
     {"To": "+8617033259997", "From": GRIDLINE, "Body": LONG, "StatusCallback": STATUS_URL + "?delivery=7"}),
    ("buttons are for chats: dropped", Outgoing(8, RESIDENT, "请评价", markup={"inline": [[("5", "rate:5")]]}),
     {"To": RESIDENT, "From": GRIDLINE, "Body": "请评价", "StatusCallback": STATUS_URL + "?delivery=8"}),
]


@pytest.mark.parametrize(("message", "form"), [case[1:] for case in OUTGOING], ids=[case[0] for case in OUTGOING])
def test_send_posts_exactly_this_to_twilio(message: Outgoing, form: dict[str, str]) -> None:
    with fake_twilio_server(ACCOUNT_SID, AUTH_TOKEN, callbacks="none") as fake:
        sms = channel(fake.url)

        async def send() -> str:
            try:
                return await sms.send(message)
            finally:
                await sms.close()

        sid = asyncio.run(send())
        _, recorded = http_json("GET", fake.url + "/_sandbox/requests")
    credentials = base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
    assert sid.startswith("SM")
    assert recorded["requests"] == [{"method": "POST", "path": f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json",
                                     "authorization": f"Basic {credentials}", "form": form}]
