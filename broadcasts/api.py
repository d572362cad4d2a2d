"""Broadcasts over HTTP: the operator API under /api/broadcasts.

    GET  /api/broadcasts                       the operator's broadcasts, newest first
    POST /api/broadcasts/preview               {"audience", "texts", "emergency"} → size, split, sample, cost
    POST /api/broadcasts                       the same plus "title" → 201, a draft (refused 403 outside
                                               the operator's jurisdiction)
    GET  /api/broadcasts/{id}                  status: counts, rate, ETA
    GET  /api/broadcasts/{id}/preview
    POST /api/broadcasts/{id}/send             {"send_at": "2026-07-01T09:00"} optional (local time)
    POST /api/broadcasts/{id}/pause|resume|cancel
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from adapters import InboundError
from broadcasts import service
from broadcasts.audience import GridTree
from broadcasts.models import BroadcastRow
from broadcasts.schedule import parse_when
from gateway.config import Settings
from gateway.domain.city import Worker
from gateway.store import utcnow

log = logging.getLogger(__name__)


@dataclass
class Handlers:
    """What the broadcast handlers use of the gateway app (its settings, store and auth)."""

    settings: Settings
    sessions: sessionmaker[Session]
    tree: GridTree
    current_operator: Callable[[web.Request], Awaitable[Worker]]


HANDLERS = web.AppKey("broadcasts", Handlers)


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
        GridTree({code: grid.parent_code for code, grid in city.grids.items()}), gateway.current_operator)
    app.router.add_get("/api/broadcasts", api_list)
    app.router.add_post("/api/broadcasts", api_create)
    app.router.add_post("/api/broadcasts/preview", api_preview)
    app.router.add_get("/api/broadcasts/{id}", api_status)
    app.router.add_get("/api/broadcasts/{id}/preview", api_broadcast_preview)
    app.router.add_post(r"/api/broadcasts/{id}/{action:send|pause|resume|cancel}", api_action)
