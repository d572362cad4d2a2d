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
from broadcasts import audience, service
from broadcasts.audience import GridTree
from broadcasts.models import BroadcastRow
from gateway.config import Settings
from gateway.domain.city import City, Worker
from gateway.store import utcnow
from gateway.strict import boolean, known_only, load_json, moment, row_id, text

log = logging.getLogger(__name__)

MAX_TITLE = 200
MAX_TEXT = 4000  # characters per language: Telegram's 4,096 less room for the signature
MAX_LANGUAGES = 20


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
    """The JSON object in the body ({} without one), its depth checked before it is parsed."""
    known_only(request.query, ())
    if not request.can_read_body:
        return {}
    body = load_json(await request.read())
    if not isinstance(body, dict):
        raise InboundError(400, "body must be a JSON object")
    return body


def _texts(body: dict[str, Any]) -> dict[str, str]:
    texts = body.get("texts")
    if not isinstance(texts, dict) or not all(isinstance(v, str) for v in texts.values()):
        raise InboundError(400, 'texts must be an object of language → text, e.g. {"zh": "..."}')
    if len(texts) > MAX_LANGUAGES:
        raise InboundError(400, f"texts has more than {MAX_LANGUAGES} languages")
    return {text(language, "a texts language", 16): text(value, f"texts.{language}", MAX_TEXT)
            for language, value in texts.items()}


def _audience(body: dict[str, Any]) -> str:
    expression = body.get("audience")
    if not isinstance(expression, str):
        raise InboundError(400, "audience must be an expression such as `tag:elderly and grid:<code>`")
    return text(expression, "audience", audience.MAX_LENGTH)


def _emergency(body: dict[str, Any]) -> bool:
    """Strictly true or false: `"emergency": "no"` must not wake residents in quiet hours."""
    return boolean(body.get("emergency", False), "emergency", words=False)


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
    known_only(request.query, ())
    return row_id(request.match_info["id"], "the broadcast id")


async def api_list(request: web.Request) -> web.Response:
    handlers = request.app[HANDLERS]
    operator = await handlers.current_operator(request)
    known_only(request.query, ())
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
    expression, texts, emergency = _audience(body), _texts(body), _emergency(body)
    result = await _in_store(request, lambda session: service.preview(
        session, settings, tree, expression, texts, service.operator_scope(settings, operator), emergency))
    return web.json_response(vars(result))


async def api_create(request: web.Request) -> web.Response:
    handlers = request.app[HANDLERS]
    operator = await handlers.current_operator(request)
    body = await _json(request)
    settings, tree = handlers.settings, handlers.tree
    title = text(body.get("title") or "", "title", MAX_TITLE)
    expression, texts, emergency = _audience(body), _texts(body), _emergency(body)

    def work(session: Session) -> dict:
        broadcast = service.create(session, settings, tree, operator, title=title, expression=expression,
                                   texts=texts, emergency=emergency, now=utcnow())
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
    send_at = moment(body["send_at"], "send_at", settings.timezone) if body.get("send_at") else None

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


def add_routes(app: web.Application, settings: Settings, sessions: sessionmaker[Session], city: City,
               current_operator: Callable[[web.Request], Awaitable[Worker]]) -> None:
    """Called by `gateway.app.create_app` with what the handlers use of the gateway (this module
    never imports the app: the app imports it)."""
    tree = GridTree({code: grid.parent_code for code, grid in city.grids.items()})
    app[HANDLERS] = Handlers(settings, sessions, tree, current_operator)
    app.router.add_get("/api/broadcasts", api_list)
    app.router.add_post("/api/broadcasts", api_create)
    app.router.add_post("/api/broadcasts/preview", api_preview)
    # ASCII digits only (`\d` would take `²`); `preview` is then never mistaken for an id.
    app.router.add_get("/api/broadcasts/{id:[0-9]+}", api_status)
    app.router.add_get("/api/broadcasts/{id:[0-9]+}/preview", api_broadcast_preview)
    app.router.add_post(r"/api/broadcasts/{id:[0-9]+}/{action:send|pause|resume|cancel}", api_action)
