"""Broadcasts from the console: a composer whose audience builder writes the expression
(broadcasts/audience.py), a preview from broadcasts.service, sending, live progress with pause,
resume and cancel, and the history. The grid picker offers only the operator's own subtree, and
any grid outside it is refused without saying how many residents it would reach."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from aiohttp import web
from multidict import MultiDictProxy
from sqlalchemy import select
from sqlalchemy.orm import Session

from broadcasts import service
from broadcasts.audience import GridTree
from broadcasts.models import BroadcastRow
from gateway import strict
from gateway.console import auth
from gateway.console.base import Console, console_of, form, operator, redirect, refusal, render
from gateway.domain.city import CHANNELS, Worker
from gateway.store import ResidentRow, utcnow

TAG_RE = re.compile(r"[a-z0-9_]{1,40}")
LANGUAGES = ("zh", "en")
TAG_SAMPLE = 5000  # residents read to list the tags in use within a jurisdiction
HISTORY = 50


class Refused(ValueError):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def tree_of(console: Console) -> GridTree:
    return GridTree({code: grid.parent_code for code, grid in console.city.grids.items()})


def scope_of(console: Console, worker: Worker) -> str | None:
    try:
        return service.operator_scope(console.settings, worker)
    except service.BroadcastError as error:
        raise Refused(error.status, error.reason) from error


def picker_grids(console: Console, scope: str | None) -> list:
    """The grid tree the operator may address, depth first, for the picker."""
    city, ordered = console.city, []

    def walk(code: str) -> None:
        ordered.append(city.grids[code])
        for child in sorted(c for c, g in city.grids.items() if g.parent_code == code):
            walk(child)

    for root in ([scope] if scope else sorted(c for c, g in city.grids.items() if g.parent_code is None)):
        walk(root)
    return ordered


def tags_in_use(session: Session, console: Console, scope: str | None) -> list[str]:
    query = select(ResidentRow.tags).limit(TAG_SAMPLE)
    if scope:
        query = query.where(ResidentRow.grid_code.in_(console.city.subtree(scope)))
    return sorted({tag for tags in session.scalars(query) for tag in (tags or [])})


def build_expression(console: Console, scope: str | None, posted: MultiDictProxy[str]) -> str:
    """The audience expression the builder's choices mean, always confined to the operator's grid."""
    tags = [t for t in posted.getall("tag", []) if t]
    grids = [g for g in posted.getall("grid", []) if g]
    if any(not TAG_RE.fullmatch(tag) for tag in tags):
        raise Refused(400, "a tag has only lower-case letters, digits and _")
    for grid in grids:
        if grid not in console.city.grids:
            raise Refused(400, f"no grid {grid!r}")
        if scope and not console.city.within(grid, scope):
            raise Refused(403, "that grid is outside your jurisdiction")
    language, channel = posted.get("language", ""), posted.get("channel", "")
    if language and language not in LANGUAGES:
        raise Refused(400, f"language must be one of {', '.join(LANGUAGES)}")
    if channel and channel not in CHANNELS:
        raise Refused(400, f"channel must be one of {', '.join(CHANNELS)}")
    parts = []
    if tags:
        joined = (" and " if posted.get("tags_all") == "on" else " or ").join(f"tag:{t}" for t in tags)
        parts.append(f"({joined})" if len(tags) > 1 else joined)
    if grids:
        parts.append(f"({' or '.join(f'grid:{g}' for g in grids)})" if len(grids) > 1 else f"grid:{grids[0]}")
    elif scope:
        parts.append(f"grid:{scope}")
    if language:
        parts.append(f"language:{language}")
    if channel:
        parts.append(f"channel:{channel}")
    return " and ".join(parts) or "all"


def texts_of(posted: MultiDictProxy[str]) -> dict[str, str]:
    texts = {lang: posted.get(f"text_{lang}", "").strip()[:2000] for lang in LANGUAGES}
    return {lang: text for lang, text in texts.items() if text}


def preview_with_samples(session: Session, console: Console, expression: str, texts: dict[str, str],
                         scope: str | None, emergency: bool) -> dict[str, Any]:
    """The service's preview, plus one rendered sample for each language in the audience."""
    tree = tree_of(console)
    result = service.preview(session, console.settings, tree, expression, texts, scope, emergency)
    samples = {}
    for sample in result.sample:
        samples.setdefault(sample["language"], sample)
    for language in result.by_language:
        if language not in samples and re.fullmatch(r"[a-z]{2,3}", language):
            more = service.preview(session, console.settings, tree, f"({expression}) and language:{language}",
                                   texts, scope, emergency).sample
            if more:
                samples[language] = more[0]
    return {**vars(result), "samples": list(samples.values())}


