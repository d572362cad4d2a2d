"""The relational store (SQLAlchemy 2): SQLite embedded by default, PostgreSQL in production.

The city tables mirror the CSV exports; the rest is the gateway's own record: every inbound
message, every case with its audit trail, and every outgoing message as an outbox row.
Schema changes go through Alembic (`gateway/store/migrations`); `migrate()` brings a database to head.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from gateway.domain import city as citymod


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


# --- the city, as imported from CSV -------------------------------------------------------------


class GridRow(Base):
    __tablename__ = "grids"
    code: Mapped[str] = mapped_column(String(64), primary_key=True)
    level: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    name_en: Mapped[str] = mapped_column(String(200))
    parent_code: Mapped[str | None] = mapped_column(String(64))
    households: Mapped[int] = mapped_column(Integer)


class PlaceRow(Base):
    __tablename__ = "places"
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    aliases: Mapped[list] = mapped_column(JSON)
    kind: Mapped[str] = mapped_column(String(40))
    grid_code: Mapped[str] = mapped_column(String(64))
    name_en: Mapped[str] = mapped_column(String(200))


class DepartmentRow(Base):
    __tablename__ = "departments"
    code: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    name_en: Mapped[str] = mapped_column(String(200))
    level: Mapped[str] = mapped_column(String(40))
    phone: Mapped[str] = mapped_column(String(32))


class CategoryRow(Base):
    __tablename__ = "categories"
    code: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    name_en: Mapped[str] = mapped_column(String(200))
    department_code: Mapped[str] = mapped_column(String(64))
    sla_hours: Mapped[int] = mapped_column(Integer)
    description: Mapped[str] = mapped_column(Text)
    description_en: Mapped[str] = mapped_column(Text)


class AppealTypeRow(Base):
    __tablename__ = "appeal_types"
    code: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    name_en: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text)


class WorkerRow(Base):
    __tablename__ = "workers"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(40))
    grid_code: Mapped[str | None] = mapped_column(String(64))
    department_code: Mapped[str | None] = mapped_column(String(64))
    phone: Mapped[str] = mapped_column(String(32))
    telegram_chat_id: Mapped[int | None] = mapped_column(BigInteger)
    languages: Mapped[list] = mapped_column(JSON)


class ResidentRow(Base):
    __tablename__ = "residents"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    phone: Mapped[str] = mapped_column(String(32), unique=True)
    grid_code: Mapped[str] = mapped_column(String(64), index=True)
    address: Mapped[str] = mapped_column(String(300))
    tags: Mapped[list] = mapped_column(JSON)
    preferred_channel: Mapped[str] = mapped_column(String(16))
    telegram_chat_id: Mapped[int | None] = mapped_column(BigInteger)
    language: Mapped[str] = mapped_column(String(8))
    birth_year: Mapped[int | None] = mapped_column(Integer)


# --- the gateway's own record ---------------------------------------------------------------------


class InboundRow(Base):
    """Every message a resident sent, stored before the provider gets its 200."""

    __tablename__ = "inbound_messages"
    __table_args__ = (
        UniqueConstraint("channel", "provider_id", name="uq_inbound_provider_id"),
        Index("ix_inbound_unprocessed", "processed_at"),
        Index("ix_inbound_case", "case_id"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    channel: Mapped[str] = mapped_column(String(32))
    provider_id: Mapped[str] = mapped_column(String(64))
    sender: Mapped[str] = mapped_column(String(64))
    text: Mapped[str] = mapped_column(Text)
    media: Mapped[list] = mapped_column(JSON, default=list)
    kind: Mapped[str] = mapped_column(String(16), default="text")  # text, command, contact, callback...
    payload: Mapped[dict] = mapped_column(JSON, default=dict)  # the kind's details (phone, button data...)
    received_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    processed_at: Mapped[datetime | None] = mapped_column(DateTime)
    error: Mapped[str | None] = mapped_column(Text)  # why handling failed, for an operator to see
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"))


class CaseRow(Base):
    __tablename__ = "cases"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    number: Mapped[str] = mapped_column(String(16), unique=True)
    channel: Mapped[str] = mapped_column(String(32))
    reporter: Mapped[str] = mapped_column(String(64), index=True)  # phone or chat id
    resident_id: Mapped[str | None] = mapped_column(String(32))
    language: Mapped[str] = mapped_column(String(8))
    text: Mapped[str] = mapped_column(Text)
    category: Mapped[str | None] = mapped_column(String(64), index=True)
    appeal_type: Mapped[str | None] = mapped_column(String(64))
    department: Mapped[str] = mapped_column(String(64), index=True)
    grid_code: Mapped[str | None] = mapped_column(String(64), index=True)
    place: Mapped[str | None] = mapped_column(String(200))
    confidence: Mapped[float] = mapped_column(Float)
    queue: Mapped[str] = mapped_column(String(16))  # "routed" or "triage"
    triage_notes: Mapped[dict] = mapped_column(JSON, default=dict)  # suggestions, grid candidates
    state: Mapped[str] = mapped_column(String(16), index=True)
    assigned_worker_id: Mapped[str | None] = mapped_column(String(32), index=True)
    deadline: Mapped[datetime] = mapped_column(DateTime)  # the category's SLA: fixed, for on-time rates
    level: Mapped[int] = mapped_column(Integer, default=3)  # grid level holding it: 3 grid ... 0 district
    escalate_at: Mapped[datetime | None] = mapped_column(DateTime, index=True)  # current holder's deadline
    reminded_at: Mapped[datetime | None] = mapped_column(DateTime)
    awaiting: Mapped[str | None] = mapped_column(String(16))  # "rating" or "info" from the resident
    resolution: Mapped[str | None] = mapped_column(Text)
    rating: Mapped[int | None] = mapped_column(Integer)  # 1-5; 满意 5, 基本满意 4, 不满意 1
    reopened: Mapped[int] = mapped_column(Integer, default=0)
    merged_into: Mapped[str | None] = mapped_column(String(16))
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime)
    closed_at: Mapped[datetime | None] = mapped_column(DateTime)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class CaseAttachmentRow(Base):
    """A photo or location a resident or worker added to a case."""

    __tablename__ = "case_attachments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    added_by: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # photo, location
    data: Mapped[dict] = mapped_column(JSON)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class WorkerPromptRow(Base):
    """A question the workers' bot asked and is waiting for (a resolve note, an escalation reason)."""

    __tablename__ = "worker_prompts"
    chat_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    action: Mapped[str] = mapped_column(String(16))
    case_number: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class OpinionLogRow(Base):
    """民情日志: what a grid worker saw on a visit; it can be turned into a case."""

    __tablename__ = "opinion_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    worker_id: Mapped[str] = mapped_column(String(32), index=True)
    grid_code: Mapped[str | None] = mapped_column(String(64))
    text: Mapped[str] = mapped_column(Text)
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"))
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class CaseEventRow(Base):
    """The audit trail: who moved a case from which state to which, when, and why."""

    __tablename__ = "case_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(64))
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    note: Mapped[str] = mapped_column(Text, default="")


