"""The `gridline` command."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from broadcasts.cli import register as register_broadcast
from gateway.city import CityImportError, load_city
from gateway.config import Settings, load_settings
from gateway.logs import setup_logging


def command_up(settings: Settings, _args: argparse.Namespace) -> int:
    from gateway import supervisor

    supervisor.run(settings)
    return 0


def command_import(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.store import import_city, make_engine, migrate, session_factory

    try:
        city = load_city(args.folder)
    except CityImportError as error:
        print(error, file=sys.stderr)
        print("Nothing was imported.", file=sys.stderr)
        return 1
    settings.home.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.sqlalchemy_url)
    migrate(engine)
    with session_factory(engine)() as session, session.begin():
        counts = import_city(session, city)
    print("Imported " + ", ".join(f"{n} {name}" for name, n in counts.items()) + ".")
    print("Running workers and the gateway load the city at start: restart them to see changes.")
    return 0


def command_sms(settings: Settings, args: argparse.Namespace) -> int:
    """Post a correctly signed Twilio webhook, then print what the gateway texts back."""
    from adapters import twilio_sms

    account_sid, auth_token = settings.twilio_credentials
    client = twilio_sms.make_client(settings)
    already = {m.sid for m in client.messages.list(to=args.sender, limit=1000)}
    message_sid = "SM" + secrets.token_hex(16)
    form = {
        "ToCountry": "CN", "ToState": "", "SmsMessageSid": message_sid, "NumMedia": "0", "ToCity": "",
        "FromZip": "", "SmsSid": message_sid, "FromState": "", "SmsStatus": "received", "FromCity": "",
        "Body": args.text, "FromCountry": "CN", "To": settings.twilio_from_number, "ToZip": "",
        "NumSegments": "1", "MessageSid": message_sid, "AccountSid": account_sid, "From": args.sender,
        "ApiVersion": "2010-04-01",
    }
    path = "/webhooks/twilio/sms"
    request = urllib.request.Request(
        f"http://{settings.host}:{settings.port}{path}", data=urllib.parse.urlencode(form).encode(),
        headers={"X-Twilio-Signature": twilio_sms.sign(settings.base_url + path, form, auth_token),
                 "Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            print(f"→ gateway answered {response.status} ({message_sid})")
    except urllib.error.HTTPError as error:
        print(f"→ gateway refused it: {error.code} {error.read().decode()}", file=sys.stderr)
        return 1
    except urllib.error.URLError as error:
        print(f"→ no gateway at {settings.host}:{settings.port}: {error.reason}. Is `gridline up` running?",
              file=sys.stderr)
        return 1
    deadline, quiet_until = time.monotonic() + args.wait, None
    while time.monotonic() < deadline and (quiet_until is None or time.monotonic() < quiet_until):
        for message in reversed(client.messages.list(to=args.sender, limit=1000)):
            if message.sid not in already:
                already.add(message.sid)
                print(f"← {message.body}")
                quiet_until = time.monotonic() + 1.5  # more replies may follow the first
        time.sleep(0.2)
    if quiet_until is None:
        print(f"(no reply within {args.wait:.0f} s)", file=sys.stderr)
        return 1
    return 0


def command_cases(settings: Settings, args: argparse.Namespace) -> int:
    from gateway import cases
    from gateway.store import CaseRow, load_city_from_store, make_engine, session_factory

    with session_factory(make_engine(settings.sqlalchemy_url))() as session:
        city = load_city_from_store(session)
        if args.number:
            case = session.query(CaseRow).filter_by(number=args.number).one_or_none()
            if case is None:
                print(f"no case {args.number}", file=sys.stderr)
                return 1
            print(json.dumps(cases.case_view(session, case, with_history=True), ensure_ascii=False, indent=2))
            return 0
        found = cases.find_cases(session, city, state=args.state, grid=args.grid, category=args.category,
                                 limit=args.limit)
        print(f"{'number':<11} {'state':<11} {'queue':<7} {'category':<20} {'department':<13} "
              f"{'grid':<12} text")
        for case in found:
            text = case.text.replace("\n", " ")
            print(f"{case.number:<11} {case.state:<11} {case.queue:<7} {case.category or '-':<20} "
                  f"{case.department:<13} {case.grid_code or '-':<12} {text[:40]}")
        print(f"({len(found)} case(s))")
    return 0


def command_operator_token(settings: Settings, args: argparse.Namespace) -> int:
    from gateway import operators
    from gateway.store import load_city_from_store, make_engine, session_factory

    with session_factory(make_engine(settings.sqlalchemy_url))() as session, session.begin():
        city = load_city_from_store(session)
        try:
            token = operators.issue_token(session, city, args.worker_id)
        except KeyError as error:
            print(error.args[0], file=sys.stderr)
            return 1
    worker = city.workers[args.worker_id]
    print(token)
    print(f"(operator {worker.id} {worker.name}, {worker.role}, "
          f"{worker.grid_code or worker.department_code})", file=sys.stderr)
    return 0


def command_classify(settings: Settings, _args: argparse.Namespace) -> int:
    from classifiers.cli import classify_stream

    classify_stream(settings, sys.stdin, sys.stdout)
    return 0


def command_eval(settings: Settings, args: argparse.Namespace) -> int:
    from classifiers.cli import evaluate_file

    evaluate_file(settings, Path(args.file), sys.stdout)
    return 0


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="gridline", description="SMS and chat gateway for grid management")
    main.add_argument("--config", type=Path, help="configuration folder (default: config/)")
    commands = main.add_subparsers(dest="command", required=True)

    commands.add_parser("up", help="run the gateway, workers and (if needed) Redis and the sandbox") \
        .set_defaults(run=command_up)

    p = commands.add_parser("import", help="import a city's CSV exports into the store")
    p.add_argument("folder", type=Path)
    p.set_defaults(run=command_import)

    p = commands.add_parser("sms", help="text the running gateway as a resident would (signed webhook)")
    p.add_argument("text")
    p.add_argument("--from", dest="sender", required=True, help="the resident's phone, E.164")
    p.add_argument("--wait", type=float, default=15.0, help="seconds to wait for replies")
    p.set_defaults(run=command_sms)

    p = commands.add_parser("cases", help="list cases, or show one with its history")
    p.add_argument("number", nargs="?")
    p.add_argument("--state")
    p.add_argument("--grid", help="a grid code: its whole subtree")
    p.add_argument("--category")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(run=command_cases)

    p = commands.add_parser("operator", help="operator access")
    p.add_argument("action", choices=["token"])
    p.add_argument("worker_id")
    p.set_defaults(run=command_operator_token)

    commands.add_parser("classify", help="classify JSON lines from stdin").set_defaults(run=command_classify)

    p = commands.add_parser("eval", help="score the classifier on a labelled JSON-lines file")
    p.add_argument("file")
    p.set_defaults(run=command_eval)

    register_broadcast(commands)
    return main


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging("WARNING" if args.command in ("classify", "eval", "sms", "cases") else "INFO")
    environ = dict(os.environ)
    if args.config:
        environ["GRIDLINE_CONFIG_DIR"] = str(args.config)
    return args.run(load_settings(environ), args)


if __name__ == "__main__":
    sys.exit(main())
