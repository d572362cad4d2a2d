"""A fake HTTP SMS gateway on loopback, speaking whatever the HTTP channel is configured to speak.

It takes sends at SANDBOX_SEND_PATH (checking the signature, and the Authorization header when one
is configured), records each exactly as it came (method, path, headers, body, fields), answers with
a new id at the configured response field, and then posts signed delivery reports ("sent", then
"delivered", in the provider's words from the status map) to the gateway's STATUS_PATH, echoing our
delivery id when the send carried one. It also plays a resident: the control API posts signed
inbound messages to the gateway's INBOUND_PATH. State lives in memory.

Control API (JSON, no auth, loopback only):

    POST /_sandbox/inbound {"from": "+8613800138000", "text": "...", "id": "optional",
                            "format": "json" | "form", "signature": "optional, wrong on purpose"}
                           → {"status": <the gateway's HTTP status>, "body": <its answer>}
    GET  /_sandbox/messages?to=+8613800138000   sends received, oldest first (all without `to`)
    GET  /_sandbox/reports                      reports posted: fields and the gateway's answer
    POST /_sandbox/faults  {"status": 503, "count": 1}   the next sends fail with that status
    POST /_sandbox/reset                        forget messages, reports and faults

Run it as `python -m adapters.http_api.sandbox --port 8091` with the channel's configuration as
JSON in GRIDLINE_HTTP_SANDBOX_CONFIG (what `adapters.http_api.sandbox_process()` gives the supervisor), or
in a test with `fake_http_gateway(config)`.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import os
import secrets
from collections import deque
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
from aiohttp import web

from adapters.http_api import (
    INBOUND_PATH,
    SANDBOX_SEND_PATH,
    STATUS_PATH,
    Config,
    encode_body,
    signature,
)
from adapters.twilio_sms.sandbox import LoopbackServer, setup_logging, start_site

log = logging.getLogger(__name__)

REPORTS = ("sent", "delivered")  # what the fake reports for every accepted message, in our vocabulary
POST_TIMEOUT = aiohttp.ClientTimeout(total=5)


def _template_field(template: dict[str, Any], placeholder: str) -> str | None:
    """The top-level field of the send template that carries `placeholder` ({to}, {text}, {id})."""
    return next((key for key, value in template.items() if value == placeholder), None)


def _nest(path: str, value: str) -> dict[str, Any]:
    """{"a": {"b": value}} for path "a.b": the answer shape the channel digs its id out of."""
    *outer, last = path.split(".")
    answer: dict[str, Any] = {last: value}
    for key in reversed(outer):
        answer = {key: answer}
    return answer


def _bad(reason: str, status: int = 400) -> web.Response:
    return web.json_response({"error": reason}, status=status)


class FakeHttpGateway:
    """State and handlers of the fake; `app()` wires them into an aiohttp application."""

    def __init__(self, config: Config, gateway_url: str | None = None):
        self.config = config
        self.gateway_url = (gateway_url or config.public_url).rstrip("/")
        self._template = config.template()
        # The provider's word for each of our states: the first the status map gives for it.
        self._words: dict[str, str] = {}
        for word, state in config.statuses().items():
            self._words.setdefault(state, word)
        self.messages: list[dict[str, Any]] = []
        self.reports: list[dict[str, Any]] = []
        self._faults: deque[int] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(SANDBOX_SEND_PATH, self.receive_send)
        app.router.add_post("/_sandbox/inbound", self.post_inbound)
        app.router.add_get("/_sandbox/messages", self.sent_messages)
        app.router.add_get("/_sandbox/reports", self.posted_reports)
        app.router.add_post("/_sandbox/faults", self.add_fault)
        app.router.add_post("/_sandbox/reset", self.reset)
        app.cleanup_ctx.append(self._client_session)
        return app

    async def _client_session(self, _app: web.Application) -> AsyncIterator[None]:
        self._session = aiohttp.ClientSession(timeout=POST_TIMEOUT)
        yield
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._session.close()

    async def _post(self, path: str, fields: dict[str, Any], send_format: str = "json",
                    forged: str | None = None) -> tuple[int, str]:
        """Post `fields` signed to the gateway, as the provider would; its status and answer."""
        if send_format == "form":
            body, content_type = encode_body(fields, "form", {})
        else:
            body, content_type = json.dumps(fields, ensure_ascii=False).encode(), "application/json"
        headers = {"Content-Type": content_type,
                   self.config.signature_header: forged if forged is not None
                   else "sha256=" + signature(self.config.secret, body)}
        assert self._session is not None, "the app is not running"
        async with self._session.post(self.gateway_url + path, data=body, headers=headers) as response:
            return response.status, await response.text()

    # --- the provider's API: sending ---------------------------------------------------------------

    async def receive_send(self, request: web.Request) -> web.Response:
        body = await request.read()
        offered = request.headers.get(self.config.signature_header, "").removeprefix("sha256=").encode()
        if not hmac.compare_digest(offered, signature(self.config.secret, body).encode()):
            return _bad("bad signature", 401)
        if self.config.send_authorization and not hmac.compare_digest(
                request.headers.get("Authorization", "").encode(), self.config.send_authorization.encode()):
            return _bad("bad Authorization", 401)
        if self._faults:
            return _bad("fault injected by the sandbox", self._faults.popleft())
        try:
            fields = (json.loads(body) if request.content_type == "application/json"
                      else dict(parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=True)))
        except ValueError:
            return _bad("body is neither JSON nor a form")
        if not isinstance(fields, dict):
            return _bad("body must be a JSON object")
        provider_id = "HT" + secrets.token_hex(12)
        to_field, text_field, id_field = (_template_field(self._template, p) for p in ("{to}", "{text}", "{id}"))
        self.messages.append({
            "id": provider_id, "method": request.method, "path": request.path,
            "content_type": request.content_type, "authorization": request.headers.get("Authorization"),
            "signature": request.headers.get(self.config.signature_header), "body": body.decode(),
            "fields": fields, "to": fields.get(to_field) if to_field else None,
            "text": fields.get(text_field) if text_field else None,
        })
        reference = fields.get(id_field) if id_field else None
        task = asyncio.create_task(self._report(provider_id, reference))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return web.json_response(_nest(self.config.response_id_field, provider_id))

    async def _report(self, provider_id: str, reference: str | None) -> None:
        """Report the message's delivery, one state after the other; failures are only logged."""
        c = self.config
        for state in REPORTS:
            fields = {c.status_id_field: provider_id, c.status_field: self._words.get(state, state)}
            if reference:
                fields[c.status_reference_field] = reference
            try:
                status, answer = await self._post(STATUS_PATH, fields)
            except (aiohttp.ClientError, TimeoutError) as error:
                log.warning("delivery report %s for %s failed: %r", state, provider_id, error)
                return
            self.reports.append({"fields": fields, "status": status, "answer": answer})

    # --- control API ------------------------------------------------------------------------------

    async def post_inbound(self, request: web.Request) -> web.Response:
        try:
            spec = await request.json()
        except ValueError:
            spec = None
        if not isinstance(spec, dict) or not isinstance(spec.get("from"), str) or not isinstance(spec.get("text"), str):
            return _bad('body must be {"from": "...", "text": "..."}')
        send_format = spec.get("format", "json")
        if send_format not in ("json", "form"):
            return _bad('format must be "json" or "form"')
        c = self.config
        fields = {c.sender_field: spec["from"], c.text_field: spec["text"],
                  c.id_field: str(spec.get("id") or "HI" + secrets.token_hex(12))}
        try:
            status, answer = await self._post(INBOUND_PATH, fields, send_format, spec.get("signature"))
        except (aiohttp.ClientError, TimeoutError) as error:
            return _bad(f"the gateway did not answer: {error!r}", 502)
        return web.json_response({"status": status, "body": answer, "id": fields[c.id_field]})

    async def sent_messages(self, request: web.Request) -> web.Response:
        to = request.query.get("to")
        return web.json_response({"messages": [m for m in self.messages if to is None or m["to"] == to]})

    async def posted_reports(self, _request: web.Request) -> web.Response:
        return web.json_response({"reports": self.reports})

    async def add_fault(self, request: web.Request) -> web.Response:
        try:
            spec = await request.json()
        except ValueError:
            spec = None
        status = spec.get("status") if isinstance(spec, dict) else None
        count = spec.get("count", 1) if isinstance(spec, dict) else None
        if not (isinstance(status, int) and 400 <= status <= 599 and isinstance(count, int) and count > 0):
            return _bad('body must be {"status": <400-599>, "count": <n>}')
        self._faults.extend([status] * count)
        return web.json_response({"faults": list(self._faults)})

    async def reset(self, _request: web.Request) -> web.Response:
        self.messages.clear()
        self.reports.clear()
        self._faults.clear()
        return web.json_response({"reset": True})


def fake_http_gateway(config: Config, gateway_url: str | None = None, port: int = 0) -> LoopbackServer:
    """The fake in a background thread, on a free loopback port unless `port` is given."""
    return LoopbackServer(FakeHttpGateway(config, gateway_url).app(), port)


async def _serve_forever(port: int, config: Config) -> None:
    runner, url = await start_site(FakeHttpGateway(config).app(), "127.0.0.1", port)
    print(f"fake HTTP gateway listening on {url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fake HTTP SMS gateway on 127.0.0.1 "
                                                 "(configuration: JSON in GRIDLINE_HTTP_SANDBOX_CONFIG).")
    parser.add_argument("--port", type=int, default=None, help="0 picks a free port; default: the configured one")
    args = parser.parse_args(argv)
    config = Config(**json.loads(os.environ.get("GRIDLINE_HTTP_SANDBOX_CONFIG", "{}")))
    setup_logging()
    try:
        asyncio.run(_serve_forever(config.sandbox_port if args.port is None else args.port, config))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