class DeskLabelRow(Base):
    """What the triage desk settled about a case (category, grid), kept as a labelled example with
    who settled it and when: `gridline train` learns from these. `predicted_*` is what the
    classifier had said, so the desk's corrections can be told from its confirmations."""

    __tablename__ = "desk_labels"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    text: Mapped[str] = mapped_column(Text)
    category: Mapped[str | None] = mapped_column(String(64))  # None: the desk settled the grid only
    grid_code: Mapped[str | None] = mapped_column(String(64))
    appeal_type: Mapped[str | None] = mapped_column(String(64))  # the case's; the desk does not settle it
    predicted_category: Mapped[str | None] = mapped_column(String(64))
    predicted_grid: Mapped[str | None] = mapped_column(String(64))
    settled_by: Mapped[str] = mapped_column(String(64))
    settled_at: Mapped[datetime] = mapped_column(DateTime, index=True)


class CaseCounterRow(Base):
    """Per-day sequence behind case numbers, so numbers stay short enough to text back."""

    __tablename__ = "case_counters"
    day: Mapped[str] = mapped_column(String(8), primary_key=True)
    last: Mapped[int] = mapped_column(Integer)


class DeliveryRow(Base):
    """One outgoing message of any kind: a reply to a resident, a task alert, a broadcast notice.

    pending → sending → sent → delivered | undelivered | failed, or cancelled while still pending.
    Every kind takes the same way out (gateway.delivery); `kind` decides only its priority in its
    channel's lane. UNIQUE (broadcast_id, resident_id) is what makes a resident get a notice at most
    once: fan-out may run again after a crash and simply hits the key (NULLs, for the other kinds,
    never collide).
    """

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("broadcast_id", "resident_id", name="uq_delivery_broadcast_resident"),
        Index("ix_deliveries_due", "state", "next_attempt_at"),
        # A lane's due replies and alerts without scanning a broadcast's pending notices.
        Index("ix_deliveries_lane", "state", "channel", "kind", "next_attempt_at"),
        Index("ix_deliveries_broadcast", "broadcast_id", "state"),
        # A case's messages: its first reply times the acknowledgement (gateway.metrics).
        Index("ix_deliveries_case", "case_id", "kind"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # reply, alert or broadcast
    channel: Mapped[str] = mapped_column(String(32))
    recipient: Mapped[str] = mapped_column(String(64))  # the channel's address: phone, chat id, ...
    body: Mapped[str] = mapped_column(Text)  # exactly what goes out (a broadcast SMS with its signature)
    markup: Mapped[dict | None] = mapped_column(JSON)  # chat buttons: {"inline": rows} or {"contact": label}
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"))
    broadcast_id: Mapped[int | None] = mapped_column(Integer)
    resident_id: Mapped[str | None] = mapped_column(String(32))
    fallback_phone: Mapped[str | None] = mapped_column(String(32))  # SMS when a chat cannot be reached
    state: Mapped[str] = mapped_column(String(16), default="pending")
    provider_id: Mapped[str | None] = mapped_column(String(64), index=True)  # Telegram's repeat per chat
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ContactRow(Base):
    """What a phone or chat asked of us: opted out of broadcasts, preferred language, linked phone."""

    __tablename__ = "contacts"
    channel: Mapped[str] = mapped_column(String(32), primary_key=True)
    address: Mapped[str] = mapped_column(String(64), primary_key=True)
    opted_out: Mapped[bool] = mapped_column(Boolean, default=False)
    language: Mapped[str | None] = mapped_column(String(8))
    phone: Mapped[str | None] = mapped_column(String(32), index=True)  # a chat linked by shared contact
    blocked: Mapped[bool] = mapped_column(Boolean, default=False)  # the user blocked our bot
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class OperatorTokenRow(Base):
    __tablename__ = "operator_tokens"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    worker_id: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime)  # None only for tokens issued before expiry
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime)


