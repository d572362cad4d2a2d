"""The message pipeline, top to bottom: receive → store → understand → route → act → reply.

`receive` and `store` happen in the web process (gateway.roles.intake) before the provider gets its
200. Everything here runs in an rq worker on a message that is already safe in the store, in
one transaction with the replies it produces, so a retried job can never act twice.
Residents (SMS, the residents' bot) and grid workers (the workers' bot) take different paths.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from classifiers import Classification
from gateway.delivery import outbox
from gateway.delivery.channels import phone_channels
from gateway.delivery.outbox import queue_message
from gateway.domain import cases, replies, workflow
from gateway.domain.city import City
from gateway.domain.intents import Intent, parse_intent
from gateway.logs import mask
from gateway.store import CaseAttachmentRow, CaseRow, ContactRow, DeliveryRow, InboundRow, insert_for, utcnow
from gateway.world import RESIDENT_BOT, WORKER_BOT, World

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Understanding:
    intent: Intent
    language: str
    phone: str | None  # the resident's phone: the SMS sender, or the number a chat shared
    verdict: Classification | None  # only appeals are classified


def process_inbound(sessions: sessionmaker[Session], world: World, ids: list[int]) -> list[outbox.Queued]:
    """Handle each stored, unprocessed inbound message; return the deliveries to hand to their lanes.

    Understanding is CPU work and runs before the write transaction, so the store's write lock
    is held only for the inserts. Rows are then claimed with one conditional UPDATE: a job the
    sweeper re-enqueued while this one was running finds nothing left to do.
    """
    with sessions() as session:
        pending = session.scalars(select(InboundRow).where(InboundRow.id.in_(ids),
                                                           InboundRow.processed_at.is_(None))
                                  .order_by(InboundRow.id)).all()
        understood: dict[int, Understanding] = {}
        failed: dict[int, str] = {}
        for row in pending:
            try:
                understood[row.id] = understand(world, row, resident_phone(session, row, world))
            except Exception as error:  # one unreadable message must not block the batch behind it
                log.exception("understanding inbound %s from %s failed", row.id, mask(row.sender))
                failed[row.id] = f"{type(error).__name__}: {error}"
        session.commit()  # end the read snapshot before writing (SQLite refuses a stale writer)
        now = utcnow()
        claimed = set(session.scalars(
            update(InboundRow)
            .where(InboundRow.id.in_([row.id for row in pending]), InboundRow.processed_at.is_(None))
            .values(processed_at=now)
            .returning(InboundRow.id),
            execution_options={"synchronize_session": False}))
        outgoing: list[outbox.Queued] = []
        for inbound in pending:
            if inbound.id not in claimed:
                continue
            if inbound.id in failed:
                session.execute(update(InboundRow).where(InboundRow.id == inbound.id).values(error=failed[inbound.id]))
                continue
            try:
                with session.begin_nested():
                    rows = act(session, world, inbound, understood[inbound.id], now)
                    session.flush()
                    outgoing += outbox.queued(rows)
            except Exception as error:  # likewise for acting on it
                log.exception("inbound %s from %s failed", inbound.id, mask(inbound.sender))
                session.execute(update(InboundRow).where(InboundRow.id == inbound.id)
                                .values(error=f"{type(error).__name__}: {error}"))
        session.commit()
    return outgoing


def resident_phone(session: Session, inbound: InboundRow, world: World) -> str | None:
    """The sender's phone: the sender itself on a channel of phone numbers (SMS, an HTTP SMS
    gateway), the number a chat shared on the residents' bot."""
    if inbound.channel in phone_channels(world.settings):
        return inbound.sender
    if inbound.channel == RESIDENT_BOT:
        return session.scalar(select(ContactRow.phone).where(ContactRow.channel == RESIDENT_BOT,
                                                             ContactRow.address == inbound.sender))
    return None


