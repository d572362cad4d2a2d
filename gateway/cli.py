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
from typing import TYPE_CHECKING, NoReturn

from adapters.phones import NotAPhoneNumber, to_e164
from broadcasts.cli import register as register_broadcast
from gateway.config import Settings, load_settings
from gateway.domain.city import CityImportError, load_city
from gateway.logs import setup_logging
from gateway.strict import BadValue, argument, integer, moment

if TYPE_CHECKING:
    from redis import Redis

# A person's mistake, not a bug: `main` prints the reason on one line and exits 2.
USER_ERRORS = (BadValue, NotAPhoneNumber)


class Unreachable(Exception):
    """A part of the running Gridline the command needs is not there (gridline up not running?)."""


def command_up(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.roles import supervisor

    try:
        supervisor.run(settings, supervisor.parse_roles(args.role))
    except supervisor.StartRefused as refused:
        print(refused, file=sys.stderr)
        return 2
    return 0


def command_import(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.store import import_city, make_engine, migrate, session_factory

    try:
        city = load_city(args.folder, settings.default_region)
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
    from twilio.base.exceptions import TwilioException

    from adapters import twilio_sms

    sender = to_e164(args.sender, settings.default_region)
    account_sid, auth_token = settings.twilio_credentials
    client = twilio_sms.make_client(settings)
    try:
        already = {m.sid for m in client.messages.list(to=sender, limit=1000)}
    except (OSError, TwilioException) as error:  # requests' ConnectionError is an OSError
        raise Unreachable(f"no Twilio API at {settings.twilio_base} ({type(error).__name__}): "
                          "is `gridline up` running?") from error
    message_sid = "SM" + secrets.token_hex(16)
    form = {
        "ToCountry": "CN", "ToState": "", "SmsMessageSid": message_sid, "NumMedia": "0", "ToCity": "",
        "FromZip": "", "SmsSid": message_sid, "FromState": "", "SmsStatus": "received", "FromCity": "",
        "Body": args.text, "FromCountry": "CN", "To": settings.twilio_from_number, "ToZip": "",
        "NumSegments": "1", "MessageSid": message_sid, "AccountSid": account_sid, "From": sender,
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
    except (urllib.error.URLError, OSError) as error:  # refused, reset, or no answer in time
        raise Unreachable(f"no gateway at {settings.host}:{settings.port} ({getattr(error, 'reason', error)}): "
                          "is `gridline up` running?") from error
    deadline, quiet_until = time.monotonic() + args.wait, None
    while time.monotonic() < deadline and (quiet_until is None or time.monotonic() < quiet_until):
        for message in reversed(client.messages.list(to=sender, limit=1000)):
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
    from gateway.domain import cases
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
    from gateway.domain import operators
    from gateway.store import load_city_from_store, make_engine, session_factory

    with session_factory(make_engine(settings.sqlalchemy_url))() as session, session.begin():
        city = load_city_from_store(session)
        try:
            if args.action == "revoke":
                ended = operators.revoke(session, args.worker_id)
                print(f"operator {args.worker_id}: {ended} token(s) and console session(s) ended")
                return 0
            token = operators.issue_token(session, city, args.worker_id, days=settings.operator_token_days)
        except KeyError as error:
            print(error.args[0], file=sys.stderr)
            return 1
    worker = city.workers[args.worker_id]
    print(token)
    print(f"(operator {worker.id} {worker.name}, {worker.role}, "
          f"{worker.grid_code or worker.department_code}; expires in {settings.operator_token_days:g} days)",
          file=sys.stderr)
    return 0


def command_tick(settings: Settings, args: argparse.Namespace) -> int:
    """Run the deadline clock once, as of now or of --now: the controllable clock tests use."""
    from gateway.queues import CLOCK_QUEUE, queues
    from gateway.roles import jobs

    at = moment(args.now, "--now", settings.timezone) if args.now else None
    jobs.enqueue_tick(queues(_redis(settings))[CLOCK_QUEUE], at)
    print(f"deadline check queued as of {at.isoformat() + 'Z' if at else 'now'}")
    return 0


def _redis(settings: Settings) -> Redis:
    """The running Gridline's Redis; Unreachable when it is not there."""
    from redis.exceptions import ConnectionError as RedisDown

    from gateway.queues import connect, private_redis_url

    try:
        connection = connect(settings.redis_url or private_redis_url(settings.home))
        connection.ping()
    except RedisDown as error:
        raise Unreachable("Redis is not reachable: is `gridline up` running?") from error
    return connection
def command_migrate(settings: Settings, _args: argparse.Namespace) -> int:
    """What `gridline up` does first, for hosts whose roles systemd runs (deploy/systemd)."""
    from gateway.roles.supervisor import prepare_store

    prepare_store(settings)
    print("the store is at the newest schema")
    return 0


def command_backup(settings: Settings, args: argparse.Namespace) -> int:
    """A consistent copy of the store while Gridline runs (gateway/store/backup.py)."""
    from gateway.store.backup import backup

    if args.destination.exists():
        print(f"{args.destination} exists: choose a new file", file=sys.stderr)
        return 1
    print(backup(settings.sqlalchemy_url, args.destination))
    return 0


def command_case(settings: Settings, args: argparse.Namespace) -> int:
    """Operator actions on one case: assign (and settle a triaged one), reject with a reason, merge."""
    from classifiers import build_classifier
    from gateway.delivery import outbox
    from gateway.domain import workflow
    from gateway.domain.cases import IllegalTransition
    from gateway.store import CaseRow, load_city_from_store, make_engine, session_factory, utcnow
    from gateway.world import World

    sessions = session_factory(make_engine(settings.sqlalchemy_url))
    with sessions() as session, session.begin():
        city = load_city_from_store(session)
        world = World(settings, city, build_classifier(city, settings))
        case = session.query(CaseRow).filter_by(number=args.number).one_or_none()
        if case is None:
            print(f"no case {args.number}", file=sys.stderr)
            return 1
        now, actor = utcnow(), f"operator:{args.by}"
        unknown = [f"no {what} {code!r}" for what, code, known in (
            ("worker", args.to, city.workers), ("category", args.category, city.categories),
            ("grid", args.grid, {c: g for c, g in city.grids.items() if g.level == 3})) if code and code not in known]
        if args.action == "merge" and not args.into:
            unknown.append("a merge needs --into: the case it duplicates")
        if unknown:
            print("; ".join(unknown), file=sys.stderr)
            return 1
        try:
            if args.action == "assign":
                queued = workflow.settle(session, world, case, actor, now, category=args.category, grid=args.grid,
                                         worker=city.workers.get(args.to or ""))
            elif args.action == "reject":
                queued = workflow.reject(session, case, actor, args.reason, now)
            else:
                queued = workflow.merge(session, case, args.into, actor, now)
        except IllegalTransition as refused:
            print(refused, file=sys.stderr)
            return 1
        session.flush()
        outgoing = outbox.queued(queued)
    outbox.enqueue(_redis(settings), outgoing)
    print(f"case {args.number}: {args.action} done; {len(outgoing)} message(s) queued")
    return 0


def command_classify(settings: Settings, _args: argparse.Namespace) -> int:
    from classifiers.cli import InputError, classify_stream

    try:
        classify_stream(settings, sys.stdin, sys.stdout)
    except InputError as error:
        print(f"gridline classify: {error}", file=sys.stderr)
        return 2
    return 0


def command_eval(settings: Settings, args: argparse.Namespace) -> int:
    from classifiers import build_classifier
    from classifiers.cli import InputError, compare_file, evaluate_file, read_labelled

    try:
        read_labelled(Path(args.file))  # a mistake in the file is told before the slow start-up
        classifier = build_classifier(load_city(settings.city_dir), settings)
        if not args.compare:
            evaluate_file(settings, Path(args.file), sys.stdout, classifier)
            return 0
        version = classifier.registry.candidate()
        if version is None:
            raise InputError("no candidate model: run `gridline train` first")
        candidate = classifier.using(classifier.load(version), version)
        print(f"current: {classifier.version}   candidate: {version}")
        compare_file(settings, Path(args.file), sys.stdout, classifier, candidate)
    except (InputError, ValueError) as error:
        print(f"gridline eval: {error}", file=sys.stderr)
        return 2
    return 0


def command_train(settings: Settings, args: argparse.Namespace) -> int:
    """A candidate model from the shipped examples plus the triage desk's labels in the store."""
    from classifiers import build_classifier
    from gateway.domain import desk
    from gateway.store import make_engine, migrate, session_factory

    engine = make_engine(settings.sqlalchemy_url)
    migrate(engine)
    with session_factory(engine)() as session:
        corrections = desk.labelled_examples(session)
    classifier = build_classifier(load_city(settings.city_dir), settings)
    started = time.perf_counter()
    model = classifier.train(corrections)
    version = classifier.registry.new_version()
    path = classifier.save(model, version, len(corrections))
    classifier.registry.set_candidate(version)
    print(f"candidate {version}: {len(classifier.examples)} shipped examples + {len(corrections)} desk labels, "
          f"trained in {time.perf_counter() - started:.1f} s ({path})")
    print("next: `gridline eval FILE --compare`, then `gridline model promote`")
    return 0


def command_model(settings: Settings, args: argparse.Namespace) -> int:
    """Which model serves, and explicit promotion and rollback (workers switch between jobs)."""
    from classifiers.registry import Registry, RegistryError

    registry = Registry.at(settings.home)
    try:
        if args.action == "promote":
            print(f"in service: {registry.promote(args.version)} (workers switch before their next job)")
        elif args.action == "rollback":
            print(f"in service: {registry.rollback()} (workers switch before their next job)")
        else:
            print(f"in service: {registry.current() or 'shipped'}")
            print(f"candidate:  {registry.candidate() or '-'}")
            print(f"history:    {' -> '.join(registry.history()) or '-'}")
    except RegistryError as error:
        print(f"gridline model: {error}", file=sys.stderr)
        return 2
    return 0


REPORT_DESCRIPTION = """\
Per unit, over the cases created since --since (a local date or time; default: all time):
  received   cases created (merged duplicates and rejected appeals included)
  resolved   cases now resolved or closed (a reopened case counts once resolved again)
  closed     cases in state closed
  on-time    share of resolved cases resolved by the SLA deadline fixed at creation
  median h   median hours from creation to resolution, over resolved cases
  satisfied  share of rated cases rated 4 or 5 (满意 or 基本满意)
  overdue    cases still open whose deadline has passed
The unit is the case's grid at --level (no grid: 未定位), its department, or its assigned worker
(未指派). The last row (合计) is computed over all the cases. This command sees every case;
--within and --department narrow it to a leader's jurisdiction. "—": nothing to compute it from."""


def command_report(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.domain import report
    from gateway.store import load_city_from_store, make_engine, session_factory

    with session_factory(make_engine(settings.sqlalchemy_url))() as session:
        city = load_city_from_store(session)
        try:
            visible = report.scope(city, within=args.within, department=args.department)
        except KeyError as error:
            print(error.args[0], file=sys.stderr)
            return 1
        since = moment(args.since, "--since", settings.timezone) if args.since else None
        rows = report.unit_figures(session, city, level=args.level, since=since, visible=visible)
    print(report.RENDERERS[args.format](rows))
    return 0


def parser() -> argparse.ArgumentParser:
    main = Parser(prog="gridline", description="SMS and chat gateway for grid management")
    main.add_argument("--config", type=Path, help="configuration folder (default: config/)")
    commands = main.add_subparsers(dest="command", required=True)

    p = commands.add_parser("up", help="run the gateway, workers and (if needed) Redis and the sandbox")
    p.add_argument("--role", default="all", help="all (default), or a comma-separated subset of "
                   "web,intake,worker,sweeper to run on this host against shared GRIDLINE_DATABASE_URL "
                   "and GRIDLINE_REDIS_URL")
    p.set_defaults(run=command_up)

    p = commands.add_parser("import", help="import a city's CSV exports into the store")
    p.add_argument("folder", type=Path)
    p.set_defaults(run=command_import)

    commands.add_parser("migrate", help="migrate the store (and import the city on first start), then exit") \
        .set_defaults(run=command_migrate)

    p = commands.add_parser("backup", help="copy the store while it runs (SQLite online backup, or pg_dump)")
    p.add_argument("destination", type=Path)
    p.set_defaults(run=command_backup)

    p = commands.add_parser("sms", help="text the running gateway as a resident would (signed webhook)")
    p.add_argument("text")
    p.add_argument("--from", dest="sender", required=True,
                   help="the resident's phone: E.164, or national in GRIDLINE_DEFAULT_REGION")
    p.add_argument("--wait", type=argument(lambda raw: integer(raw, "--wait", 0, 600)), default=15,
                   help="seconds to wait for replies")
    p.set_defaults(run=command_sms)

    p = commands.add_parser("cases", help="list cases, or show one with its history")
    p.add_argument("number", nargs="?")
    p.add_argument("--state")
    p.add_argument("--grid", help="a grid code: its whole subtree")
    p.add_argument("--category")
    p.add_argument("--limit", type=argument(lambda raw: integer(raw, "--limit", 1, 100_000)), default=50)
    p.set_defaults(run=command_cases)

    p = commands.add_parser("operator", help="operator access")
    p.add_argument("action", choices=["token", "revoke"],
                   help="token: issue an API token; revoke: end all the worker's tokens and console sessions")
    p.add_argument("worker_id")
    p.set_defaults(run=command_operator_token)

    p = commands.add_parser("tick", help="run the deadline clock once (reminders, escalations)")
    p.add_argument("--now", help="ISO time to run the clock at, e.g. 2026-11-25T10:00+08:00")
    p.set_defaults(run=command_tick)

    p = commands.add_parser("case", help="operator actions on a case")
    p.add_argument("number")
    p.add_argument("action", choices=["assign", "reject", "merge"])
    p.add_argument("--to", help="assign: the worker id (default: the grid's worker, else the department's)")
    p.add_argument("--category", help="assign: settle the category (and so department and deadline)")
    p.add_argument("--grid", help="assign: settle the level-3 grid")
    p.add_argument("--reason", default="", help="reject: why it is not the city's responsibility")
    p.add_argument("--into", help="merge: the case number it duplicates")
    p.add_argument("--by", default="cli", help="who is acting, for the audit trail")
    p.set_defaults(run=command_case)

    from classifiers.cli import CLASSIFY_FORMAT, EVAL_FORMAT

    commands.add_parser("classify", help="classify JSON lines from stdin", description=CLASSIFY_FORMAT,
                        formatter_class=argparse.RawDescriptionHelpFormatter).set_defaults(run=command_classify)

    p = commands.add_parser("eval", help="score the classifier on a labelled JSON-lines file",
                            description=EVAL_FORMAT, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", help="labelled appeals, JSON lines (format above)")
    p.add_argument("--compare", action="store_true", help="score the model in service and the candidate side by side")
    p.set_defaults(run=command_eval)

    p = commands.add_parser("train", help="build a candidate model from the shipped examples and the desk's labels")
    p.set_defaults(run=command_train)

    p = commands.add_parser("model", help="the classifier model in service: status, promote, rollback")
    p.add_argument("action", choices=["status", "promote", "rollback"])
    p.add_argument("version", nargs="?", help="promote: a trained version (default: the candidate)")
    p.set_defaults(run=command_model)

    p = commands.add_parser("report", help="progress and assessment figures per street, grid, department or worker",
                            description=REPORT_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--level", choices=["street", "community", "grid", "department", "worker"], default="street",
                   help="what a row is (default: street)")
    p.add_argument("--since", metavar="DATE",
                   help="YYYY-MM-DD[THH:MM] local time: only cases created since")
    p.add_argument("--within", metavar="GRID_CODE", help="only cases in this grid's subtree")
    p.add_argument("--department", metavar="CODE", help="only this department's cases")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table", help="(default: table)")
    p.set_defaults(run=command_report)

    register_broadcast(commands)
    return main


class Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line on stderr (exit 2), not the usage block and then the error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging("WARNING" if args.command in ("classify", "eval", "train", "model", "sms", "cases") else "INFO")
    environ = dict(os.environ)
    if args.config:
        environ["GRIDLINE_CONFIG_DIR"] = str(args.config)
    try:
        settings = load_settings(environ)
    except (ValueError, OSError) as error:  # an unknown setting, GRIDLINE_PORT=abc, an unreadable file
        print(f"gridline: bad settings: {error}", file=sys.stderr)
        return 2
    try:
        return args.run(settings, args)
    except (*USER_ERRORS, Unreachable) as error:
        print(f"gridline {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