class SignInCodeRow(Base):
    """A one-time console sign-in code sent to an operator's chat or phone; only its hash is kept."""

    __tablename__ = "console_codes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    worker_id: Mapped[str] = mapped_column(String(32), index=True)
    code_hash: Mapped[str] = mapped_column(String(100))  # salt$sha256
    created_at: Mapped[datetime] = mapped_column(DateTime)
    expires_at: Mapped[datetime] = mapped_column(DateTime)
    used_at: Mapped[datetime | None] = mapped_column(DateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)


class ConsoleSessionRow(Base):
    """A signed-in console session; the cookie holds the token, the store its hash."""

    __tablename__ = "console_sessions"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    worker_id: Mapped[str] = mapped_column(String(32), index=True)
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime)
    expires_at: Mapped[datetime] = mapped_column(DateTime)  # the absolute limit
    ended_at: Mapped[datetime | None] = mapped_column(DateTime)


class OperatorAuditRow(Base):
    """Every action an operator takes in the console or the API, and whether it was allowed."""

    __tablename__ = "operator_audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    worker_id: Mapped[str] = mapped_column(String(32), index=True)
    via: Mapped[str] = mapped_column(String(16))  # console or api
    action: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(64), default="")
    outcome: Mapped[str] = mapped_column(Text, default="ok")  # "ok" or the refusal's reason


# --- engine, migrations, city import ----------------------------------------------------------


