"""What operators do with a broadcast: create, preview, send, pause, resume, cancel, status.

Everything here is a change to the store; the sweep (`broadcasts.fanout.sweep`) notices a
broadcast that is due and starts its fan-out, so a send ordered while Redis or the workers are
down still happens. Functions take `now` (naive UTC) so tests control the clock.

Jurisdiction: an operator's broadcasts are confined to their grid's subtree: the expression itself
must keep its audience inside it (a `grid:` term there), or it is refused with 403, never with a
count of who lies outside (`audience.confined`). Department staff have no grid: the triage
department's staff (the grid centre) may address the whole city, other departments may not send.
The CLI acts for the district as a whole.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import ColumnElement, String, and_, cast, exists, func, not_, select, true, update
from sqlalchemy.orm import Session

from adapters.twilio_sms import segments
from broadcasts import audience, templates
from broadcasts.models import BroadcastRow
from broadcasts.schedule import QuietHours, release_time
from gateway.config import Settings
from gateway.delivery.outbox import UNFINISHED
from gateway.domain.city import Worker
from gateway.logs import mask
from gateway.store import ContactRow, DeliveryRow, ResidentRow
from gateway.world import RESIDENT_BOT

SAMPLE_SIZE = 5
STREAM_PAGE = 2000


class BroadcastError(ValueError):
    """A request we refuse, with the HTTP status it maps to and a reason for the operator."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


# --- who may address whom -------------------------------------------------------------------------


def operator_scope(settings: Settings, operator: Worker | None) -> str | None:
    """The grid whose subtree bounds this operator's audiences; None: the whole city."""
    if operator is None:
        return None
    if operator.role == "dept_staff":
        if operator.department_code == settings.triage_department:
            return None
        raise BroadcastError(403, f"staff of {operator.department_code} cannot send broadcasts; "
                                  f"ask the {settings.triage_department} desk or the grid's staff")
    if not operator.grid_code:
        raise BroadcastError(403, f"operator {operator.id} has no grid")
    return operator.grid_code


def may_see(tree: audience.GridTree, settings: Settings, operator: Worker | None,
            broadcast: BroadcastRow) -> bool:
    try:
        scope = operator_scope(settings, operator)
    except BroadcastError:
        return False
    return scope is None or (broadcast.scope is not None and tree.within(broadcast.scope, scope))


def get(session: Session, tree: audience.GridTree, settings: Settings, operator: Worker | None,
        broadcast_id: int) -> BroadcastRow:
    broadcast = session.get(BroadcastRow, broadcast_id)
    if broadcast is None or not may_see(tree, settings, operator, broadcast):
        raise BroadcastError(404, f"no broadcast {broadcast_id}")  # not yours looks like not there
    return broadcast


# --- the audience as SQL --------------------------------------------------------------------------


def not_opted_out() -> ColumnElement[bool]:
    """No STOP recorded from the resident's phone or Telegram chat (contacts, keyed by channel + address)."""
    def stopped(channel: str, address: ColumnElement) -> ColumnElement[bool]:
        return exists().where(ContactRow.channel == channel, ContactRow.address == address,
                              ContactRow.opted_out.is_(True))

    return and_(not_(stopped("sms", ResidentRow.phone)),
                not_(stopped(RESIDENT_BOT, cast(ResidentRow.telegram_chat_id, String))))


def recipients_where(session: Session, tree: audience.GridTree, expression: str, scope: str | None,
                     emergency: bool) -> ColumnElement[bool]:
    """Who gets it: the audience, inside the scope, minus opted-out residents unless an emergency."""
    try:
        where = audience.condition(session, tree, expression)
    except audience.AudienceError as error:
        raise BroadcastError(400, str(error)) from error
    parts = [where, audience.in_grid(tree, scope) if scope else true()]
    if not emergency:
        parts.append(not_opted_out())
    return and_(*parts)


def count_residents(session: Session, where: ColumnElement[bool]) -> int:
    return session.scalar(select(func.count()).select_from(ResidentRow).where(where)) or 0


def stream_residents(session: Session, where: ColumnElement[bool], after: str | None = None,
                     page: int = STREAM_PAGE) -> Iterator[list]:
    """Pages of matching residents in id order (keyset pagination: memory flat in the audience)."""
    columns = (ResidentRow.id, ResidentRow.name, ResidentRow.phone, ResidentRow.grid_code,
               ResidentRow.telegram_chat_id, ResidentRow.language)
    while True:
        query = select(*columns).where(where).order_by(ResidentRow.id).limit(page)
        if after is not None:
            query = query.where(ResidentRow.id > after)
        rows = session.execute(query).all()
        if not rows:
            return
        yield rows
        after = rows[-1].id


# --- create and preview ---------------------------------------------------------------------------