def understand(world: World, inbound: InboundRow, phone: str | None) -> Understanding:
    """What the message asks for, in which language, and for an appeal what and where it is about."""
    # A bot command (/start) is Latin letters whatever the user's language: it says nothing of it.
    intent = Intent("command", None) if inbound.kind == "command" else parse_intent(inbound.text)
    language = reply_language(world.city, phone, intent, inbound.payload.get("language"))
    classify = (inbound.channel != WORKER_BOT and intent.kind == "appeal" and inbound.text.strip()
                and inbound.kind in ("text", "photo"))
    verdict = world.classifier.classify(inbound.text, phone) if classify else None
    return Understanding(intent, language, phone, verdict)


def reply_language(city: City, phone: str | None, intent: Intent, chat_language: str | None) -> str:
    """English when they write English or are registered (or their chat app is set) as English."""
    if intent.written_language:
        return intent.written_language
    resident = city.resident_by_phone(phone) if phone else None
    if resident:
        return resident.language
    return "en" if (chat_language or "").startswith("en") else "zh"


def act(session: Session, world: World, inbound: InboundRow, understanding: Understanding,
        now: datetime) -> list[DeliveryRow]:
    """Route and act on one understood message, and queue the replies."""
    if inbound.channel == WORKER_BOT:
        return act_for_worker(session, world, inbound, now)
    return act_for_resident(session, world, inbound, understanding, now)


def act_for_resident(session: Session, world: World, inbound: InboundRow, understanding: Understanding,
                     now: datetime) -> list[DeliveryRow]:
    intent, language = understanding.intent, understanding.language
    reporters = tuple(r for r in (inbound.sender, understanding.phone) if r)

    def reply(body: str, case_id: int | None = None, markup: dict | None = None) -> DeliveryRow:
        return queue_message(session, inbound.channel, inbound.sender, body, case_id, markup)

    if inbound.kind == "command" and inbound.payload.get("command") == "start":
        return [reply(replies.render("welcome", language), markup={
            "contact": replies.render("share_contact", language)})]
    if inbound.kind == "contact":
        return [reply(link_chat(session, world.city, inbound, language, now))]
    if inbound.kind in ("photo", "location") and understanding.verdict is None:
        return attach(session, inbound, reporters, language, now)
    if inbound.media and not inbound.text.strip():  # an MMS with only a picture
        return attach(session, inbound, reporters, language, now)
    if inbound.kind not in ("text", "photo"):
        return [reply(replies.render("unsupported", language))]

    awaiting = session.scalar(select(CaseRow).where(
        CaseRow.reporter.in_(reporters), CaseRow.state.in_((*cases.OPEN_STATES, "resolved")),
        CaseRow.awaiting.is_not(None)).order_by(CaseRow.updated_at.desc()).limit(1))
    if awaiting is not None and awaiting.awaiting == "info" and intent.kind == "appeal":
        return workflow.answer_question(session, world, awaiting, inbound.text, now)
    rating = workflow.parse_rating(inbound.text)
    if rating is not None:  # a bare "5" or 满意 is never an appeal, even with nothing left to rate
        if awaiting is not None and awaiting.awaiting == "rating":
            return workflow.rate(session, world, awaiting, rating, now)
        return [reply(replies.render("help", language))]

    if intent.kind == "nothing":  # a greeting or a test: ask what they need, open nothing
        return [reply(replies.render("ask_what", language))]
    if understanding.verdict is not None:
        case = cases.open_case(session, city=world.city, settings=world.settings,
                               channel=inbound.channel, reporter=inbound.sender, text=inbound.text,
                               language=language, verdict=understanding.verdict, now=now)
        # No session synchronisation: evaluating the UPDATE against every row the job loaded was
        # half of a worker's time per appeal (bench/drain.py --profile).
        session.execute(update(InboundRow).where(InboundRow.id == inbound.id).values(case_id=case.id)
                        .execution_options(synchronize_session=False))
        for picture in photos(inbound):
            session.add(CaseAttachmentRow(case_id=case.id, added_by=inbound.sender, kind="photo",
                                          data=picture, at=now))
        routed = workflow.route(session, world, case, now)  # first, so the acknowledgement names the worker
        return [reply(cases.acknowledgement(world.city, case), case.id), *routed]
    if intent.kind == "status":
        return [reply(body) for body in status_replies(session, world, reporters, intent, language)]
    if intent.kind in ("opt_out", "opt_in"):
        changed = set_opt_out(session, inbound.channel, inbound.sender, intent.kind == "opt_out", now)
        return [reply(replies.render("opted_out" if intent.kind == "opt_out" else "opted_in", language))
                ] if changed else []
    return [reply(replies.render("help", language))]


