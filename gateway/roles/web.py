"""The web process's entry point (`python -m gateway.roles.web`), kept apart from gateway.app so that
module is only ever imported under its own name."""

from __future__ import annotations

from aiohttp import web

from gateway.app import create_app
from gateway.config import load_settings
from gateway.logs import setup_logging


def main() -> None:
    setup_logging()
    settings = load_settings()
    web.run_app(create_app(settings), host=settings.host, port=settings.port, access_log=None, print=None,
                reuse_port=True)  # the web processes share the port


if __name__ == "__main__":
    main()
