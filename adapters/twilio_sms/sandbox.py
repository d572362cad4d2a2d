"""A fake Twilio Messages API on loopback, for tests, the local demo and benchmarks.

It answers what twilio-python sends to `/2010-04-01/Accounts/{AccountSid}/Messages.json` (create,
list with To / From / DateSent> filters and paging, fetch) in Twilio's JSON shapes, errors included,
then plays each accepted message's delivery back as StatusCallback posts signed with
X-Twilio-Signature, in the background. State lives in memory; nothing sleeps.

Delivery reports are posted by CALLBACK_POSTERS tasks from a queue, like a provider with a bounded
number of connections to one customer: under a backlog they arrive late rather than time out in a
crowd of waiting requests. Which reports are posted is a setting (`--callbacks`, or the control API):

    all    every status of every message (default: what Twilio does, "sent" then "delivered")
    final  only each message's last status: every message still gets its delivery report, at half
           the callbacks (benchmarks that want to see reports stored without paying for two each)
    none   no callbacks at all (benchmarks of sending alone); the stored messages still move on

Control API (JSON, no auth, loopback only):

    POST   /_sandbox/faults   {"status": 429, "count": 2}          the next 2 creates fail: 429, error 20429
                              {"callbacks": ["delivered", "sent"]} the next message reports out of order
                              {"callbacks": ["sent", "undelivered"], "error_code": "30003", "count": 1}
    POST   /_sandbox/opt-out  {"phone": "+8613800138000"}          creates to it fail with 21610
    POST   /_sandbox/callbacks {"mode": "final"}                   which delivery reports to post
    GET    /_sandbox/messages?to=+8613800138000                    accepted messages, oldest first
    GET    /_sandbox/recipients                                    {"+8613800138000": 2, ...}: messages per number
    GET    /_sandbox/requests                                      the last 1,000 creates as they came
    GET    /_sandbox/first-accepted                                {"+8613800138000": 1764770000.123, ...}: when
                                                                   each number's first message was accepted
    DELETE /_sandbox/messages                                      forget the messages
    POST   /_sandbox/reset                                         forget messages, faults, opt-outs; mode all

Start it with `python -m adapters.twilio_sms.sandbox --port 8089 [--callbacks final]` (`--port 0`:
a free port; the first line printed names the URL), or inside a test:

    with fake_twilio_server() as fake:
        client = twilio_sms.make_client(Settings(twilio_api_base=fake.url))   # gateway.config.Settings
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hmac
import logging
import re
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from http import HTTPStatus
from typing import Any, TypeVar
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

from adapters.twilio_sms import (
    SANDBOX_ACCOUNT_SID,
    SANDBOX_AUTH_TOKEN,
    SANDBOX_PORT,
    STATUS_ORDER,
    segments,
    sign,
    status_rank,
)

log = logging.getLogger(__name__)

API_VERSION = "2010-04-01"
MAX_BODY = 1600  # characters, Twilio's limit for one (concatenated) message
MAX_PAGE_SIZE = 1000
CALLBACK_TIMEOUT = aiohttp.ClientTimeout(total=5)  # per post, counted from when a poster takes it up
CALLBACK_POSTERS = 64  # status callbacks in flight at once
CALLBACK_MODES = ("all", "final", "none")
RECORDED_REQUESTS = 1000  # the last creates, as they came (method, path, Authorization, form)
_E164 = re.compile(r"\+[1-9]\d{6,14}")
_ERROR_STATUSES = frozenset(status.value for status in HTTPStatus if status >= 400)
_T = TypeVar("_T")


@dataclass(frozen=True)
class _Delivery:
    """The status callbacks an accepted message produces, in the order they are posted."""

    statuses: tuple[str, ...] = ("sent", "delivered")
    error_code: str | None = None  # reported with failed / undelivered


_NORMAL_DELIVERY = _Delivery()


@dataclass
class _Message:
    payload: dict[str, Any]  # exactly what the REST API answers for it
    sent_at: datetime | None = None  # for DateSent filters; set when it reaches "sent"
    accepted_at: float = field(default_factory=time.time)  # epoch seconds, finer than date_created


def _twilio_error(status: int, code: int, message: str,
                  headers: dict[str, str] | None = None) -> web.Response:
    body = {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status}
    return web.json_response(body, status=status, headers=headers)


def _bad_control(reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=400)


async def _json_object(request: web.Request) -> dict[str, Any] | None:
    try:
        body = await request.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _parse_date_sent(raw: str) -> datetime:
    """`DateSent>` as twilio-python sends it: YYYY-MM-DD, or a datetime as YYYY-MM-DDTHH:MM:SSZ (UTC)."""
    layout = "%Y-%m-%d" if len(raw) == 10 else "%Y-%m-%dT%H:%M:%SZ"
    return datetime.strptime(raw, layout).replace(tzinfo=UTC)


class FakeTwilio:
    """State and handlers of one fake account; `app()` wires them into an aiohttp application."""

    def __init__(self, account_sid: str = SANDBOX_ACCOUNT_SID, auth_token: str = SANDBOX_AUTH_TOKEN,
                 callbacks: str = "all"):
        if callbacks not in CALLBACK_MODES:
            raise ValueError(f"callbacks must be one of {', '.join(CALLBACK_MODES)}")
        self.account_sid = account_sid
        self.callbacks = callbacks
        self.auth_token = auth_token
        credentials = base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode()
        self._authorization = f"Basic {credentials}".encode()
        self._messages: dict[str, _Message] = {}
        self._requests: deque[dict[str, Any]] = deque(maxlen=RECORDED_REQUESTS)
        self._opted_out: set[str] = set()
        self._create_faults: deque[int] = deque()  # HTTP statuses the next creates answer with
        self._delivery_faults: deque[_Delivery] = deque()
        # (message, its delivery, its StatusCallback, the callbacks mode when it was accepted)
        self._deliveries: asyncio.Queue[tuple[_Message, _Delivery, str | None, str]] = asyncio.Queue()
        self._posters: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application()
        messages = f"/{API_VERSION}/Accounts/{{account_sid}}/Messages"
        app.router.add_post(f"{messages}.json", self.create_message)
        app.router.add_get(f"{messages}.json", self.list_messages)
        app.router.add_get(f"{messages}/{{sid}}.json", self.fetch_message)
        app.router.add_post("/_sandbox/faults", self.add_fault)
        app.router.add_post("/_sandbox/opt-out", self.opt_out)
        app.router.add_post("/_sandbox/callbacks", self.set_callbacks)
        app.router.add_get("/_sandbox/messages", self.sent_messages)
        app.router.add_get("/_sandbox/recipients", self.recipients)
        app.router.add_get("/_sandbox/requests", self.recorded_requests)
        app.router.add_get("/_sandbox/first-accepted", self.first_accepted)
        app.router.add_delete("/_sandbox/messages", self.forget_messages)
        app.router.add_post("/_sandbox/reset", self.reset)
        app.cleanup_ctx.append(self._callback_session)
        return app

    async def _callback_session(self, _app: web.Application) -> AsyncIterator[None]:
        self._session = aiohttp.ClientSession(timeout=CALLBACK_TIMEOUT,
                                              connector=aiohttp.TCPConnector(limit=CALLBACK_POSTERS))
        self._posters = [asyncio.create_task(self._post_deliveries()) for _ in range(CALLBACK_POSTERS)]
        yield
        for task in self._posters:
            task.cancel()
        await asyncio.gather(*self._posters, return_exceptions=True)
        await self._session.close()

    def _refuse(self, request: web.Request) -> web.Response | None:
        """Twilio's 401 unless Basic auth carries this account's SID and token and the path names it."""
        supplied = request.headers.get("Authorization", "").encode()
        if request.match_info["account_sid"] == self.account_sid and hmac.compare_digest(
                supplied, self._authorization):
            return None
        return _twilio_error(401, 20003, "Authenticate",
                             headers={"WWW-Authenticate": 'Basic realm="Twilio API"'})

    # --- REST API ---------------------------------------------------------------------------

    async def create_message(self, request: web.Request) -> web.Response:
        if refused := self._refuse(request):
            return refused
        if self._create_faults:
            status = self._create_faults.popleft()
            return _twilio_error(status, 20000 + status, HTTPStatus(status).phrase)
        form = await request.post()
        self._requests.append({"method": request.method, "path": request.path,
                               "authorization": request.headers.get("Authorization"),
                               "form": {name: str(value) for name, value in form.items()}})
        to = str(form.get("To", ""))
        sender = str(form.get("From", "")) or None
        service = str(form.get("MessagingServiceSid", "")) or None
        body = str(form.get("Body", ""))
        media = form.getall("MediaUrl", [])
        callback = str(form.get("StatusCallback", "")) or None
        if not to:
            return _twilio_error(400, 21604, "A 'To' phone number is required.")
        if not sender and not service:
            return _twilio_error(400, 21603, "A 'From' phone number is required.")
        if not body and not media:
            return _twilio_error(400, 21602, "Message body is required.")
        if len(body) > MAX_BODY:
            return _twilio_error(400, 21617,
                                 f"The concatenated message body exceeds the {MAX_BODY} character limit.")
        if not _E164.fullmatch(to):
            return _twilio_error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if callback and not callback.startswith(("http://", "https://")):
            return _twilio_error(400, 21609, f"Invalid StatusCallback url: {callback}")
        if to in self._opted_out:
            return _twilio_error(400, 21610, "Attempt to send to unsubscribed recipient")

        sid = ("MM" if media else "SM") + secrets.token_hex(16)
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{sid}"
        now = format_datetime(datetime.now(UTC))
        message = _Message({
            "account_sid": self.account_sid, "api_version": API_VERSION, "body": body,
            "date_created": now, "date_sent": None, "date_updated": now, "direction": "outbound-api",
            "error_code": None, "error_message": None, "from": sender, "messaging_service_sid": service,
            "num_media": str(len(media)), "num_segments": str(segments(body)), "price": None,
            "price_unit": "USD", "sid": sid, "status": "queued" if sender else "accepted",
            "subresource_uris": {"media": f"{uri}/Media.json"}, "to": to, "uri": f"{uri}.json",
        })
        self._messages[sid] = message
        response = web.json_response(message.payload, status=201)  # serialised now, before delivery starts
        delivery = self._delivery_faults.popleft() if self._delivery_faults else _NORMAL_DELIVERY
        self._deliveries.put_nowait((message, delivery, callback, self.callbacks))
        return response

    async def list_messages(self, request: web.Request) -> web.Response:
        if refused := self._refuse(request):
            return refused
        query = request.query
        filters = {name: query[name] for name in ("To", "From", "DateSent>") if query.get(name)}
        try:
            page = int(query.get("Page", "0"))
            page_size = min(int(query.get("PageSize", "50")), MAX_PAGE_SIZE)
            sent_after = _parse_date_sent(filters["DateSent>"]) if "DateSent>" in filters else None
        except ValueError as bad:
            return _twilio_error(400, 20422, f"Invalid Parameter: {bad}")
        if page < 0 or page_size < 1:
            return _twilio_error(400, 20422, "Invalid Parameter: Page and PageSize must be positive")
        to, sender = filters.get("To"), filters.get("From")
        matches = [m.payload for m in reversed(self._messages.values())  # newest first, like Twilio
                   if (to is None or m.payload["to"] == to)
                   and (sender is None or m.payload["from"] == sender)
                   and (sent_after is None or (m.sent_at is not None and m.sent_at >= sent_after))]
        start = page * page_size
        chunk = matches[start:start + page_size]

        def page_uri(number: int) -> str:
            return f"{request.path}?{urlencode({**filters, 'PageSize': page_size, 'Page': number})}"

        return web.json_response({
            "messages": chunk, "page": page, "page_size": page_size, "start": start,
            "end": start + max(len(chunk) - 1, 0), "uri": page_uri(page), "first_page_uri": page_uri(0),
            "next_page_uri": page_uri(page + 1) if start + page_size < len(matches) else None,
            "previous_page_uri": page_uri(page - 1) if page > 0 else None,
        })

    async def fetch_message(self, request: web.Request) -> web.Response:
        if refused := self._refuse(request):
            return refused
        message = self._messages.get(request.match_info["sid"])
        if message is None:
            return _twilio_error(404, 20404, f"The requested resource {request.path} was not found")
        return web.json_response(message.payload)

    # --- delivery ---------------------------------------------------------------------------

    async def _post_deliveries(self) -> None:
        """One poster: take accepted messages off the queue and play their delivery back."""
        while True:
            message, delivery, callback, mode = await self._deliveries.get()
            try:
                await self._deliver(message, delivery, callback, mode)
            except Exception:  # one bad message must not silence a poster for the rest
                log.exception("delivering %s", message.payload["sid"])

    async def _deliver(self, message: _Message, delivery: _Delivery, callback: str | None, mode: str) -> None:
        """Walk the message through `delivery.statuses`, posting each to its StatusCallback.

        The stored message only moves forward (by status_rank), as Twilio's own record does even when
        its callbacks race each other. `mode` (see the module docstring) picks the statuses posted.
        """
        payload = message.payload
        last = len(delivery.statuses) - 1
        for n, status in enumerate(delivery.statuses):
            error_code = delivery.error_code if status in ("failed", "undelivered") else None
            if status_rank(status) > status_rank(payload["status"]):
                now = datetime.now(UTC)
                if message.sent_at is None and status_rank(status) >= status_rank("sent"):
                    message.sent_at = now
                    payload["date_sent"] = format_datetime(now)
                payload.update(status=status, date_updated=format_datetime(now),
                               error_code=int(error_code) if error_code else None)
            if callback and (mode == "all" or (mode == "final" and n == last)):
                await self._post_status(callback, payload, status, error_code)

    async def _post_status(self, url: str, payload: dict[str, Any], status: str,
                           error_code: str | None) -> None:
        """One signed status callback, with the fields Twilio posts for SMS; failures are only logged."""
        sid = payload["sid"]
        form = {"SmsSid": sid, "SmsStatus": status, "MessageStatus": status, "To": payload["to"],
                "MessageSid": sid, "AccountSid": self.account_sid, "ApiVersion": API_VERSION}
        if payload["from"]:
            form["From"] = payload["from"]
        if payload["messaging_service_sid"]:
            form["MessagingServiceSid"] = payload["messaging_service_sid"]
        if error_code:
            form["ErrorCode"] = error_code
        headers = {"X-Twilio-Signature": sign(url, form, self.auth_token)}
        assert self._session is not None, "the app is not running"
        try:
            async with self._session.post(url, data=form, headers=headers) as response:
                if response.status >= 300:
                    log.warning("status callback %s for %s: %s answered %d",
                                status, sid, url, response.status)
        except (aiohttp.ClientError, TimeoutError) as error:
            log.warning("status callback %s for %s: %s failed: %r", status, sid, url, error)

    # --- control API ------------------------------------------------------------------------

    async def add_fault(self, request: web.Request) -> web.Response:
        spec = await _json_object(request)
        if spec is None:
            return _bad_control("body must be a JSON object")
        count = spec.get("count", 1)
        if not isinstance(count, int) or count < 1:
            return _bad_control("count must be a positive integer")
        if "status" in spec:
            if spec["status"] not in _ERROR_STATUSES:
                return _bad_control("status must be an HTTP error status such as 429 or 500")
            self._create_faults.extend([spec["status"]] * count)
        elif "callbacks" in spec:
            statuses, error_code = spec["callbacks"], spec.get("error_code")
            if not isinstance(statuses, list) or not statuses or any(s not in STATUS_ORDER for s in statuses):
                return _bad_control(f"callbacks must be a list of statuses from {sorted(STATUS_ORDER)}")
            if error_code is not None and not str(error_code).isdigit():
                return _bad_control("error_code must be a Twilio error number such as 30003")
            delivery = _Delivery(tuple(statuses), None if error_code is None else str(error_code))
            self._delivery_faults.extend([delivery] * count)
        else:
            return _bad_control("give status (failing creates) or callbacks (delivery reports)")
        return web.json_response({"pending_create_faults": len(self._create_faults),
                                  "pending_delivery_faults": len(self._delivery_faults)})

    async def opt_out(self, request: web.Request) -> web.Response:
        spec = await _json_object(request)
        phone = spec.get("phone") if spec else None
        if not isinstance(phone, str) or not _E164.fullmatch(phone):
            return _bad_control('body must be {"phone": "<an E.164 number>"}')
        self._opted_out.add(phone)
        return web.json_response({"opted_out": sorted(self._opted_out)})

    async def set_callbacks(self, request: web.Request) -> web.Response:
        spec = await _json_object(request)
        mode = spec.get("mode") if spec else None
        if mode not in CALLBACK_MODES:
            return _bad_control(f'body must be {{"mode": one of {", ".join(CALLBACK_MODES)}}}')
        self.callbacks = mode
        return web.json_response({"callbacks": mode})

    async def recipients(self, _request: web.Request) -> web.Response:
        """Messages per number: what a benchmark needs to check exactly-once, without every payload."""
        return web.json_response(Counter(m.payload["to"] for m in self._messages.values()))

    async def first_accepted(self, _request: web.Request) -> web.Response:
        """Epoch seconds at which each number's first message was accepted: for latency benchmarks."""
        first: dict[str, float] = {}
        for message in self._messages.values():
            first.setdefault(message.payload["to"], message.accepted_at)
        return web.json_response(first)

    async def sent_messages(self, request: web.Request) -> web.Response:
        to = request.query.get("to")
        return web.json_response({"messages": [m.payload for m in self._messages.values()
                                               if to is None or m.payload["to"] == to]})

    async def recorded_requests(self, _request: web.Request) -> web.Response:
        return web.json_response({"requests": list(self._requests)})

    async def forget_messages(self, _request: web.Request) -> web.Response:
        forgotten = len(self._messages)
        self._messages.clear()
        return web.json_response({"deleted": forgotten})

    async def reset(self, _request: web.Request) -> web.Response:
        self._messages.clear()
        self._requests.clear()
        self._opted_out.clear()
        self._create_faults.clear()
        self._delivery_faults.clear()
        self.callbacks = "all"
        return web.json_response({"reset": True})


