"""The aiohttp gateway: provider webhooks in, operator API out.

Webhook handlers only verify, parse and store (gateway.roles.intake); understanding and replying
happen in rq workers, so a provider is answered in milliseconds however busy the workers are.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from adapters import Channel, DeliveryStatus, InboundError, InboundMessage, Request, Route
from broadcasts import api as broadcast_api
from gateway import console, metrics
from gateway.config import Settings
from gateway.delivery import channels
from gateway.delivery.reports import ReportWriter
from gateway.domain import cases, operators, report
from gateway.domain.city import City, Worker
from gateway.middleware import request_ids, unavailable
from gateway.roles.intake import Intake, socket_path
from gateway.store import CaseRow, load_city_from_store, make_engine, session_factory
from gateway.strict import BadValue, code, integer, known_only, moment

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CASE_NUMBER = re.compile(r"[0-9]{10}")
OPENAPI = Path(__file__).with_name("openapi.json")
SETTINGS = web.AppKey("settings", Settings)
INTAKE = web.AppKey("intake", Intake)
CITY = web.AppKey("city", City)
SESSIONS = web.AppKey("sessions", sessionmaker)
REPORTS = web.AppKey("reports", ReportWriter)
CHANNELS = web.AppKey("channels", dict)
INBOUND_CHANNEL = "inbound_channel"  # a request key: the channel of an inbound-message webhook


@web.middleware
async def refusals(request: web.Request, handler) -> web.StreamResponse:
    """Every refusal is a 4xx with a reason the caller can read, never a stack trace."""
    try:
        return await handler(request)
    except InboundError as error:
        if (channel := webhook_channel(request)) is not None:
            metrics.inbound(channel, "unavailable" if error.status == 503 else f"refused_{error.status}")
        return web.json_response({"error": error.reason}, status=error.status)
    except BadValue as error:
        return web.json_response({"error": error.reason}, status=400)


def webhook_channel(request: web.Request) -> str | None:
    """The inbound channel a webhook request is for (None for anything else, delivery reports included)."""
    return request.get(INBOUND_CHANNEL)


async def read_body(request: web.Request) -> bytes:
    """The raw body, refused with a 413 (before reading it, when the length is declared) past 64 KiB."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise InboundError(413, f"body over {MAX_BODY} bytes")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as too_large:
        raise InboundError(413, f"body over {MAX_BODY} bytes") from too_large


async def store(request: web.Request, message: InboundMessage) -> None:
    """Persist before acknowledging; if the store is down the provider hears 503 and retries."""
    try:
        is_new = await request.app[INTAKE].store(message)
    except Exception as error:
        raise unavailable(request, error) from error
    metrics.inbound(message.channel, "stored" if is_new else "duplicate")


def webhook(channel: Channel, route: Route) -> Handler:
    """The one webhook handler, for every route of every channel: read the body (64 KiB at most),
    verify the call, parse it, and store it (messages through the intake process, delivery reports
    on the store thread) before answering what the provider expects."""
    async def handle(request: web.Request) -> web.Response:
        if route.kind == "inbound":
            request[INBOUND_CHANNEL] = channel.name  # for the refusal's metric
        body = await read_body(request)
        call = Request(request.app[SETTINGS].base_url + request.path_qs, request.path, request.headers,
                       request.query, body)
        channel.verify(call)
        if route.kind == "inbound":
            await store_all(request, channel.parse_inbound(call))
        else:
            await apply_statuses(request, channel.parse_status(call))
        answer = channel.answer(route)
        return web.Response(text=answer.body, content_type=answer.content_type, status=answer.status)

    return handle


async def store_all(request: web.Request, messages: list[InboundMessage]) -> None:
    """All of a call's messages, handed to the intake in the same turn (one frame); the usual one
    without a task per message, on the path of every webhook."""
    if len(messages) == 1:
        await store(request, messages[0])
    elif messages:
        await asyncio.gather(*(store(request, message) for message in messages))


async def apply_statuses(request: web.Request, reports: list[DeliveryStatus]) -> None:
    """Each report moves its delivery forward only, once stored (group-committed with others)."""
    writer = request.app[REPORTS]
    try:
        if len(reports) == 1:
            await writer.store(reports[0])
        else:
            await asyncio.gather(*(writer.store(report) for report in reports))
    except Exception as error:
        raise unavailable(request, error) from error


# --- operator API ---------------------------------------------------------------------------