@dataclass
class Preview:
    recipients: int = 0
    excluded_opted_out: int = 0
    by_channel: dict[str, int] = field(default_factory=dict)
    by_language: dict[str, int] = field(default_factory=dict)
    sms_segments: int = 0
    sms_cost: float = 0.0
    currency: str = ""
    sample: list[dict] = field(default_factory=list)


def preview(session: Session, settings: Settings, tree: audience.GridTree, expression: str,
            texts: dict[str, str], scope: str | None, emergency: bool) -> Preview:
    """Size, split, sample and SMS cost, by rendering every SMS the broadcast would send (streamed)."""
    try:
        templates.check(texts)
    except templates.TemplateError as error:
        raise BroadcastError(400, str(error)) from error
    where = recipients_where(session, tree, expression, scope, emergency)
    renderer = templates.Renderer.load(session, texts)
    result = Preview(currency=settings.sms_cost_currency)
    channels: Counter[str] = Counter()
    languages: Counter[str] = Counter()
    for page in stream_residents(session, where):
        for resident in page:
            channel = "telegram" if resident.telegram_chat_id is not None else "sms"
            channels[channel] += 1
            languages[resident.language] += 1
            text = renderer.render(resident.language, resident.name, resident.grid_code)
            if channel == "sms":
                result.sms_segments += segments(templates.sms_body(settings.sms_signature, text))
            if len(result.sample) < SAMPLE_SIZE:
                result.sample.append({"resident": resident.id, "phone": mask(resident.phone),
                                      "grid": resident.grid_code, "channel": channel,
                                      "language": resident.language, "text": text})
    result.recipients = sum(channels.values())
    result.by_channel, result.by_language = dict(channels), dict(languages)
    result.sms_cost = round(result.sms_segments * settings.sms_segment_cost, 2)
    if not emergency:
        everyone = recipients_where(session, tree, expression, scope, emergency=True)
        result.excluded_opted_out = count_residents(session, everyone) - result.recipients
    return result


def create(session: Session, settings: Settings, tree: audience.GridTree, operator: Worker | None, *,
           title: str, expression: str, texts: dict[str, str], emergency: bool, now: datetime) -> BroadcastRow:
    """A draft broadcast, refused (403) if its audience reaches anyone outside the operator's grid."""
    scope = operator_scope(settings, operator)
    try:
        templates.check(texts)
    except templates.TemplateError as error:
        raise BroadcastError(400, str(error)) from error
    recipients_where(session, tree, expression, None, emergency=True)  # refuses a bad expression
    if scope is not None and not audience.confined(audience.parse(expression), tree, scope):
        # Decided from the expression, not by counting: a count would tell who lives outside.
        raise BroadcastError(403, f"the audience may reach residents outside your jurisdiction ({scope}); "
                                  f"add `and grid:{scope}` or narrow it")
    broadcast = BroadcastRow(title=title or expression, audience=expression, templates=texts,
                             emergency=emergency, state="created", scope=scope,
                             created_by=operator.id if operator else None, created_at=now, updated_at=now)
    session.add(broadcast)
    session.flush()
    return broadcast


def preview_of(session: Session, settings: Settings, tree: audience.GridTree, broadcast: BroadcastRow) -> Preview:
    return preview(session, settings, tree, broadcast.audience, broadcast.templates, broadcast.scope,
                   broadcast.emergency)


# --- the life cycle -------------------------------------------------------------------------------


def allowed_now(settings: Settings, broadcast: BroadcastRow, now: datetime) -> bool:
    """May this broadcast's messages go out at `now`? Emergencies ignore quiet hours."""
    if broadcast.emergency:
        return True
    return release_time(now, QuietHours.parse(settings.quiet_hours), settings.timezone) <= now


def starts_at(settings: Settings, broadcast: BroadcastRow, now: datetime) -> datetime:
    """When a scheduled broadcast will start: its send time, moved out of quiet hours."""
    due = max(broadcast.send_at or now, now)
    if broadcast.emergency:
        return due
    return release_time(due, QuietHours.parse(settings.quiet_hours), settings.timezone)


def _transition(session: Session, broadcast: BroadcastRow, allowed_from: tuple[str, ...], to: str,
                now: datetime) -> None:
    """Move state with a conditional UPDATE, so two operators racing cannot both win."""
    changed = session.execute(update(BroadcastRow)
                              .where(BroadcastRow.id == broadcast.id, BroadcastRow.state.in_(allowed_from))
                              .values(state=to, updated_at=now)).rowcount
    if not changed:
        session.refresh(broadcast)
        raise BroadcastError(409, f"broadcast {broadcast.id} is {broadcast.state}; cannot go to {to}")
    session.refresh(broadcast)


def send(session: Session, settings: Settings, tree: audience.GridTree, broadcast: BroadcastRow,
         send_at: datetime | None, now: datetime) -> None:
    """Order the broadcast sent at `send_at` (default now); quiet hours may defer the start."""
    where = recipients_where(session, tree, broadcast.audience, broadcast.scope, broadcast.emergency)
    broadcast.audience_size = count_residents(session, where)
    broadcast.send_at = send_at or now
    _transition(session, broadcast, ("created",), "scheduled", now)


