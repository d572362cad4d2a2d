"""The aiohttp gateway: provider webhooks in, operator API out.

Webhook handlers only verify, parse and store (gateway.roles.intake); understanding and replying
happen in rq workers, so a provider is answered in milliseconds however busy the workers are.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import replace
from datetime import datetime

from aiohttp import web
from multidict import MultiDict
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from adapters import InboundError, InboundMessage, telegram, twilio_sms
from broadcasts import api as broadcast_api
from gateway.config import Settings
from gateway.delivery import outbox
from gateway.domain import cases, operators, report
from gateway.domain.city import City, Worker
from gateway.roles.intake import Intake, socket_path
from gateway.store import CaseRow, load_city_from_store, make_engine, session_factory
from gateway.world import BOTS

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
SETTINGS = web.AppKey("settings", Settings)
INTAKE = web.AppKey("intake", Intake)
CITY = web.AppKey("city", City)
SESSIONS = web.AppKey("sessions", sessionmaker)


@web.middleware
async def refusals(request: web.Request, handler) -> web.StreamResponse:
    """Every refusal is a 4xx with a reason the caller can read, never a stack trace."""
    try:
        return await handler(request)
    except InboundError as error:
        return web.json_response({"error": error.reason}, status=error.status)


async def read_body(request: web.Request) -> bytes:
    """The raw body, refused with a 413 (before reading it, when the length is declared) past 64 KiB."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise InboundError(413, f"body over {MAX_BODY} bytes")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as too_large:
        raise InboundError(413, f"body over {MAX_BODY} bytes") from too_large


async def read_form(request: web.Request) -> MultiDict[str]:
    """The url-encoded body, decoded strictly: a bad byte is the sender's error, not ours."""
    if request.content_type != "application/x-www-form-urlencoded":
        raise InboundError(415, "expected application/x-www-form-urlencoded")
    body = await read_body(request)
    return twilio_sms.parse_form(body)


async def twilio_verified_form(request: web.Request) -> MultiDict[str]:
    settings = request.app[SETTINGS]
    form = await read_form(request)
    url = settings.base_url + request.path_qs
    _, auth_token = settings.twilio_credentials
    if not twilio_sms.verify(url, form, request.headers.get("X-Twilio-Signature"), auth_token):
        raise InboundError(403, "X-Twilio-Signature missing or invalid")
    return form


async def store(request: web.Request, message: InboundMessage) -> None:
    """Persist before acknowledging; if the store is down the provider hears 503 and retries."""
    try:
        await request.app[INTAKE].store(message)
    except Exception as error:
        raise InboundError(503, "store unavailable, retry later") from error


async def twilio_inbound_sms(request: web.Request) -> web.Response:
    await store(request, twilio_sms.parse_inbound(await twilio_verified_form(request)))
    return web.Response(text=EMPTY_TWIML, content_type="text/xml")


async def telegram_update(request: web.Request) -> web.Response:
    """Either bot's webhook: secret checked first, stored before the 200, retries deduplicated."""
    settings = request.app[SETTINGS]
    channel = BOTS.get(request.match_info["bot"])
    if channel is None:
        raise InboundError(404, "no such bot")
    if not telegram.verify(request.headers.get("X-Telegram-Bot-Api-Secret-Token"),
                           settings.telegram_webhook_secret):
        raise InboundError(403, "X-Telegram-Bot-Api-Secret-Token missing or invalid")
    body = await read_body(request)
    try:
        update = json.loads(body)
    except ValueError as bad:  # JSONDecodeError and UnicodeDecodeError both
        raise InboundError(400, f"body is not JSON: {bad}") from bad
    message = telegram.parse_inbound(update)
    if message is not None:  # updates we do not handle are acknowledged and dropped
        await store(request, replace(message, channel=channel))
    return web.json_response({"ok": True})


async def twilio_status(request: web.Request) -> web.Response:
    report = twilio_sms.parse_status(await twilio_verified_form(request))
    outbox_id = request.query.get("outbox")
    if outbox_id is not None and not outbox_id.isdigit():
        raise InboundError(400, "outbox must be a row id")
    try:
        found = await request.app[INTAKE].run(
            lambda session: outbox.apply_status(session, int(outbox_id) if outbox_id else None,
                                                report.provider_id, report.status, report.error_code))
    except Exception as error:
        raise InboundError(503, "store unavailable, retry later") from error
    if not found:
        log.warning("delivery report for unknown message %s", report.provider_id)
    return web.Response(text=EMPTY_TWIML, content_type="text/xml")


