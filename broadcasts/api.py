"""Broadcasts over HTTP: the operator API under /api/broadcasts, and Twilio's delivery reports.

    GET  /api/broadcasts                       the operator's broadcasts, newest first
    POST /api/broadcasts/preview               {"audience", "texts", "emergency"} → size, split, sample, cost
    POST /api/broadcasts                       the same plus "title" → 201, a draft (refused 403 outside
                                               the operator's jurisdiction)
    GET  /api/broadcasts/{id}                  status: counts, rate, ETA
    GET  /api/broadcasts/{id}/preview
    POST /api/broadcasts/{id}/send             {"send_at": "2026-07-01T09:00"} optional (local time)
    POST /api/broadcasts/{id}/pause|resume|cancel

Delivery reports arrive thousands a second during a big broadcast, so they are group-committed:
reports that arrive together share one transaction on the web process's store thread
(`Intake.run`), and each is answered only once stored.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from adapters import InboundError, twilio_sms
from broadcasts import service
from broadcasts.audience import GridTree
from broadcasts.models import DELIVERY_RANK, BroadcastRow, DeliveryRow
from broadcasts.schedule import parse_when
from broadcasts.senders import STATUS_PATH
from gateway.config import Settings
from gateway.domain.city import Worker
from gateway.roles.intake import Intake
from gateway.store import utcnow

log = logging.getLogger(__name__)

# Twilio's statuses that move a delivery; queued / sending add nothing to our own `sending`.
REPORTED = {"sent": "sent", "delivered": "delivered", "read": "delivered", "undelivered": "undelivered",
            "failed": "failed"}


class ReportWriter:
    """Group commit for delivery reports, on the web process's store thread."""

    def __init__(self, intake: Intake):
        self._intake = intake
        self._waiting: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._flusher: asyncio.Task | None = None

    async def store(self, report: dict[str, Any]) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((report, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        await future

    async def _flush(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                await self._intake.run(lambda session, batch=batch: apply_reports(session, [r for r, _ in batch]))
            except Exception as error:  # the store is down: Twilio hears 5xx and the callers see why
                log.exception("storing %d delivery reports failed", len(batch))
                for _, future in batch:
                    if not future.done():  # a caller that hung up has a cancelled future
                        future.set_exception(error)
                continue
            for _, future in batch:
                if not future.done():
                    future.set_result(None)


@dataclass
class Handlers:
    """What the broadcast handlers use of the gateway app (its settings, store and auth)."""

    settings: Settings
    sessions: sessionmaker[Session]
    tree: GridTree
    reports: ReportWriter
    current_operator: Callable[[web.Request], Awaitable[Worker]]
    verified_form: Callable[[web.Request], Awaitable[Any]]


HANDLERS = web.AppKey("broadcasts", Handlers)


def apply_reports(session: Session, reports: list[dict[str, Any]]) -> None:
    """Move each delivery forward only (reports race each other); one statement per target state."""
    table = DeliveryRow.__table__
    by_state: dict[str, list[dict]] = defaultdict(list)
    for report in reports:
        by_state[report["state"]].append(report)
    for state, rows in by_state.items():
        earlier = [s for s in ("sending", "sent") if DELIVERY_RANK[s] < DELIVERY_RANK[state]]
        session.connection().execute(
            update(table).where(table.c.id == bindparam("b_id"), or_(*(table.c.state == s for s in earlier)))
            .values(state=state, provider_id=bindparam("b_sid"), last_error=bindparam("b_error"),
                    updated_at=utcnow()), rows)


async def twilio_broadcast_status(request: web.Request) -> web.Response:
    handlers = request.app[HANDLERS]
    report = twilio_sms.parse_status(await handlers.verified_form(request))
    delivery_id = request.query.get("delivery", "")
    if not delivery_id.isdigit():
        raise InboundError(400, "delivery must be a row id")
    state = REPORTED.get(report.status)
    if state:
        await handlers.reports.store({"b_id": int(delivery_id), "state": state, "b_sid": report.provider_id,
                                          "b_error": report.error_code})
    return web.Response(text='<?xml version="1.0" encoding="UTF-8"?><Response></Response>',
                        content_type="text/xml")


# --- operator API -----------------------------------------------------------------------------------


async def _json(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError as bad:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not UTF-8
        raise InboundError(400, f"body is not JSON: {bad}") from bad
    if not isinstance(body, dict):
        raise InboundError(400, "body must be a JSON object")
    return body


def _texts(body: dict[str, Any]) -> dict[str, str]:
    texts = body.get("texts")
    if not isinstance(texts, dict) or not all(isinstance(v, str) for v in texts.values()):
        raise InboundError(400, 'texts must be an object of language → text, e.g. {"zh": "..."}')
    return texts


def _audience(body: dict[str, Any]) -> str:
    expression = body.get("audience")
    if not isinstance(expression, str):
        raise InboundError(400, "audience must be an expression such as `tag:elderly and grid:<code>`")
    return expression


async def _in_store(request: web.Request, work: Callable[[Session], Any]) -> Any:
    """Run `work` in a transaction off the event loop; BroadcastError becomes the matching 4xx."""
    sessions = request.app[HANDLERS].sessions

    def run() -> Any:
        with sessions() as session, session.begin():
            return work(session)

    try:
        return await asyncio.to_thread(run)
    except service.BroadcastError as error:
        raise InboundError(error.status, error.reason) from error


def _broadcast_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not raw.isdigit():
        raise InboundError(404, f"no broadcast {raw}")
    return int(raw)


async def api_list(request: web.Request) -> web.Response:
    handlers = request.app[HANDLERS]
    operator = await handlers.current_operator(request)
    settings, tree = handlers.settings, handlers.tree

    def work(session: Session) -> list[dict]:
        rows = session.scalars(select(BroadcastRow).order_by(BroadcastRow.id.desc()).limit(1000))
        return [service.status(session, settings, b, utcnow()) for b in rows
                if service.may_see(tree, settings, operator, b)][:100]

    return web.json_response({"broadcasts": await _in_store(request, work)})


async def api_preview(request: web.Request) -> web.Response:
    handlers = request.app[HANDLERS]
    operator = await handlers.current_operator(request)
    body = await _json(request)
    settings, tree = handlers.settings, handlers.tree
    result = await _in_store(request, lambda session: service.preview(
        session, settings, tree, _audience(body), _texts(body), service.operator_scope(settings, operator),
        bool(body.get("emergency"))))
    return web.json_response(vars(result))


async def api_create(request: web.Request) -> web.Response:
    handlers = request.app[HANDLERS]
    operator = await handlers.current_operator(request)
    body = await _json(request)
    settings, tree = handlers.settings, handlers.tree

    def work(session: Session) -> dict:
        broadcast = service.create(session, settings, tree, operator, title=str(body.get("title") or ""),
                                   expression=_audience(body), texts=_texts(body),
                                   emergency=bool(body.get("emergency")), now=utcnow())
        return {**service.status(session, settings, broadcast, utcnow()),
                "preview": vars(service.preview_of(session, settings, tree, broadcast))}

    return web.json_response(await _in_store(request, work), status=201)


async def api_status(request: web.Request) -> web.Response:
    handlers = request.app[HANDLERS]
    operator = await handlers.current_operator(request)
    settings, tree = handlers.settings, handlers.tree
    broadcast_id = _broadcast_id(request)
    return web.json_response(await _in_store(request, lambda session: service.status(
        session, settings, service.get(session, tree, settings, operator, broadcast_id), utcnow())))


async def api_broadcast_preview(request: web.Request) -> web.Response:
    handlers = request.app[HANDLERS]
    operator = await handlers.current_operator(request)
    settings, tree = handlers.settings, handlers.tree
    broadcast_id = _broadcast_id(request)
    return web.json_response(await _in_store(request, lambda session: vars(service.preview_of(
        session, settings, tree, service.get(session, tree, settings, operator, broadcast_id)))))


async def api_action(request: web.Request) -> web.Response:
    handlers = request.app[HANDLERS]
    operator = await handlers.current_operator(request)
    settings, tree = handlers.settings, handlers.tree
    broadcast_id, action = _broadcast_id(request), request.match_info["action"]
    body = await _json(request)
    try:
        send_at = parse_when(body["send_at"], settings.timezone) if body.get("send_at") else None
    except (TypeError, ValueError) as bad:
        raise InboundError(400, f"send_at must be an ISO 8601 time: {bad}") from bad

    def work(session: Session) -> dict:
        broadcast = service.get(session, tree, settings, operator, broadcast_id)
        now = utcnow()
        if action == "send":
            service.send(session, settings, tree, broadcast, send_at, now)
        else:
            {"pause": service.pause, "resume": service.resume, "cancel": service.cancel}[action](
                session, broadcast, now)
        return service.status(session, settings, broadcast, now)

    return web.json_response(await _in_store(request, work))


def add_routes(app: web.Application) -> None:
    """Called by `gateway.app.create_app` once the gateway's own state is in `app`."""
    from gateway import app as gateway  # the gateway imports this module, not the other way round

    city = app[gateway.CITY]
    app[HANDLERS] = Handlers(
        app[gateway.SETTINGS], app[gateway.SESSIONS],
        GridTree({code: grid.parent_code for code, grid in city.grids.items()}),
        ReportWriter(app[gateway.INTAKE]), gateway.current_operator, gateway.twilio_verified_form)
    app.router.add_post(STATUS_PATH, twilio_broadcast_status)
    app.router.add_get("/api/broadcasts", api_list)
    app.router.add_post("/api/broadcasts", api_create)
    app.router.add_post("/api/broadcasts/preview", api_preview)
    app.router.add_get("/api/broadcasts/{id}", api_status)
    app.router.add_get("/api/broadcasts/{id}/preview", api_broadcast_preview)
    app.router.add_post(r"/api/broadcasts/{id}/{action:send|pause|resume|cancel}", api_action)
