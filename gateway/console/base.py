"""The console's plumbing: security headers, sign-in, sessions, CSRF, language, store access.

Every console response carries the security headers; every page but sign-in needs a live session
(else a redirect to sign-in), and every POST needs the session's CSRF token (else 403 with the
reason). Forms before sign-in carry a double-submit token: a cookie and a field that must match.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp_jinja2
from aiohttp import web
from multidict import MultiDictProxy
from sqlalchemy.orm import Session, sessionmaker

from adapters.phones import NotAPhoneNumber
from gateway.config import Settings
from gateway.console import auth
from gateway.console.i18n import LANGUAGES, translator
from gateway.delivery import outbox
from gateway.domain import replies
from gateway.domain.city import City, Worker
from gateway.store import utcnow
from gateway.world import World

log = logging.getLogger(__name__)

SESSION_COOKIE = "gridline_session"
PRE_COOKIE = "gridline_pre"  # double-submit CSRF token for the sign-in forms
LANG_COOKIE = "gridline_lang"
OPEN_PATHS = ("/console/signin", "/console/static/")
HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
MAX_FORM = 64 * 1024


class Console:
    """What the console's handlers share: settings, city, store, a World for the workflow, delivery."""

    def __init__(self, settings: Settings, city: City, sessions: sessionmaker[Session],
                 deliver: Callable[[list[outbox.Queued]], None],
                 current_operator: Callable[[web.Request], Awaitable[Worker]]):
        self.settings, self.city, self.sessions, self.deliver = settings, city, sessions, deliver
        self.current_operator = current_operator  # the API's Bearer-token check
        # Case actions never classify, so the console's World carries no classifier (~100 MB saved).
        self.world = World(settings, city, None)  # type: ignore[arg-type]

    @property
    def secure(self) -> bool:
        return self.settings.base_url.startswith("https://")

    async def run(self, work: Callable[[Session], Any]) -> Any:
        """`work` in one transaction, off the event loop."""
        def run() -> Any:
            with self.sessions() as session, session.begin():
                return work(session)

        return await asyncio.to_thread(run)

    def local(self, moment: datetime | None) -> str:
        if moment is None:
            return "—"
        return moment.replace(tzinfo=UTC).astimezone(ZoneInfo(self.settings.timezone)).strftime("%Y-%m-%d %H:%M")


CONSOLE = web.AppKey("console", Console)


def console_of(request: web.Request) -> Console:
    return request.config_dict[CONSOLE]


def operator(request: web.Request) -> Worker:
    return request["signed_in"].worker


def language(request: web.Request) -> str:
    chosen = request.query.get("lang") or request.cookies.get(LANG_COOKIE, "zh")
    return chosen if chosen in LANGUAGES else "zh"


async def form(request: web.Request) -> MultiDictProxy[str]:
    """The posted form, decoded strictly; what cannot be read is the sender's 400."""
    if request.content_length is not None and request.content_length > MAX_FORM:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_FORM, actual_size=request.content_length)
    if request.content_type != "application/x-www-form-urlencoded":  # the console's forms; every value a str
        raise web.HTTPUnsupportedMediaType(text="expected application/x-www-form-urlencoded")
    if "form" not in request:
        try:
            request["form"] = await request.post()
        except (ValueError, UnicodeDecodeError) as bad:
            raise web.HTTPBadRequest(text=f"the form could not be read: {type(bad).__name__}") from bad
    return request["form"]


def refusal(request: web.Request, status: int, reason: str) -> web.Response:
    """A plain page saying what was refused and why (escaped by the template)."""
    return render(request, "refused.html", {"status": status, "reason": reason}, status=status)


def redirect(location: str) -> web.Response:
    """A 303 to another console page (after a POST, so a reload does not repeat it)."""
    return web.Response(status=303, headers={"Location": location})


async def to_console(_request: web.Request) -> web.Response:
    return redirect("/console/")


def _cookie(response: web.StreamResponse, console: Console, name: str, value: str, max_age: int | None) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/console", httponly=True, samesite="Strict",
                        secure=console.secure)


def _same(posted: object, expected: str | None) -> bool:
    """A CSRF token matches, in constant time; anything that is not a non-empty string does not."""
    if not isinstance(posted, str) or not posted or not expected:
        return False
    return hmac.compare_digest(posted.encode("utf-8", "replace"), expected.encode("utf-8", "replace"))


@web.middleware
async def guard(request: web.Request, handler) -> web.StreamResponse:
    """Headers on everything; a session for every page but sign-in; a CSRF token on every POST."""
    try:
        response = await _guarded(request, handler)
    except web.HTTPException as error:  # raised ones (redirects, 404s): answered as plain responses
        response = web.Response(status=error.status, text=error.text, headers=error.headers)
    for name, value in HEADERS.items():
        response.headers[name] = value
    if request.query.get("lang") in LANGUAGES and not response.prepared:
        _cookie(response, console_of(request), LANG_COOKIE, request.query["lang"], 365 * 24 * 3600)
    return response