# --- operator API ---------------------------------------------------------------------------


async def current_operator(request: web.Request) -> Worker:
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        raise InboundError(401, "operator token required: Authorization: Bearer <token>")
    sessions = request.app[SESSIONS]
    city = request.app[CITY]

    def lookup() -> Worker | None:
        with sessions() as session:
            return operators.authenticate(session, city, header.removeprefix("Bearer ").strip())

    worker = await asyncio.to_thread(lookup)
    if worker is None:
        raise InboundError(401, "unknown operator token")
    return worker


async def api_cases(request: web.Request) -> web.Response:
    worker = await current_operator(request)
    city, sessions = request.app[CITY], request.app[SESSIONS]
    try:
        limit = max(1, min(int(request.query.get("limit", "100")), 1000))
    except ValueError as bad:
        raise InboundError(400, "limit must be a number") from bad

    def query() -> list[dict]:
        with sessions() as session:
            found = cases.find_cases(session, city, state=request.query.get("state"),
                                     grid=request.query.get("grid"), category=request.query.get("category"),
                                     visible=operators.jurisdiction(city, worker), limit=limit)
            return [cases.case_view(session, case) for case in found]

    return web.json_response({"cases": await asyncio.to_thread(query)})


async def api_case(request: web.Request) -> web.Response:
    worker = await current_operator(request)
    city, sessions = request.app[CITY], request.app[SESSIONS]
    number = request.match_info["number"]

    def query() -> dict | None:
        with sessions() as session:
            case = session.scalar(select(CaseRow).where(CaseRow.number == number,
                                                              operators.jurisdiction(city, worker)))
            return cases.case_view(session, case, with_history=True) if case else None

    view = await asyncio.to_thread(query)
    if view is None:  # not found and not yours look the same: nothing leaks
        raise InboundError(404, f"no case {number}")
    return web.json_response(view)


async def api_report(request: web.Request) -> web.Response:
    """`gridline report` for leaders: the same figures, only over cases in their jurisdiction."""
    worker = await current_operator(request)
    city, sessions, settings = request.app[CITY], request.app[SESSIONS], request.app[SETTINGS]
    level = request.query.get("level", "street")
    if level not in report.LEVELS:
        raise InboundError(400, f"level must be one of {', '.join(report.LEVELS)}")
    try:
        since = report.since_utc(datetime.fromisoformat(request.query["since"]), settings.timezone) \
            if "since" in request.query else None
    except ValueError as bad:
        raise InboundError(400, "since must be an ISO date or time") from bad

    def query() -> str:
        with sessions() as session:
            rows = report.unit_figures(session, city, level=level, since=since,
                                       visible=operators.jurisdiction(city, worker))
            return report.as_json(rows)

    return web.Response(text=await asyncio.to_thread(query), content_type="application/json")


async def health(_request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def create_app(settings: Settings) -> web.Application:
    engine = make_engine(settings.sqlalchemy_url)
    sessions = session_factory(engine)
    with sessions() as session:
        city = load_city_from_store(session)
    intake = Intake(socket_path(settings), engine)

    app = web.Application(middlewares=[refusals], client_max_size=MAX_BODY)
    app[SETTINGS], app[INTAKE], app[CITY], app[SESSIONS] = settings, intake, city, sessions
    app.router.add_post("/webhooks/twilio/sms", twilio_inbound_sms)
    app.router.add_post("/webhooks/twilio/status", twilio_status)
    app.router.add_post("/webhooks/telegram/{bot}", telegram_update)
    app.router.add_get("/api/cases", api_cases)
    app.router.add_get("/api/cases/{number}", api_case)
    app.router.add_get("/api/report", api_report)
    app.router.add_get("/healthz", health)
    broadcast_api.add_routes(app)

    async def close_intake(_app: web.Application) -> None:
        await intake.close()

    app.on_cleanup.append(close_intake)
    return app
