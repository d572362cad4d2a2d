"""Hostile calls to every channel, generated: each is mutated from a valid one and then signed as
the provider would (so it reaches the parser, not just the signature check). Whatever comes in, a
channel answers with what it parsed or an InboundError carrying a 4xx, never anything else (which
the gateway would turn into a 500)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from urllib.parse import urlencode

import pytest
from multidict import CIMultiDict, MultiDict

from adapters import Channel, InboundError, Request, parse_form
from adapters.http_api import INBOUND_PATH, STATUS_PATH, Config, HttpChannel, signature
from adapters.telegram import TelegramBot
from adapters.twilio_sms import TwilioSms, sign

ROUNDS = 300
SID = "SM" + "7c" * 16
SECRET = "fuzz-secret"
BASE = "https://gridline.example.cn"
TWILIO = TwilioSms("AC" + "5d" * 16, SECRET, "+8617000000000", "https://api.twilio.com",
                   BASE + "/webhooks/twilio/status", region="CN")
BOT = TelegramBot("telegram-resident", "1:x", webhook_secret=SECRET, region="CN")
HTTP = HttpChannel(Config(secret=SECRET, region="CN"))
# Values people and machines send that code tends to trip on.
NASTY = ["", "²", "٣", "1" + "0" * 23, "-1", "0x10", "1e3", " 7", "\ud800", "\udcff", "\x00", "😡" * 50, "翠湖" * 500,
         "whatsapp:+8613800138000", "+", "+86", "null", "[]", "{}", "%", "%FF", "a&b=c", "\n", "true"]


def mutate_text(draw: random.Random, value: str) -> str:
    choice = draw.randrange(4)
    if choice == 0:
        return draw.choice(NASTY)
    if choice == 1:
        return value[:draw.randrange(len(value) + 1)]
    if choice == 2:
        return value + draw.choice(NASTY)
    return "".join(draw.choice([c, draw.choice(NASTY)]) if draw.random() < 0.1 else c for c in value)


def mutate_json(draw: random.Random, value: object, depth: int = 0) -> object:
    if isinstance(value, dict):
        mutated = {k: mutate_json(draw, v, depth + 1) for k, v in value.items() if draw.random() > 0.1}
        if draw.random() < 0.1:
            mutated[draw.choice(NASTY)] = draw.choice([None, True, 1.5, -(2 ** 70), [], {}, draw.choice(NASTY)])
        return mutated
    if draw.random() < 0.2:
        return draw.choice([None, True, 0, -1, 2 ** 64, 1.5, [], {}, "", draw.choice(NASTY), [value], {"x": value}])
    if isinstance(value, str):
        return mutate_text(draw, value)
    if isinstance(value, list):
        return [mutate_json(draw, v, depth + 1) for v in value]
    return value


def outcome(channel: Channel, request: Request, kind: str) -> None:
    try:
        channel.verify(request)
        parsed = channel.parse_inbound(request) if kind == "inbound" else channel.parse_status(request)
    except InboundError as refused:
        assert 400 <= refused.status < 500, (refused.status, refused.reason)
        return
    assert isinstance(parsed, list)


def twilio_call(draw: random.Random) -> tuple[Request, str]:
    form = {"MessageSid": SID, "From": "+8613800138000", "To": "+8617000000000", "Body": "路灯坏了",
            "NumMedia": "1", "MediaUrl0": "https://api.twilio.com/m/ME1", "MessageStatus": "delivered",
            "ErrorCode": "30003"}
    mutated = {mutate_text(draw, k) if draw.random() < 0.1 else k: mutate_text(draw, v) if draw.random() < 0.3 else v
               for k, v in form.items()}
    body = urlencode(mutated, errors="surrogatepass").encode()
    kind, path = draw.choice([("inbound", "/webhooks/twilio/sms"), ("status", "/webhooks/twilio/status"),
                              ("status", "/webhooks/twilio/broadcast-status")])
    query = draw.choice(["", "?delivery=42", "?outbox=7", "?delivery=%C2%B2", "?delivery=" + "9" * 30, "?delivery="])
    url = BASE + path + query
    try:
        signature_value = sign(url, parse_form(body), SECRET)
    except InboundError:
        signature_value = "unsignable"
    headers = CIMultiDict({"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": signature_value})
    return Request(url, path, headers, MultiDict(parse_form(query[1:].encode())), body), kind


def telegram_call(draw: random.Random) -> tuple[Request, str]:
    update = {"update_id": 861204117, "message": {
        "message_id": 311, "date": 1767241800, "from": {"id": 5012345678, "language_code": "zh-hans"},
        "chat": {"id": 5012345678, "type": "private"}, "text": "/start grid-1",
        "contact": {"phone_number": "0788531373", "user_id": 5012345678},
        "location": {"latitude": 31.2, "longitude": 121.4},
        "photo": [{"file_id": "a", "width": 90, "height": 67}]}}
    if draw.random() < 0.3:
        update = {"update_id": 1, "callback_query": {"id": "9", "data": "accept:1", "from": {"id": 6},
                                                     "message": {"message_id": 12, "chat": {"id": 6}}}}
    body = json.dumps(mutate_json(draw, update), ensure_ascii=draw.random() < 0.5).encode("utf-8", "surrogatepass")
    if draw.random() < 0.1:
        body = body[:draw.randrange(len(body) + 1)]
    headers = CIMultiDict({"Content-Type": "application/json", "X-Telegram-Bot-Api-Secret-Token": SECRET})
    return Request(BASE + "/webhooks/telegram/resident", "/webhooks/telegram/resident", headers, MultiDict(),
                   body), "inbound"


def http_call(draw: random.Random) -> tuple[Request, str]:
    kind = draw.choice(["inbound", "status"])
    fields = ({"from": "+8613800138000", "text": "路灯坏了", "id": "MO1"} if kind == "inbound"
              else {"id": "HT1", "status": "delivered", "reference": "17", "error": "E1"})
    mutated = mutate_json(draw, fields)
    as_form = draw.random() < 0.3 and isinstance(mutated, dict)
    if as_form:
        body = urlencode({str(k): str(v) for k, v in mutated.items()}, errors="surrogatepass").encode()
    else:
        body = json.dumps(mutated, ensure_ascii=draw.random() < 0.5).encode("utf-8", "surrogatepass")
    content_type = "application/x-www-form-urlencoded" if as_form else draw.choice(["application/json", "text/plain"])
    headers = CIMultiDict({"Content-Type": content_type, "X-Signature": signature(SECRET, body)})
    path = INBOUND_PATH if kind == "inbound" else STATUS_PATH
    return Request(BASE + path, path, headers, MultiDict(), body), kind


@pytest.mark.parametrize(("channel", "make"), [(TWILIO, twilio_call), (BOT, telegram_call), (HTTP, http_call)],
                         ids=["twilio", "telegram", "http"])
def test_hostile_calls_get_a_4xx_or_a_parse(channel: Channel, make: Callable[[random.Random], tuple[Request, str]]
                                            ) -> None:
    draw = random.Random(f"gridline-{channel.name}")
    for _ in range(ROUNDS):
        request, kind = make(draw)
        outcome(channel, request, kind)
