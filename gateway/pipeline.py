"""The message pipeline, top to bottom: receive → store → understand → route → act → reply.

`receive` and `store` happen in the web process (gateway.intake) before the provider gets its
200. Everything here runs in an rq worker on a message that is already safe in the store, in
one transaction with the replies it produces, so a retried job can never act twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from classifiers import Classification, Classifier
from gateway import cases, replies
from gateway.city import City
from gateway.config import Settings
from gateway.intents import Intent, parse_intent
from gateway.logs import mask
from gateway.outbox import queue_message
from gateway.store import ContactRow, InboundRow, OutboxRow, insert_for, utcnow

log = logging.getLogger(__name__)


@dataclass
class World:
    """What the pipeline needs to understand and route: loaded once per worker process."""

    settings: Settings
    city: City
    classifier: Classifier


@dataclass(frozen=True)
class Understanding:
    intent: Intent
    language: str
    verdict: Classification | None  # only appeals are classified


def process_inbound(sessions: sessionmaker[Session], world: World, ids: list[int]) -> list[int]:
    """Handle each stored, unprocessed inbound message; return the outbox ids to send.

    Understanding is CPU work and runs before the write transaction, so the store's write lock
    is held only for the inserts. Rows are then claimed with one conditional UPDATE: a job the
    sweeper re-enqueued while this one was running finds nothing left to do.
    """
    with sessions() as session:
        pending = session.scalars(select(InboundRow).where(InboundRow.id.in_(ids),
                                                           InboundRow.processed_at.is_(None))).all()
        session.commit()  # end the read snapshot before writing (SQLite refuses a stale writer)
        understood = {row.id: understand(world, row) for row in pending}
        now = utcnow()
        claimed = set(session.scalars(
            update(InboundRow)
            .where(InboundRow.id.in_(understood), InboundRow.processed_at.is_(None))
            .values(processed_at=now)
            .returning(InboundRow.id),
            execution_options={"synchronize_session": False}))
        outbox_ids: list[int] = []
        for inbound in pending:
            if inbound.id not in claimed:
                continue
            try:
                with session.begin_nested():
                    outgoing = act(session, world, inbound, understood[inbound.id], now)
                    session.flush()
                    outbox_ids += [row.id for row in outgoing]
            except Exception as error:  # one bad message must not block the batch behind it
                log.exception("inbound %s from %s failed", inbound.id, mask(inbound.sender))
                session.execute(update(InboundRow).where(InboundRow.id == inbound.id)
                                .values(error=f"{type(error).__name__}: {error}"))
        session.commit()
    return outbox_ids


def understand(world: World, inbound: InboundRow) -> Understanding:
    """What the message asks for, in which language, and for an appeal what and where it is about."""
    intent = parse_intent(inbound.text)
    verdict = world.classifier.classify(inbound.text, inbound.sender) if intent.kind == "appeal" else None
    return Understanding(intent, reply_language(world.city, inbound.sender, intent), verdict)


def act(session: Session, world: World, inbound: InboundRow, understanding: Understanding,
        now: datetime) -> list[OutboxRow]:
    """Route and act on one understood message, and queue the replies."""
    intent, language = understanding.intent, understanding.language

    def reply(body: str, case_id: int | None = None) -> OutboxRow:
        return queue_message(session, inbound.channel, inbound.sender, body, case_id)

    if understanding.verdict is not None:
        case = cases.open_case(session, city=world.city, settings=world.settings,
                               channel=inbound.channel, reporter=inbound.sender, text=inbound.text,
                               language=language, verdict=understanding.verdict, now=now)
        session.execute(update(InboundRow).where(InboundRow.id == inbound.id).values(case_id=case.id))
        return [reply(cases.acknowledgement(world.city, case), case.id)]
    if intent.kind == "status":
        return [reply(body) for body in status_replies(session, world, inbound.sender, intent, language)]
    if intent.kind in ("opt_out", "opt_in"):
        changed = set_opt_out(session, inbound.channel, inbound.sender, intent.kind == "opt_out", now)
        return [reply(replies.render("opted_out" if intent.kind == "opt_out" else "opted_in", language))
                ] if changed else []
    return [reply(replies.render("help", language))]


def reply_language(city: City, sender: str, intent: Intent) -> str:
    """English when they write English or are registered as English speakers; Chinese otherwise."""
    if intent.written_language:
        return intent.written_language
    resident = city.resident_by_phone(sender)
    return resident.language if resident else "zh"


def status_replies(session: Session, world: World, sender: str, intent: Intent, language: str) -> list[str]:
    timezone = world.settings.timezone
    if intent.case_number:
        case = cases.reporter_case(session, sender, intent.case_number)
        if case is None:
            return [replies.render("status_not_found", language, number=intent.case_number)]
        return [cases.status_text(world.city, case, language, timezone)]
    open_cases = cases.open_cases_of(session, sender)
    if not open_cases:
        return [replies.render("status_none_open", language)]
    return ["\n".join(cases.status_text(world.city, case, language, timezone) for case in open_cases)]


def set_opt_out(session: Session, channel: str, address: str, opted_out: bool, now: datetime) -> bool:
    """Record the choice; True only when it changed, so a repeated STOP confirms once."""
    session.execute(insert_for(session, ContactRow)
                    .values(channel=channel, address=address, opted_out=False, updated_at=now)
                    .on_conflict_do_nothing())
    changed = session.execute(
        update(ContactRow)
        .where(ContactRow.channel == channel, ContactRow.address == address,
               ContactRow.opted_out.is_not(opted_out))
        .values(opted_out=opted_out, updated_at=now)
    ).rowcount
    return bool(changed)
