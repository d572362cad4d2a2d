"""`gridline broadcast create|preview|send|status|pause|resume|cancel` — the district's own console.

The CLI works on the store directly and acts for the whole district (operators with narrower
jurisdiction use the HTTP API with their token). Sending is a state change: the running
`gridline up` notices it within a sweep interval and starts the fan-out.

    gridline broadcast create --audience "tag:elderly and tag:empty_nest and grid:<code>" \\
        --text zh="{name}您好：明天高温，请减少外出。如需帮助请联系网格员{worker_name} {worker_phone}" \\
        --text en="Dear {name}, heat wave tomorrow; call {worker_name} {worker_phone} if you need help"
    gridline broadcast send 1 --watch
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from typing import Any

from gateway.config import Settings
from gateway.strict import BadValue, argument, moment, row_id

WATCH_INTERVAL = 1.0
ID = argument(lambda raw: row_id(raw, "a broadcast id"))
BAR_WIDTH = 30


def _texts(pairs: list[str]) -> dict[str, str]:
    texts = {}
    for pair in pairs:
        language, sep, text = pair.partition("=")
        if not sep:
            raise BadValue("--text", f"takes LANGUAGE=TEXT, e.g. zh=..., not {pair!r}")
        texts[language.strip()] = text
    return texts


def _store(settings: Settings):
    from broadcasts.audience import GridTree
    from gateway.store import make_engine, session_factory

    sessions = session_factory(make_engine(settings.sqlalchemy_url))
    with sessions() as session:
        tree = GridTree.load(session)
    return sessions, tree


def _print(value: Any) -> None:
    print(json.dumps(value, ensure_ascii=False, indent=2, default=str))


def _act(settings: Settings, args: argparse.Namespace) -> int:
    """Run one action in a transaction; a refusal is printed, not raised."""
    from sqlalchemy import select

    from broadcasts import service
    from broadcasts.models import BroadcastRow
    from gateway.store import utcnow

    at = moment(args.at, "--at", settings.timezone) if getattr(args, "at", None) else None  # before the store
    sessions, tree = _store(settings)
    now = utcnow()
    try:
        with sessions() as session, session.begin():
            if args.action == "create":
                broadcast = service.create(session, settings, tree, None, title=args.title or "",
                                           expression=args.audience, texts=_texts(args.text),
                                           emergency=args.emergency, now=now)
                _print({"id": broadcast.id, "preview": asdict(service.preview_of(session, settings, tree,
                                                                                 broadcast))})
                return 0
            if args.action == "preview" and args.id is None:
                if not args.audience or not args.text:
                    raise BadValue("preview", "needs a broadcast id, or --audience and --text")
                _print(asdict(service.preview(session, settings, tree, args.audience, _texts(args.text),
                                              None, args.emergency)))
                return 0
            if args.id is None:
                rows = session.scalars(select(BroadcastRow).order_by(BroadcastRow.id.desc()).limit(20))
                _print([service.status(session, settings, b, now) for b in rows])
                return 0
            broadcast = service.get(session, tree, settings, None, args.id)
            if args.action == "preview":
                _print(asdict(service.preview_of(session, settings, tree, broadcast)))
            elif args.action == "send":
                service.send(session, settings, tree, broadcast, at, now)
            elif args.action in ("pause", "resume", "cancel"):
                getattr(service, args.action)(session, broadcast, now)
            if args.action != "preview" and not getattr(args, "watch", False):
                _print(service.status(session, settings, broadcast, now))
    except service.BroadcastError as error:
        print(f"refused: {error.reason}", file=sys.stderr)
        return 1
    if getattr(args, "watch", False):
        return watch(settings, args.id)
    return 0


def progress_line(view: dict, rate: float) -> str:
    """One line: bar, sent / delivered / failed / remaining, the current rate and the ETA."""
    total = max(view["audience_size"], view["sent"] + view["failed"] + view["remaining"], 1)
    done = min(view["sent"] + view["failed"] - view["by_state"].get("undelivered", 0) + view["cancelled"], total)
    filled = int(BAR_WIDTH * done / total)
    eta = f"{int(view['remaining'] / rate) // 60}:{int(view['remaining'] / rate) % 60:02d}" \
        if rate > 0 and view["remaining"] else "-"
    return (f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {100 * done / total:5.1f}%  {view['state']:<9} "
            f"sent {view['sent']:,} · delivered {view['delivered']:,} · failed {view['failed']:,} · "
            f"remaining {view['remaining']:,} · {rate:,.0f}/s · ETA {eta}")


def watch(settings: Settings, broadcast_id: int) -> int:
    """Redraw the progress line every second until the broadcast is done, cancelled or paused."""
    from broadcasts import service
    from gateway.store import utcnow

    sessions, tree = _store(settings)
    last: tuple[float, int] | None = None
    while True:
        with sessions() as session:
            view = service.status(session, settings, service.get(session, tree, settings, None, broadcast_id),
                                  utcnow())
        moved = view["sent"] + view["failed"]
        now = time.monotonic()
        rate = (moved - last[1]) / (now - last[0]) if last and now > last[0] else view["rate"]
        last = (now, moved)
        print("\r" + progress_line(view, rate), end="", flush=True)
        if view["state"] in ("done", "cancelled", "paused"):
            print()
            return 0
        time.sleep(WATCH_INTERVAL)


def register(commands: argparse._SubParsersAction) -> None:
    """Add `broadcast` and its actions to the gridline command."""
    main = commands.add_parser("broadcast", help="community notices: create, preview, send, follow")
    actions = main.add_subparsers(dest="action", required=True)

    p = actions.add_parser("create", help="a draft broadcast; prints its id and the preview")
    p.add_argument("--audience", required=True, help='e.g. "tag:elderly and grid:<code>", or all')
    p.add_argument("--text", action="append", required=True, metavar="LANG=TEXT",
                   help="one per language; fields {name} {worker_name} {worker_phone} {grid}")
    p.add_argument("--title")
    p.add_argument("--emergency", action="store_true", help="also to opted-out residents, and in quiet hours")

    p = actions.add_parser("preview", help="audience size, sample, channels, SMS segments and cost")
    p.add_argument("id", type=ID, nargs="?")
    p.add_argument("--audience")
    p.add_argument("--text", action="append", metavar="LANG=TEXT")
    p.add_argument("--emergency", action="store_true")

    p = actions.add_parser("send", help="send now, or --at a local time; quiet hours may defer it")
    p.add_argument("id", type=ID)
    p.add_argument("--at", help="ISO time, local unless it has an offset: 2026-07-01T09:00")
    p.add_argument("--watch", action="store_true", help="show live progress")

    p = actions.add_parser("status", help="counts, rate and ETA; all recent broadcasts without an id")
    p.add_argument("id", type=ID, nargs="?")
    p.add_argument("--watch", action="store_true", help="live progress bar until it finishes")

    for action in ("pause", "resume", "cancel"):
        actions.add_parser(action, help=f"{action} a broadcast").add_argument("id", type=ID)
    main.set_defaults(run=_act)