def make_engine(url: str) -> Engine:
    """An engine with SQLite tuned for many short writers: WAL, a busy timeout, fsync on commit."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # hide_parameters: an SQL error must not carry phone numbers into logs or rq's failed jobs.
        engine = create_engine(url, connect_args={"timeout": 30}, hide_parameters=True)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            # A multi-row INSERT keeps an undo copy of every page it changes (the statement journal),
            # which SQLite spills to a temporary file past 64 KiB. Random MessageSids put each row on
            # its own index page, so every inbound group spilled: a file created, written and
            # deleted per commit. In memory the intake's insert takes a third less time.
            cursor.execute("PRAGMA temp_store=MEMORY")
            # Checkpoint at 4000 WAL pages instead of 1000: an index page changed by many commits is
            # copied back into the database once. A fifth less time per commit (bench/sqlite_insert.py)
            # for a WAL file that grows to 16 MiB instead of 4.
            cursor.execute("PRAGMA wal_autocheckpoint=4000")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, hide_parameters=True)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def migrate(engine: Engine, sms_signature: str = "", revision: str = "head") -> None:
    """Bring the database to the newest Alembic revision (or to `revision`).

    `sms_signature` is for revision 0004, which moves unsent broadcast SMS into the deliveries table
    with the signature their sender would have put before them.
    """
    from alembic import command
    from alembic.config import Config

    here = Path(__file__).parent / "migrations"
    config = Config()
    config.set_main_option("script_location", str(here))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        config.attributes["sms_signature"] = sms_signature
        command.upgrade(config, revision)


@contextmanager
def exclusive(engine: Engine, name: str) -> Iterator[None]:
    """One process at a time across hosts, on PostgreSQL: a session advisory lock, released when
    the block ends or its connection dies. Hosts starting together must not both migrate or import
    the city. A SQLite file belongs to one host, and SQLite serialises writers itself."""
    if engine.dialect.name != "postgresql":
        yield
        return
    key = zlib.crc32(name.encode())
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
        connection.commit()
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
            connection.commit()


CITY_TABLES = (GridRow, PlaceRow, DepartmentRow, CategoryRow, AppealTypeRow, WorkerRow, ResidentRow)


def import_city(session: Session, city: citymod.City) -> dict[str, int]:
    """Replace the city tables with `city` in the caller's transaction; return row counts."""
    for table in CITY_TABLES:
        session.query(table).delete()
    rows: list[Base] = []
    rows += [GridRow(**vars(g)) for g in city.grids.values()]
    rows += [PlaceRow(**{**vars(p), "aliases": list(p.aliases)}) for p in city.places]
    rows += [DepartmentRow(**vars(d)) for d in city.departments.values()]
    rows += [CategoryRow(**vars(c)) for c in city.categories.values()]
    rows += [AppealTypeRow(**vars(t)) for t in city.appeal_types.values()]
    rows += [WorkerRow(**{**vars(w), "languages": list(w.languages)}) for w in city.workers.values()]
    if city.residents is None:
        raise ValueError("import a city read from CSV (load_city): this one does not hold its residents")
    rows += [ResidentRow(**{k: v for k, v in vars(r).items()} | {"tags": list(r.tags)})
             for r in city.residents.values()]
    session.add_all(rows)
    return {
        "grids": len(city.grids), "places": len(city.places), "departments": len(city.departments),
        "categories": len(city.categories), "appeal_types": len(city.appeal_types),
        "workers": len(city.workers), "residents": len(city.residents),
    }


def city_imported(session: Session) -> bool:
    return session.scalar(select(GridRow.code).limit(1)) is not None


RESIDENT_CACHE = 4096  # residents per process, most recently asked: repeat senders, a live case's reporter


def _plain(row: Base, **lists: type) -> dict:
    values = {c.key: getattr(row, c.key) for c in row.__table__.columns}
    values.update({k: tuple(values[k]) for k in lists})
    return values


def residents_by_phone(sessions: sessionmaker[Session]) -> citymod.ResidentLookup:
    """One resident by phone through the unique index on residents.phone, with a small LRU cache.

    Residents change only by `gridline import`, after which the processes are restarted (as it
    says), so a cached answer is never stale for long.
    """

    @lru_cache(maxsize=RESIDENT_CACHE)
    def find(phone: str) -> citymod.Resident | None:
        with sessions() as session:
            row = session.scalar(select(ResidentRow).where(ResidentRow.phone == phone))
            return citymod.Resident(**_plain(row, tags=tuple)) if row else None

    return find


def load_city_from_store(session: Session) -> citymod.City:
    """The imported city as the same dataclasses `load_city` returns, without the residents.

    Residents are looked up by phone on demand (`City.resident_by_phone`), in sessions of their own
    on the same database, so a process's memory does not grow with the number of residents.
    """

    def all_of(table):
        return session.scalars(select(table)).all()

    return citymod.City(
        grids={r.code: citymod.Grid(**_plain(r)) for r in all_of(GridRow)},
        places=[citymod.Place(**_plain(r, aliases=tuple)) for r in all_of(PlaceRow)],
        departments={r.code: citymod.Department(**_plain(r)) for r in all_of(DepartmentRow)},
        categories={r.code: citymod.Category(**_plain(r)) for r in all_of(CategoryRow)},
        appeal_types={r.code: citymod.AppealType(**_plain(r)) for r in all_of(AppealTypeRow)},
        workers={r.id: citymod.Worker(**_plain(r, languages=tuple)) for r in all_of(WorkerRow)},
        residents=None,
        find_resident=residents_by_phone(session_factory(session.get_bind())),
    )


def insert_for(bind: Session | Engine, table: type[Base]):
    """The dialect's INSERT, which knows ON CONFLICT (both SQLite and PostgreSQL have it)."""
    engine = bind.get_bind() if isinstance(bind, Session) else bind
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)
