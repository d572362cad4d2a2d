"""Request ids, and the line between a refusal (4xx) and a failure (5xx) on every route.

Every response carries `X-Request-Id`. An exception no handler expected is a bug: the caller gets
a 500 naming the request id, and the log gets the exception under the same id, so an operator
can find one from the other. Logs name the route's pattern, never the path or the body, which
may hold a resident's words or number.
"""

from __future__ import annotations

import logging
import re
import secrets

from aiohttp import web

from adapters import InboundError
from gateway import logs

log = logging.getLogger("gateway.app")

REQUEST_ID = "X-Request-Id"
# A proxy's id is kept when it is a plain token; anything else could forge log lines.
_GOOD_ID = re.compile(r"[A-Za-z0-9._-]{8,64}")


def request_id(request: web.Request) -> str:
    """This request's id: the caller's X-Request-Id when it is a plain token, else a new one."""
    if "request_id" not in request:
        offered = request.headers.get(REQUEST_ID, "")
        request["request_id"] = offered if _GOOD_ID.fullmatch(offered) else secrets.token_hex(8)
        logs.REQUEST_ID.set(request["request_id"])  # on this request's log lines (its own task)
    return request["request_id"]


def route_name(request: web.Request) -> str:
    """The route's pattern (`/api/cases/{number}`), which holds nothing a caller wrote."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "(no route)"


def unavailable(request: web.Request, error: Exception, what: str = "store") -> InboundError:
    """A real outage (the store or intake away): logged with its exception, a 503 for the caller to retry."""
    log.error("%s unavailable for %s %s [request %s]", what, request.method, route_name(request),
              request_id(request), exc_info=error)
    return InboundError(503, f"{what} unavailable, retry later (request {request_id(request)})")


@web.middleware
async def request_ids(request: web.Request, handler) -> web.StreamResponse:
    """Outermost: the id header on everything, and a logged 500 for what nobody expected."""
    rid = request_id(request)
    try:
        response = await handler(request)
    except web.HTTPException as http_error:  # aiohttp's own 404 / 405 / 413: JSON with the reason, like ours
        if http_error.status < 400:
            http_error.headers[REQUEST_ID] = rid
            raise
        response = web.json_response({"error": http_error.reason}, status=http_error.status)
        response.headers.extend((name, value) for name, value in http_error.headers.items()
                                if name not in ("Content-Type", "Content-Length"))
    except Exception:
        log.exception("unexpected error in %s %s [request %s]", request.method, route_name(request), rid)
        response = web.json_response({"error": "internal error", "request_id": rid}, status=500)
    response.headers[REQUEST_ID] = rid
    return response