async def _page(request: web.Request, posted: MultiDictProxy[str] | None = None, preview: dict | None = None,
                expression: str = "", error: str = "", status: int = 200) -> web.StreamResponse:
    console, worker = console_of(request), operator(request)
    try:
        scope = scope_of(console, worker)
    except Refused as refused:
        return refusal(request, refused.status, refused.reason)
    tree = tree_of(console)

    def work(session: Session) -> tuple[list[str], list[dict]]:
        rows = session.scalars(select(BroadcastRow).order_by(BroadcastRow.id.desc()).limit(1000))
        now = utcnow()
        history = [service.status(session, console.settings, b, now) for b in rows
                   if service.may_see(tree, console.settings, worker, b)][:HISTORY]
        return tags_in_use(session, console, scope), history

    tags, history = await console.run(work)
    return render(request, "broadcasts.html", {
        "tags": tags, "grids": picker_grids(console, scope), "history": history, "posted": posted,
        "preview": preview, "expression": expression, "error": error, "channels": CHANNELS,
        "languages": LANGUAGES, "parse_iso": datetime.fromisoformat}, status=status)


async def composer(request: web.Request) -> web.StreamResponse:
    return await _page(request)


async def preview(request: web.Request) -> web.StreamResponse:
    console, worker, posted = console_of(request), operator(request), await form(request)
    try:
        scope = scope_of(console, worker)
        expression = build_expression(console, scope, posted)
        texts = texts_of(posted)
        emergency = posted.get("emergency") == "on"
        shown = await console.run(lambda session: preview_with_samples(session, console, expression, texts,
                                                                      scope, emergency))
    except Refused as refused:
        return await _page(request, posted, error=refused.reason, status=refused.status)
    except service.BroadcastError as error:
        return await _page(request, posted, error=error.reason, status=error.status)
    return await _page(request, posted, preview=shown, expression=expression)


async def create(request: web.Request) -> web.StreamResponse:
    """Create and order the notice sent (now or at the local time given), then show its progress."""
    console, worker, posted = console_of(request), operator(request), await form(request)
    now = utcnow()
    try:
        scope = scope_of(console, worker)
        expression = build_expression(console, scope, posted)
        emergency = posted.get("emergency") == "on"
        if emergency and posted.get("emergency_confirm") != "on":
            raise Refused(400, "an emergency notice needs the confirmation ticked")
        try:
            send_at = strict.moment(posted["send_at"], "send at", console.settings.timezone) \
                if posted.get("send_at") else None
        except strict.BadValue as bad:
            raise Refused(400, "send at must be a local date and time such as 2026-12-04T09:00") from bad

        def work(session: Session) -> int:
            tree = tree_of(console)
            broadcast = service.create(session, console.settings, tree, worker,
                                       title=posted.get("title", "")[:200], expression=expression,
                                       texts=texts_of(posted), emergency=emergency, now=now)
            service.send(session, console.settings, tree, broadcast, send_at, now)
            auth.audit(session, worker, "console", "broadcast_send", str(broadcast.id), "ok", now)
            return broadcast.id

        broadcast_id = await console.run(work)
    except Refused as refused:
        return await _page(request, posted, error=refused.reason, status=refused.status)
    except service.BroadcastError as error:
        return await _page(request, posted, error=error.reason, status=error.status)
    return redirect(f"/console/broadcasts/{broadcast_id}")


def _id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 12):
        raise Refused(404, f"no broadcast {raw[:20]}")
    return int(raw)


async def _status(request: web.Request) -> dict:
    console, worker = console_of(request), operator(request)
    broadcast_id = _id(request)

    def work(session: Session) -> dict:
        try:
            broadcast = service.get(session, tree_of(console), console.settings, worker, broadcast_id)
        except service.BroadcastError as error:
            raise Refused(error.status, error.reason) from error
        return service.status(session, console.settings, broadcast, utcnow())

    view = await console.run(work)
    for key in ("starts_at", "deferred_until"):
        if view.get(key):
            view[key + "_local"] = f"{console.local(datetime.fromisoformat(view[key]))} ({console.settings.timezone})"
    return view


async def progress(request: web.Request) -> web.StreamResponse:
    try:
        view = await _status(request)
    except Refused as refused:
        return refusal(request, refused.status, refused.reason)
    return render(request, "broadcast.html", {"b": view})


async def progress_json(request: web.Request) -> web.StreamResponse:
    try:
        return web.json_response(await _status(request))
    except Refused as refused:
        return web.json_response({"error": refused.reason}, status=refused.status)


async def control(request: web.Request) -> web.StreamResponse:
    """Pause, resume or cancel."""
    console, worker = console_of(request), operator(request)
    action, now = request.match_info["action"], utcnow()
    try:
        broadcast_id = _id(request)

        def work(session: Session) -> None:
            try:
                broadcast = service.get(session, tree_of(console), console.settings, worker, broadcast_id)
                {"pause": service.pause, "resume": service.resume, "cancel": service.cancel}[action](
                    session, broadcast, now)
            except service.BroadcastError as error:
                raise Refused(error.status, error.reason) from error
            auth.audit(session, worker, "console", f"broadcast_{action}", str(broadcast_id), "ok", now)

        await console.run(work)
    except Refused as refused:
        return refusal(request, refused.status, refused.reason)
    return redirect(f"/console/broadcasts/{broadcast_id}")