# --- running it ---------------------------------------------------------------------------


async def start_site(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, str]:
    """Serve `app` on host:port (0 = any free port); returns the runner and the base URL."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=1024).start()
    bound_port = runner.addresses[0][1]
    return runner, f"http://{host}:{bound_port}"


class LoopbackServer:
    """Serve an aiohttp app on 127.0.0.1 from a background thread with its own event loop.

        with LoopbackServer(app) as server:
            requests.get(server.url + "/path")
    """

    def __init__(self, app: web.Application, port: int = 0):
        self.url = ""
        self._app = app
        self._port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="loopback-server", daemon=True)
        self._runner: web.AppRunner | None = None

    def _run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        self._runner, self.url = self._run(start_site(self._app, "127.0.0.1", self._port))
        return self

    def __exit__(self, *_exc_info: object) -> None:
        if self._runner is not None:
            self._run(self._runner.cleanup())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


def fake_twilio_server(account_sid: str = SANDBOX_ACCOUNT_SID, auth_token: str = SANDBOX_AUTH_TOKEN,
                       port: int = 0, callbacks: str = "all") -> LoopbackServer:
    """The fake in a background thread, on a free loopback port unless `port` is given."""
    return LoopbackServer(FakeTwilio(account_sid, auth_token, callbacks).app(), port)


async def _serve_forever(host: str, port: int, account_sid: str, auth_token: str, callbacks: str) -> None:
    runner, url = await start_site(FakeTwilio(account_sid, auth_token, callbacks).app(), host, port)
    print(f"fake Twilio listening on {url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def run_fake_twilio(host: str, port: int, account_sid: str, auth_token: str, callbacks: str = "all") -> None:
    """Serve the fake until interrupted; prints its URL once listening (port 0 = a free port)."""
    asyncio.run(_serve_forever(host, port, account_sid, auth_token, callbacks))


def setup_logging() -> None:
    """The sandboxes log only their own trouble (ids and URLs, never a message's text)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fake Twilio Messages API on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=SANDBOX_PORT, help="0 picks a free port")
    parser.add_argument("--account-sid", default=SANDBOX_ACCOUNT_SID)
    parser.add_argument("--auth-token", default=SANDBOX_AUTH_TOKEN)
    parser.add_argument("--callbacks", choices=CALLBACK_MODES, default="all",
                        help="delivery reports to post: all (as Twilio), final (the last status only), none")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        run_fake_twilio("127.0.0.1", args.port, args.account_sid, args.auth_token, args.callbacks)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