def start_due(session: Session, settings: Settings, now: datetime) -> list[int]:
    """Scheduled broadcasts whose start time has come move to `sending`; returns their ids."""
    started = []
    for broadcast in session.scalars(select(BroadcastRow).where(BroadcastRow.state == "scheduled")):
        if starts_at(settings, broadcast, now) <= now:
            changed = session.execute(update(BroadcastRow)
                                      .where(BroadcastRow.id == broadcast.id, BroadcastRow.state == "scheduled")
                                      .values(state="sending", started_at=now, updated_at=now)).rowcount
            if changed:
                started.append(broadcast.id)
    session.commit()
    return started


def pause(session: Session, broadcast: BroadcastRow, now: datetime) -> None:
    """Stop handing out messages; those already with the provider still get their reports."""
    _transition(session, broadcast, ("scheduled", "sending"), "paused", now)


def resume(session: Session, broadcast: BroadcastRow, now: datetime) -> None:
    """Carry on where it stopped: back to sending if it had started, else to scheduled."""
    _transition(session, broadcast, ("paused",), "sending" if broadcast.started_at else "scheduled", now)


def cancel(session: Session, broadcast: BroadcastRow, now: datetime) -> int:
    """Stop for good: every delivery not yet claimed is cancelled; returns how many."""
    _transition(session, broadcast, ("created", "scheduled", "sending", "paused"), "cancelled", now)
    broadcast.finished_at = now
    return session.execute(update(DeliveryRow)
                           .where(DeliveryRow.broadcast_id == broadcast.id, DeliveryRow.state == "pending")
                           .values(state="cancelled", updated_at=now)).rowcount


def finish_if_complete(session: Session, broadcast_id: int, now: datetime) -> bool:
    """Mark `done` once fan-out has finished and no delivery is pending or being sent."""
    unfinished = exists().where(DeliveryRow.broadcast_id == broadcast_id,
                                DeliveryRow.state.in_(UNFINISHED))
    return bool(session.execute(update(BroadcastRow)
                                .where(BroadcastRow.id == broadcast_id, BroadcastRow.state == "sending",
                                       BroadcastRow.fanout_done.is_(True), not_(unfinished))
                                .values(state="done", finished_at=now, updated_at=now)).rowcount)


# --- status ---------------------------------------------------------------------------------------


def status(session: Session, settings: Settings, broadcast: BroadcastRow, now: datetime) -> dict:
    """Counts by delivery state and channel, progress, average rate and ETA, as JSON-ready values."""
    counts: Counter[str] = Counter()
    by_channel: Counter[str] = Counter()
    for state, channel, n in session.execute(
            select(DeliveryRow.state, DeliveryRow.channel, func.count())
            .where(DeliveryRow.broadcast_id == broadcast.id)
            .group_by(DeliveryRow.state, DeliveryRow.channel)):
        counts[state] += n
        by_channel[channel] += n
    sent = counts["sent"] + counts["delivered"] + counts["undelivered"]
    failed = counts["failed"] + counts["undelivered"]
    finished = sent + counts["failed"] + counts["cancelled"]
    expected = max(broadcast.audience_size, sum(counts.values()))
    remaining = 0 if broadcast.state in ("done", "cancelled") else max(expected - finished, 0)
    elapsed = ((broadcast.finished_at or now) - broadcast.started_at).total_seconds() \
        if broadcast.started_at else 0.0
    rate = (sent + counts["failed"]) / elapsed if elapsed > 0 else 0.0
    view = {
        "id": broadcast.id, "title": broadcast.title, "state": broadcast.state, "audience": broadcast.audience,
        "emergency": broadcast.emergency, "scope": broadcast.scope, "created_by": broadcast.created_by,
        "audience_size": broadcast.audience_size, "sent": sent, "delivered": counts["delivered"],
        "failed": failed, "cancelled": counts["cancelled"], "remaining": remaining,
        "by_state": dict(counts), "by_channel": dict(by_channel), "rate": round(rate, 1),
        "eta_seconds": round(remaining / rate) if rate > 0 and remaining else None,
        "created_at": broadcast.created_at.isoformat(),
        "started_at": broadcast.started_at.isoformat() if broadcast.started_at else None,
        "finished_at": broadcast.finished_at.isoformat() if broadcast.finished_at else None,
    }
    if broadcast.state == "scheduled":
        view["starts_at"] = starts_at(settings, broadcast, now).isoformat()
    elif broadcast.state == "sending" and not allowed_now(settings, broadcast, now):
        view["deferred_until"] = release_time(now, QuietHours.parse(settings.quiet_hours),
                                              settings.timezone).isoformat()
    return view
