"""The operators' web console (issue 13), served by the gateway under /console/, plus the case
action API `POST /api/cases/{number}/{action}`. Mounted by one `setup(...)` call in gateway.app."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp_jinja2
import jinja2
import redis
from aiohttp import web
from sqlalchemy.orm import Session, sessionmaker

from gateway.config import Settings
from gateway.console import base, cases, figures, notices
from gateway.console.base import CONSOLE, Console
from gateway.delivery import outbox
from gateway.domain.city import City, Worker
from gateway.queues import connect, private_redis_url

log = logging.getLogger(__name__)
HERE = Path(__file__).parent


def _deliverer(settings: Settings) -> Callable[[list[outbox.Queued]], None]:
    """Hand delivery rows to their lanes after their transaction commits, as `gridline case` does; if
    Redis is unreachable the sweeper finds the pending rows and hands them over itself."""
    holder: dict[str, redis.Redis] = {}

    def deliver(outgoing: list[outbox.Queued]) -> None:
        if not outgoing:
            return
        try:
            if "redis" not in holder:
                holder["redis"] = connect(settings.redis_url or private_redis_url(settings.home))
            outbox.enqueue(holder["redis"], outgoing)
        except redis.RedisError:  # the sweeper hands pending rows to their lanes: say so and carry on
            log.warning("could not queue %d console message(s) now; the sweeper will", len(outgoing))

    return deliver


def setup(app: web.Application, settings: Settings, city: City, sessions: sessionmaker[Session],
          current_operator: Callable[[web.Request], Awaitable[Worker]]) -> None:
    """Mount the console on the gateway app; `current_operator` is the API's Bearer-token check."""
    app[CONSOLE] = Console(settings, city, sessions, _deliverer(settings), current_operator)
    app.router.add_post(r"/api/cases/{number}/{action}", cases.api_case_action)
    app.router.add_get("/console", base.to_console)

    console = web.Application(middlewares=[base.guard], client_max_size=base.MAX_FORM)
    aiohttp_jinja2.setup(console, loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                         undefined=jinja2.StrictUndefined)
    routes = console.router
    routes.add_get("/", cases.home)
    routes.add_get("/signin", base.signin_form)
    routes.add_post("/signin", base.signin_phone)
    routes.add_post("/signin/code", base.signin_code)
    routes.add_post("/signout", base.sign_out)
    routes.add_get("/triage", cases.triage)
    routes.add_get("/cases", cases.board)
    routes.add_get("/cases/{number}", cases.detail)
    routes.add_post("/cases/{number}/{action}", cases.case_action)
    routes.add_get("/broadcasts", notices.composer)
    routes.add_post("/broadcasts/preview", notices.preview)
    routes.add_post("/broadcasts", notices.create)
    routes.add_get("/broadcasts/{id}", notices.progress)
    routes.add_get("/broadcasts/{id}/status.json", notices.progress_json)
    routes.add_post(r"/broadcasts/{id}/{action:pause|resume|cancel}", notices.control)
    routes.add_get("/figures", figures.figures)
    routes.add_get("/figures.csv", figures.figures_csv)
    routes.add_static("/static/", HERE / "static")
    app.add_subapp("/console/", console)
