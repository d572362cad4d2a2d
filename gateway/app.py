"""The aiohttp gateway: provider webhooks in, operator API out.

Webhook handlers only verify, parse and store (gateway.roles.intake); understanding and replying
happen in rq workers, so a provider is answered in milliseconds however busy the workers are.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from adapters import Channel, DeliveryStatus, InboundError, InboundMessage, Request, Route
from broadcasts import api as broadcast_api
from gateway.config import Settings
from gateway.delivery import outbox, registry
from gateway.domain import cases, operators, report
from gateway.domain.city import City, Worker
from gateway.roles.intake import Intake, socket_path
from gateway.store import CaseRow, load_city_from_store, make_engine, session_factory

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SETTINGS = web.AppKey("settings", Settings)
INTAKE = web.AppKey("intake", Intake)
CITY = web.AppKey("city", City)
SESSIONS = web.AppKey("sessions", sessionmaker)
CHANNELS = web.AppKey("channels", dict)


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


async def store(request: web.Request, message: InboundMessage) -> None:
    """Persist before acknowledging; if the store is down the provider hears 503 and retries."""
    try:
        await request.app[INTAKE].store(message)
    except Exception as error:
        raise InboundError(503, "store unavailable, retry later") from error


class StatusWriter:
    """Delivery reports, applied on the web process's store thread: the reports that arrive while
    one transaction commits share the next (group commit), as providers post them by the thousand
    during a broadcast."""

    def __init__(self, intake: Intake):
        self._intake = intake
        self._waiting: list[tuple[DeliveryStatus, asyncio.Future[bool]]] = []
        self._flusher: asyncio.Task | None = None

    async def apply(self, report: DeliveryStatus) -> bool:
        """True when the report matched a delivery of ours."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((report, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            results = await self._apply([report for report, _ in batch])
            if any(isinstance(result, Exception) for result in results) and len(batch) > 1:
                # One report that cannot be stored must not fail its neighbours: each on its own.
                results = [(await self._apply([report]))[0] for report, _ in batch]
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():  # a caller that hung up has a cancelled future
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    async def _apply(self, reports: list[DeliveryStatus]) -> list[bool | Exception]:
        """Whether each report matched, in one transaction; the error for all when it failed."""
        try:
            return await self._intake.run(lambda session: [
                outbox.apply_status(session, r.delivery_id, r.provider_id, r.status, r.error_code)
                for r in reports])
        except Exception as error:  # the store is down, or a bug: the provider hears 503 and retries
            log.exception("storing %d delivery report(s) failed", len(reports))
            return [error] * len(reports)


STATUSES = web.AppKey("statuses", StatusWriter)


def webhook(channel: Channel, route: Route) -> Handler:
    """The one webhook handler, for every route of every channel: read the body (64 KiB at most),
    verify the call, parse it, and store it (messages through the intake process, delivery reports
    on the store thread) before answering what the provider expects."""
    async def handle(request: web.Request) -> web.Response:
        body = await read_body(request)
        call = Request(request.app[SETTINGS].base_url + request.path_qs, request.path, request.headers,
                       request.query, body)
        channel.verify(call)
        if route.kind == "inbound":
            messages = channel.parse_inbound(call)
            await asyncio.gather(*(store(request, message) for message in messages))
        else:
            await apply_statuses(request, channel.parse_status(call))
        answer = channel.answer(route)
        return web.Response(text=answer.body, content_type=answer.content_type, status=answer.status)

    return handle


async def apply_statuses(request: web.Request, reports: list[DeliveryStatus]) -> None:
    try:
        found = await asyncio.gather(*(request.app[STATUSES].apply(report) for report in reports))
    except Exception as error:
        raise InboundError(503, "store unavailable, retry later") from error
    for status, matched in zip(reports, found, strict=True):
        if not matched:
            log.warning("delivery report for unknown message %s", status.provider_id)


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
    app[STATUSES], app[CHANNELS] = StatusWriter(intake), registry.build_channels(settings)
    for channel in app[CHANNELS].values():
        for route in channel.routes():
            app.router.add_post(route.path, webhook(channel, route))
    app.router.add_get("/api/cases", api_cases)
    app.router.add_get("/api/cases/{number}", api_case)
    app.router.add_get("/api/report", api_report)
    app.router.add_get("/healthz", health)
    broadcast_api.add_routes(app)

    async def close_intake(_app: web.Application) -> None:
        await intake.close()

    app.on_cleanup.append(close_intake)
    return app
