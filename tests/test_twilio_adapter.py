"""The Twilio SMS adapter against webhook bodies shaped like the ones Twilio really posts.

Tables in the style of nyaruka/courier's handler tests: each case is a form body, how it is signed,
and what the gateway should answer. `handle` mirrors the webhook route: signature first (403),
then parsing (InboundError's status and reason), else 200 with the parsed message.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl

import pytest
from multidict import MultiDict
from twilio.request_validator import RequestValidator

from adapters import DeliveryStatus, InboundError, InboundMessage
from adapters.twilio_sms import (
    STATUS_ORDER,
    parse_form,
    parse_inbound,
    parse_status,
    segments,
    sign,
    status_rank,
    verify,
)

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


def handle(url: str, form: dict[str, str], signature: str | None) -> tuple[int, InboundMessage | str]:
    if not verify(url, MultiDict(form), signature, AUTH_TOKEN):
        return 403, "X-Twilio-Signature missing or invalid"
    try:
        return 200, parse_inbound(MultiDict(form))
    except InboundError as refused:
        return refused.status, refused.reason


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
    Case("NumMedia not a number", twilio_form(NumMedia="two"), "invalid NumMedia 'two'", 400),
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
    assert handle(case.url, case.form, signature) == (case.status, case.expected)
    if signature is not None:  # same verdict as the library's own validate()
        valid = RequestValidator(AUTH_TOKEN).validate(case.url, case.form, signature)
        assert verify(case.url, case.form, signature, AUTH_TOKEN) is valid


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


STATUS_CASES = [
    ("sent", status_form(SmsStatus="sent", MessageStatus="sent"), DeliveryStatus(SID, "sent")),
    ("delivered", status_form(), DeliveryStatus(SID, "delivered")),
    ("undelivered with carrier error",
     status_form(SmsStatus="undelivered", MessageStatus="undelivered", ErrorCode="30003"),
     DeliveryStatus(SID, "undelivered", "30003")),
    ("opted out", status_form(SmsStatus="failed", MessageStatus="failed", ErrorCode="21610"),
     DeliveryStatus(SID, "failed", "21610")),
    ("empty ErrorCode", status_form(ErrorCode=""), DeliveryStatus(SID, "delivered")),
    ("read receipt", status_form(SmsStatus="read", MessageStatus="read"), DeliveryStatus(SID, "read")),
    ("legacy SmsStatus only", status_form(MessageStatus=None), DeliveryStatus(SID, "delivered")),
    ("missing MessageSid", status_form(MessageSid=None), (400, "missing MessageSid")),
    ("missing status", status_form(MessageStatus=None, SmsStatus=None), (400, "missing MessageStatus")),
    ("unknown status", status_form(MessageStatus="huh"), (400, "unknown MessageStatus 'huh'")),
    ("inbound status is no delivery report", status_form(MessageStatus="received"),
     (400, "unknown MessageStatus 'received'")),
]


@pytest.mark.parametrize(("form", "expected"), [case[1:] for case in STATUS_CASES],
                         ids=[case[0] for case in STATUS_CASES])
def test_status_callback(form: dict[str, str], expected: DeliveryStatus | tuple[int, str]) -> None:
    if isinstance(expected, DeliveryStatus):
        assert parse_status(MultiDict(form)) == expected
    else:
        with pytest.raises(InboundError) as refused:
            parse_status(MultiDict(form))
        assert (refused.value.status, refused.value.reason) == expected


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