async def _guarded(request: web.Request, handler) -> web.StreamResponse:
    console = console_of(request)
    request["lang"] = language(request)
    if request.path.startswith(OPEN_PATHS):
        request["signed_in"] = None
        if request.method == "POST":
            if not _same((await form(request)).get("csrf"), request.cookies.get(PRE_COOKIE)):
                return refusal(request, 403, "CSRF token missing or wrong: reload the sign-in page and try again")
        return await handler(request)
    token = request.cookies.get(SESSION_COOKIE, "")
    now = utcnow()
    signed_in = await console.run(lambda session: auth.current(session, console.settings, token, now)) \
        if token else None
    if signed_in is None:
        return redirect("/console/signin")
    request["signed_in"] = signed_in
    if request.method == "POST":
        if not _same((await form(request)).get("csrf") or request.headers.get("X-CSRF-Token"), signed_in.csrf):
            return refusal(request, 403, "CSRF token missing or wrong: reload the page and try again")
    return await handler(request)


def render(request: web.Request, template: str, values: dict[str, Any], status: int = 200) -> web.Response:
    """A page from `template` with what every page needs (words, operator, CSRF token, time zone)."""
    return aiohttp_jinja2.render_template(template, request, {**context(request), **values}, status=status)


def context(request: web.Request) -> dict[str, Any]:
    """What every template sees."""
    console = console_of(request)
    signed_in = request.get("signed_in")
    lang = request.get("lang", "zh")
    return {"t": translator(lang), "lang": lang, "state_name": lambda state: replies.state_name(state, lang),
            "me": signed_in.worker if signed_in else None, "csrf": signed_in.csrf if signed_in else
            request.get("pre_csrf", ""), "tz": console.settings.timezone, "local": console.local,
            "path": request.path}


# --- sign-in ----------------------------------------------------------------------------------


def _pre_token(request: web.Request) -> str:
    request["pre_csrf"] = request.cookies.get(PRE_COOKIE) or secrets.token_urlsafe(24)
    return request["pre_csrf"]


def _signin_page(request: web.Request, step: str, phone: str = "", message: str = "", status: int = 200):
    token = _pre_token(request)
    response = render(request, "signin.html", {"step": step, "phone": phone, "message": message}, status=status)
    _cookie(response, console_of(request), PRE_COOKIE, token, 3600)
    return response


async def signin_form(request: web.Request) -> web.StreamResponse:
    return _signin_page(request, "phone")


async def signin_phone(request: web.Request) -> web.StreamResponse:
    console, posted = console_of(request), await form(request)
    try:
        phone = auth.normalise_phone(console.settings, posted.get("phone", ""))
    except NotAPhoneNumber as bad:
        return _signin_page(request, "phone", message=str(bad), status=400)
    now = utcnow()

    def work(session: Session) -> list[outbox.Queued]:
        rows = auth.request_code(session, console.settings, phone, now)
        session.flush()
        return outbox.queued(rows)

    console.deliver(await console.run(work))
    return _signin_page(request, "code", phone=phone, message=translator(request["lang"])("code_sent"))


async def signin_code(request: web.Request) -> web.StreamResponse:
    console, posted = console_of(request), await form(request)
    try:
        phone = auth.normalise_phone(console.settings, posted.get("phone", ""))
    except NotAPhoneNumber as bad:
        return _signin_page(request, "phone", message=str(bad), status=400)
    code, now = posted.get("code", "")[:32], utcnow()

    def work(session: Session) -> auth.SignedIn | None:
        signed_in = auth.verify_code(session, console.settings, phone, code, now)
        if signed_in is not None:
            auth.audit(session, signed_in.worker, "console", "sign_in", "", "ok", now)
        return signed_in

    signed_in = await console.run(work)
    if signed_in is None:
        return _signin_page(request, "code", phone=phone, status=401,
                            message=translator(request["lang"])("code_wrong"))
    response = redirect("/console/")
    _cookie(response, console, SESSION_COOKIE, signed_in.token, None)
    response.del_cookie(PRE_COOKIE, path="/console")
    return response


async def sign_out(request: web.Request) -> web.StreamResponse:
    console, now = console_of(request), utcnow()
    signed_in = request["signed_in"]

    def work(session: Session) -> None:
        auth.sign_out(session, signed_in.token, now)
        auth.audit(session, signed_in.worker, "console", "sign_out", "", "ok", now)

    await console.run(work)
    response = redirect("/console/signin")
    response.del_cookie(SESSION_COOKIE, path="/console")
    return response