async def current_operator(request: web.Request) -> Worker:
    """The operator behind a live Bearer token, re-read from the roster on every request."""
    token = operators.bearer_token(request.headers.get("Authorization"))
    if token is None:
        raise InboundError(401, "operator token required: Authorization: Bearer <token>")
    sessions = request.app[SESSIONS]

    def lookup() -> Worker | None:
        with sessions() as session:
            return operators.authenticate(session, token)

    worker = await asyncio.to_thread(lookup)
    if worker is None:
        raise InboundError(401, "unknown, expired or revoked operator token, or no longer an operator")
    return worker


async def api_cases(request: web.Request) -> web.Response:
    worker = await current_operator(request)
    city, sessions, settings = request.app[CITY], request.app[SESSIONS], request.app[SETTINGS]
    known_only(request.query, ("limit", "state", "grid", "category"))
    limit = integer(request.query.get("limit", "100"), "limit", 1, 1000)
    state, grid, category = (code(request.query[name], name) if name in request.query else None
                             for name in ("state", "grid", "category"))

    def query() -> list[dict]:
        with sessions() as session:
            found = cases.find_cases(session, city, state=state, grid=grid, category=category,
                                     visible=operators.jurisdiction(city, worker, settings.triage_department),
                                     limit=limit)
            return [cases.case_view(session, case) for case in found]

    return web.json_response({"cases": await asyncio.to_thread(query)})


async def api_case(request: web.Request) -> web.Response:
    worker = await current_operator(request)
    city, sessions, settings = request.app[CITY], request.app[SESSIONS], request.app[SETTINGS]
    number = request.match_info["number"]
    known_only(request.query, ())
    if not CASE_NUMBER.fullmatch(number):  # never a case number, so never a case: no query needed
        raise InboundError(404, "no such case: a case number is 10 digits")

    def query() -> dict | None:
        with sessions() as session:
            visible = operators.jurisdiction(city, worker, settings.triage_department)
            case = session.scalar(select(CaseRow).where(CaseRow.number == number, visible))
            return cases.case_view(session, case, with_history=True) if case else None

    view = await asyncio.to_thread(query)
    if view is None:  # not found and not yours look the same: nothing leaks
        raise InboundError(404, f"no case {number}")
    return web.json_response(view)


async def api_report(request: web.Request) -> web.Response:
    """`gridline report` for leaders: the same figures, only over cases in their jurisdiction."""
    worker = await current_operator(request)
    city, sessions, settings = request.app[CITY], request.app[SESSIONS], request.app[SETTINGS]
    known_only(request.query, ("level", "since"))
    level = request.query.get("level", "street")
    if level not in report.LEVELS:
        raise InboundError(400, f"level must be one of {', '.join(report.LEVELS)}")
    since = moment(request.query["since"], "since", settings.timezone) if "since" in request.query else None

    def query() -> str:
        with sessions() as session:
            rows = report.unit_figures(session, city, level=level, since=since,
                                       visible=operators.jurisdiction(city, worker, settings.triage_department))
            return report.as_json(rows)

    return web.Response(text=await asyncio.to_thread(query), content_type="application/json")


async def health(_request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def openapi(_request: web.Request) -> web.FileResponse:
    """The OpenAPI 3 description of the API and the webhooks (gateway/openapi.json)."""
    return web.FileResponse(OPENAPI, headers={"Content-Type": "application/json"})


def create_app(settings: Settings) -> web.Application:
    engine = make_engine(settings.sqlalchemy_url)
    sessions = session_factory(engine)
    with sessions() as session:
        city = load_city_from_store(session)
    intake = Intake(socket_path(settings), engine)

    app = web.Application(middlewares=[request_ids, refusals], client_max_size=MAX_BODY)
    app[SETTINGS], app[INTAKE], app[CITY], app[SESSIONS] = settings, intake, city, sessions
    app[REPORTS], app[CHANNELS] = ReportWriter(intake.run), channels.build_channels(settings)
    for channel in app[CHANNELS].values():
        for route in channel.routes():
            app.router.add_post(route.path, webhook(channel, route))
    app.router.add_get("/api/cases", api_cases)
    app.router.add_get("/api/cases/{number}", api_case)
    app.router.add_get("/api/report", api_report)
    app.router.add_get("/healthz", health)
    app.router.add_get("/api/openapi.json", openapi)
    broadcast_api.add_routes(app, settings, sessions, city, current_operator)
    console.setup(app, settings, city, sessions, current_operator)

    async def close_intake(_app: web.Application) -> None:
        await intake.close()

    app.on_cleanup.append(close_intake)
    return app