def act_for_worker(session: Session, world: World, inbound: InboundRow, now: datetime) -> list[DeliveryRow]:
    """The workers' bot: only chats in the staff roster are served."""
    worker = next((w for w in world.city.workers.values() if str(w.telegram_chat_id) == inbound.sender), None)
    if worker is None:
        return [queue_message(session, WORKER_BOT, inbound.sender, replies.worker_text("stranger"))]
    command = inbound.payload.get("command") if inbound.kind == "command" else None
    if inbound.kind == "callback":
        answered = queue_message(session, WORKER_BOT, inbound.sender, "", None,
                                 {"answer_callback": inbound.payload.get("callback_query_id", "")})
        return [answered, *workflow.worker_button(session, world, worker, inbound.sender,
                                                  inbound.payload.get("data", ""), now)]
    if command == "start":
        return [workflow.message_worker(session, worker, replies.worker_text(
            "hello", name=worker.name, role=replies.role_name(worker.role, "zh")))]
    if command == "tasks":
        return workflow.open_tasks(session, world, worker)
    if command == "case" and inbound.payload.get("args", "").strip():
        return workflow.case_text(session, worker, inbound.payload["args"])
    if command == "log" and inbound.payload.get("args", "").strip():
        return workflow.write_log(session, worker, inbound.payload["args"].strip(), now)
    photo = inbound.payload.get("photo") if inbound.kind == "photo" else None
    if inbound.kind not in ("text", "photo") or not (inbound.text.strip() or photo):
        return [workflow.message_worker(session, worker, replies.worker_text("help"))]
    return workflow.worker_reply(session, world, worker, inbound.sender, inbound.text.strip(), photo, now)


def link_chat(session: Session, city: City, inbound: InboundRow, language: str, now: datetime) -> str:
    """A shared contact links the chat to a registered resident (only their own number counts)."""
    phone = inbound.payload.get("phone")
    resident = city.resident_by_phone(phone) if phone and inbound.payload.get("own", True) else None
    if resident is None:
        return replies.render("not_registered", language)
    session.execute(insert_for(session, ContactRow)
                    .values(channel=inbound.channel, address=inbound.sender, phone=phone, updated_at=now)
                    .on_conflict_do_update(index_elements=["channel", "address"],
                                           set_={"phone": phone, "updated_at": now}))
    return replies.render("linked", resident.language, name=resident.name)


def photos(inbound: InboundRow) -> list[dict]:
    """A Telegram photo's file id, or an MMS's media URLs."""
    if inbound.kind == "photo":
        return [dict(inbound.payload)]
    return [{"photo": url} for url in inbound.media]


def attach(session: Session, inbound: InboundRow, reporters: tuple[str, ...], language: str,
           now: datetime) -> list[DeliveryRow]:
    """Photos or a location join the sender's most recent open case."""
    latest = cases.open_cases_of(session, reporters, limit=1)
    if not latest:
        return [queue_message(session, inbound.channel, inbound.sender, replies.render("attach_nothing", language))]
    pictures = [dict(inbound.payload)] if inbound.kind == "location" else photos(inbound)
    for data in pictures:
        session.add(CaseAttachmentRow(case_id=latest[0].id, added_by=inbound.sender,
                                      kind="location" if inbound.kind == "location" else "photo", data=data, at=now))
    return [queue_message(session, inbound.channel, inbound.sender,
                          replies.render("attached", language, number=latest[0].number), latest[0].id)]


def status_replies(session: Session, world: World, reporters: tuple[str, ...], intent: Intent,
                   language: str) -> list[str]:
    timezone = world.settings.timezone
    if intent.case_number:
        case = cases.reporter_case(session, reporters, intent.case_number)
        if case is None:
            return [replies.render("status_not_found", language, number=intent.case_number)]
        return [cases.status_text(world.city, case, language, timezone)]
    open_cases = cases.open_cases_of(session, reporters)
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

