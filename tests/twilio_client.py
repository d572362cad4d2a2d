"""Posting webhooks to a running gateway the way Twilio does, signed with twilio's RequestValidator."""

from __future__ import annotations

import secrets
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from twilio.request_validator import RequestValidator

from gateway.config import Settings


@dataclass
class Answer:
    status: int
    body: str


def inbound_form(sender: str, body: str, settings: Settings, **extra: str) -> dict[str, str]:
    """A realistic inbound SMS webhook body, as Twilio posts it."""
    sid = "SM" + secrets.token_hex(16)
    account_sid, _ = settings.twilio_credentials
    form = {
        "ToCountry": "CN", "ToState": "", "SmsMessageSid": sid, "NumMedia": "0", "ToCity": "",
        "FromZip": "", "SmsSid": sid, "FromState": "", "SmsStatus": "received", "FromCity": "",
        "Body": body, "FromCountry": "CN", "To": settings.twilio_from_number, "ToZip": "",
        "NumSegments": "1", "MessageSid": sid, "AccountSid": account_sid, "From": sender,
        "ApiVersion": "2010-04-01",
    }
    form.update(extra)
    return form


def post(settings: Settings, path: str, form: dict[str, str] | None = None, *, signature: str | None = "auto",
         raw: bytes | None = None, content_type: str = "application/x-www-form-urlencoded",
         sign_url: str | None = None) -> Answer:
    """POST `form` (or `raw` bytes) to the gateway; sign it over the public URL unless told otherwise."""
    _, token = settings.twilio_credentials
    headers = {"Content-Type": content_type}
    if signature == "auto":
        signature = RequestValidator(token).compute_signature(sign_url or settings.base_url + path, form or {})
    if signature is not None:
        headers["X-Twilio-Signature"] = signature
    data = raw if raw is not None else urllib.parse.urlencode(form or {}).encode()
    request = urllib.request.Request(f"http://{settings.host}:{settings.port}{path}", data=data,
                                     headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return Answer(response.status, response.read().decode())
    except urllib.error.HTTPError as error:
        return Answer(error.code, error.read().decode())
