"""The case workflow: who holds a case, what everyone is told, and what happens when time runs out.

Assignment follows the grid's "1+1+N" team: the full-time grid worker first, the grid leader
informed. A holder who cannot solve a case escalates it one level up — grid → community →
street → the district department (or the triage desk) — and so does the clock when the
holder's deadline passes. Residents hear of each step that matters to them on the channel they
used, and rate the handling at the end; a dissatisfied rating reopens the case once.

Every function here changes rows in the caller's transaction and returns the outbox rows it
queued; nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from gateway.delivery.outbox import queue_message
from gateway.domain import cases, desk, replies
from gateway.domain.cases import IllegalTransition, transition
from gateway.domain.city import City, Worker
from gateway.domain.intents import normalise
from gateway.store import CaseAttachmentRow, CaseRow, DeliveryRow, OpinionLogRow, WorkerPromptRow
from gateway.world import WORKER_BOT, World


class NobodyAbove(IllegalTransition):
    """An escalation with no level above the case's holder that has someone to take it."""


ALERT_ATTACHMENTS = 5  # listed in a task alert; with the excerpt this keeps it far under Telegram's limit
RATING_WORDS = {"满意": 5, "基本满意": 4, "不满意": 1}
DISSATISFIED = 2  # this rating or lower reopens a case (once)


def task_buttons(number: str) -> list[list[tuple[str, str]]]:
    return [[("接单 Accept", f"accept:{number}"), ("办结 Resolve", f"resolve:{number}")],
            [("上报 Escalate", f"escalate:{number}"), ("询问居民 Need info", f"info:{number}")]]


# --- telling people -------------------------------------------------------------------------


def message_worker(session: Session, worker: Worker, text: str, case_id: int | None = None,
                   buttons: list[list[tuple[str, str]]] | None = None) -> DeliveryRow:
    """On the workers' bot where the worker has Telegram (by SMS, without buttons, should the chat
    refuse it), else by SMS."""
    if worker.telegram_chat_id is not None:
        markup = {"inline": buttons} if buttons else None
        row = queue_message(session, WORKER_BOT, str(worker.telegram_chat_id), text, case_id, markup, kind="alert")
        row.fallback_phone = worker.phone
        return row
    return queue_message(session, "sms", worker.phone, text, case_id, kind="alert")


def tell_resident(session: Session, case: CaseRow, key: str, **fields: object) -> list[DeliveryRow]:
    """The reporter, on the channel they used; nobody for a case a worker opened from the log."""
    if case.channel == WORKER_BOT:
        return []
    quoted = {name: replies.clip(value) if isinstance(value, str) else value for name, value in fields.items()}
    body = replies.render(key, case.language, number=case.number, **quoted)
    return [queue_message(session, case.channel, case.reporter, body, case.id)]


def _case_fields(world: World, case: CaseRow) -> dict[str, str]:
    city = world.city
    return {
        "number": case.number, "category": cases.category_label(city, case.category, "zh"),
        "place": case.place or cases.grid_label(city, case.grid_code, "zh") or "待核实",
        "text": replies.excerpt(case.text, case.number),
        "deadline": cases.local_time(case.escalate_at or case.deadline, world.settings.timezone),
    }


def alert(session: Session, world: World, worker: Worker, case: CaseRow) -> list[DeliveryRow]:
    """A task alert with the action buttons, photos and location attached to the case listed."""
    attachments = session.scalars(select(CaseAttachmentRow).where(CaseAttachmentRow.case_id == case.id)).all()
    extra = "".join(f"\n附件：{a.kind} {_attachment_text(a)[:200]}" for a in attachments[:ALERT_ATTACHMENTS])
    if len(attachments) > ALERT_ATTACHMENTS:
        extra += f"\n另有{len(attachments) - ALERT_ATTACHMENTS}个附件"
    text = replies.worker_text("alert", **_case_fields(world, case), extra=extra)
    return [message_worker(session, worker, text, case.id, task_buttons(case.number))]


def _attachment_text(attachment: CaseAttachmentRow) -> str:
    if attachment.kind == "location":
        return f"{attachment.data.get('latitude')},{attachment.data.get('longitude')}"
    return str(attachment.data.get("photo", ""))


# --- who holds a case -----------------------------------------------------------------------


def grid_team(city: City, grid_code: str | None, role: str) -> Worker | None:
    return next((w for w in city.workers.values() if w.role == role and w.grid_code == grid_code), None)


def department_staff(city: City, department: str) -> Worker | None:
    """The department's first staff member reachable on chat, else its first staff member."""
    staff = [w for w in city.workers.values() if w.role == "dept_staff" and w.department_code == department]
    return next((w for w in staff if w.telegram_chat_id is not None), staff[0] if staff else None)


def officer_at(world: World, case: CaseRow, level: int) -> Worker | None:
    """Who answers for a case at `level`: the community or street officer, or at the top the
    handling department (the triage desk when the case's department is the triage desk)."""
    city = world.city
    if level == 0 or case.grid_code is None:
        return department_staff(city, case.department) or department_staff(
            city, world.settings.triage_department)
    unit = city.ancestor_at(case.grid_code, level)
    return grid_team(city, unit.code if unit else None, {2: "community_officer", 1: "street_officer"}[level])


def route(session: Session, world: World, case: CaseRow, now: datetime) -> list[DeliveryRow]:
    """A new case goes to its grid worker, or to the triage desk when it could not be routed."""
    first = grid_team(world.city, case.grid_code, "grid_worker") if case.queue == "routed" else None
    if first is None:
        return tell_triage(session, world, case)
    return assign(session, world, case, first, "gateway", now, tell=False)


def tell_triage(session: Session, world: World, case: CaseRow) -> list[DeliveryRow]:
    staff = department_staff(world.city, world.settings.triage_department)
    if staff is None:
        return []
    why = "地点不明" if case.grid_code is None else "分类把握不足"
    suggestions = "；".join(f"{s['category']}({s['score']:.2f})" for s in case.triage_notes.get("suggestions", []))
    candidates = case.triage_notes.get("grid_candidates") or []
    text = replies.worker_text("triage", number=case.number, why=why, text=replies.excerpt(case.text, case.number),
                               suggestions=(suggestions or "无") + (f"；候选网格：{'、'.join(candidates)}"
                                                                     if candidates else ""))
    return [message_worker(session, staff, text, case.id)]


def assign(session: Session, world: World, case: CaseRow, worker: Worker, actor: str, now: datetime,
           *, tell: bool = True) -> list[DeliveryRow]:
    """Give the case to `worker`, alert them, inform the grid leader, and (unless the
    acknowledgement already said so) tell the resident."""
    transition(session, case, "assigned", actor, f"to {worker.id}", now)
    case.assigned_worker_id = worker.id
    case.level = world.city.grids[worker.grid_code].level if worker.grid_code else 0
    # The SLA deadline, but never less than a reminder's lead time for a late (re)assignment.
    case.escalate_at = max(case.deadline, now + timedelta(hours=world.settings.reminder_hours))
    case.reminded_at = None
    out = alert(session, world, worker, case)
    leader = grid_team(world.city, case.grid_code, "grid_leader")
    if leader is not None and worker.role == "grid_worker":
        out.append(message_worker(session, leader, replies.worker_text(
            "inform_leader", **_case_fields(world, case), worker=worker.name), case.id))
    if tell:
        out += tell_resident(session, case, "assigned", worker=worker.name,
                             role=replies.role_name(worker.role, case.language),
                             deadline=cases.local_time(case.deadline, world.settings.timezone))
    return out


def settle(session: Session, world: World, case: CaseRow, actor: str, now: datetime, *,
           category: str | None = None, grid: str | None = None, worker: Worker | None = None) -> list[DeliveryRow]:
    """The triage desk settles what the classifier could not (category, grid), then assigns:
    the named worker, else the grid's worker, else the department's staff. What the desk settled
    is kept as a labelled example for the classifier (gateway/domain/desk.py)."""
    city = world.city
    desk.record(session, case, actor, now, category=category, grid=grid)
    if category:
        case.category, case.department = category, city.categories[category].department_code
        case.deadline = case.created_at + timedelta(hours=city.categories[category].sla_hours)
    if grid:
        case.grid_code = grid
    holder = worker or grid_team(city, case.grid_code, "grid_worker") or department_staff(city, case.department)
    if holder is None:
        raise IllegalTransition(case, "assigned", "there is nobody to assign it to")
    case.queue = "routed"
    return assign(session, world, case, holder, actor, now)


def escalate(session: Session, world: World, case: CaseRow, actor: str, reason: str,
             now: datetime) -> list[DeliveryRow]:
    """Move the case up to the next level that has someone to take it, and alert them."""
    level, officer = case.level, None
    while officer is None and level > 0:
        level = 0 if case.grid_code is None else level - 1
        officer = officer_at(world, case, level)
    if officer is None:
        raise NobodyAbove(case, "escalated", "there is nobody above its current holder")
    source = world.city.workers.get(case.assigned_worker_id or "")
    transition(session, case, "escalated", actor, reason, now)
    case.level, case.assigned_worker_id = level, officer.id
    case.escalate_at = now + timedelta(hours=world.settings.escalation_step_hours)
    case.reminded_at = None
    fields = _case_fields(world, case)
    text = replies.worker_text("escalated_alert", **fields, source=source.name if source else "系统",
                               reason=replies.excerpt(reason, case.number))
    unit = (world.city.departments[case.department].name if level == 0 and case.department in
            world.city.departments else _unit_name(world.city, case, level))
    return [message_worker(session, officer, text, case.id, task_buttons(case.number)),
            *tell_resident(session, case, "escalated", unit=unit)]


def _unit_name(city: City, case: CaseRow, level: int) -> str:
    unit = city.ancestor_at(case.grid_code, level)
    return unit.name if unit else ""


# --- operators' decisions (CLI, API and console alike) ----------------------------------------


def reject(session: Session, case: CaseRow, actor: str, reason: str, now: datetime) -> list[DeliveryRow]:
    """Not the city's matter: the resident is told why, so a reason is required."""
    if not reason.strip():
        raise IllegalTransition(case, "rejected", "a rejection needs a reason: the resident is told why")
    transition(session, case, "rejected", actor, reason, now)
    return tell_resident(session, case, "rejected", reason=reason)


def merge(session: Session, case: CaseRow, into: str, actor: str, now: datetime) -> list[DeliveryRow]:
    """A duplicate joins the case it repeats; the resident is told to follow that one, so it must
    exist, be another case, and still be open to follow."""
    if "merged" not in cases.TRANSITIONS[case.state]:
        raise IllegalTransition(case, "merged")
    if into == case.number:
        raise IllegalTransition(case, "merged", "a case cannot be merged into itself")
    target = session.scalar(select(CaseRow).where(CaseRow.number == into))
    if target is None:
        raise IllegalTransition(case, "merged", f"there is no case {into} to merge it into")
    if target.state in cases.FINAL_STATES:
        raise IllegalTransition(case, "merged", f"case {into} is {target.state}: there is nothing to follow there")
    transition(session, case, "merged", actor, f"into {into}", now)
    case.merged_into = into
    return tell_resident(session, case, "merged", into=into)


def add_note(session: Session, case: CaseRow, actor: str, note: str, now: datetime) -> None:
    """An internal note on the case's timeline; its state does not change and nobody is messaged."""
    if not note.strip():
        raise IllegalTransition(case, case.state, "a note needs some text")
    session.add(cases.CaseEventRow(case_id=case.id, at=now, actor=actor, from_state=case.state,
                                   to_state=case.state, note=f"note: {note}"))


# --- the grid workers' bot ------------------------------------------------------------------


def may_act(worker: Worker, case: CaseRow) -> bool:
    """The case's holder, or the grid leader of its grid, may act on it."""
    return case.assigned_worker_id == worker.id or (
        worker.role == "grid_leader" and worker.grid_code == case.grid_code)


def worker_button(session: Session, world: World, worker: Worker, chat: str, data: str,
                  now: datetime) -> list[DeliveryRow]:
    """A press of one of a task alert's buttons (or of a log entry's "make it a case")."""
    action, _, key = data.partition(":")
    if action == "logcase":
        return log_to_case(session, world, worker, key, now)
    case = session.scalar(select(CaseRow).where(CaseRow.number == key))
    if case is None or not may_act(worker, case):
        return [message_worker(session, worker, replies.worker_text("not_yours", number=key))]
    try:
        if action == "accept":
            transition(session, case, "accepted", worker.id, "accepted on chat", now)
            return [message_worker(session, worker, replies.worker_text("accepted", number=case.number))]
        prompts = {"resolve": "ask_note", "escalate": "ask_reason", "info": "ask_question"}
        if action not in prompts:
            return [message_worker(session, worker, replies.worker_text("help"))]
        check_action(case, action)
    except IllegalTransition as refused:
        return [message_worker(session, worker, replies.worker_text("refused", reason=refused))]
    session.merge(WorkerPromptRow(chat_id=chat, action=action, case_number=case.number, at=now))
    return [message_worker(session, worker, replies.worker_text(prompts[action], number=case.number))]


ACTION_TARGETS = {"resolve": "resolved", "escalate": "escalated", "info": "in_progress"}
PROMPT_LIFETIME = timedelta(hours=24)


def check_action(case: CaseRow, action: str) -> None:
    """Refuse a button the case's state cannot take (a resolve may first accept an assigned case)."""
    if action == "info" and case.state not in cases.OPEN_STATES:
        raise IllegalTransition(case, "in_progress", "there is nothing left to ask the resident about")
    state = "accepted" if action == "resolve" and case.state == "assigned" else case.state
    if action != "info" and ACTION_TARGETS[action] not in cases.TRANSITIONS[state]:
        raise IllegalTransition(case, ACTION_TARGETS[action])


def worker_reply(session: Session, world: World, worker: Worker, chat: str, text: str,
                 photo: str | None, now: datetime) -> list[DeliveryRow]:
    """Text (or a photo) answering the bot's last question: a note, a reason or a question."""
    prompt = session.get(WorkerPromptRow, chat)
    if prompt is None or prompt.at < now - PROMPT_LIFETIME:
        return [message_worker(session, worker, replies.worker_text("help"))]
    case = session.scalar(select(CaseRow).where(CaseRow.number == prompt.case_number))
    if case is None or not may_act(worker, case):  # the case moved on while they typed
        session.execute(delete(WorkerPromptRow).where(WorkerPromptRow.chat_id == chat))
        return [message_worker(session, worker, replies.worker_text("not_yours", number=prompt.case_number))]
    if photo:
        session.add(CaseAttachmentRow(case_id=case.id, added_by=worker.id, kind="photo",
                                      data={"photo": photo}, at=now))
        if not text:
            return [message_worker(session, worker, replies.worker_text("photo_saved", number=case.number))]
    session.execute(delete(WorkerPromptRow).where(WorkerPromptRow.chat_id == chat))
    try:
        check_action(case, prompt.action)
        if prompt.action == "resolve":
            if case.state == "assigned":
                transition(session, case, "accepted", worker.id, "accepted on resolving", now)
            transition(session, case, "resolved", worker.id, text, now)
            case.resolution, case.awaiting = text, "rating"
            return [message_worker(session, worker, replies.worker_text("resolved", number=case.number)),
                    *tell_resident(session, case, "resolved", note=text)]
        if prompt.action == "escalate":
            out = escalate(session, world, case, worker.id, text, now)
            new_holder = world.city.workers[case.assigned_worker_id].name
            return out + [message_worker(session, worker, replies.worker_text(
                "escalated", number=case.number, unit=new_holder))]
        if case.state == "accepted":
            transition(session, case, "in_progress", worker.id, f"asked the resident: {text}", now)
        case.awaiting = "info"
        return [*tell_resident(session, case, "question", question=text),
                message_worker(session, worker, replies.worker_text("question_sent", number=case.number))]
    except IllegalTransition as refused:
        return [message_worker(session, worker, replies.worker_text("refused", reason=refused))]


def case_text(session: Session, worker: Worker, number: str) -> list[DeliveryRow]:
    """`/case <no>`: the whole appeal text, in as many messages as Telegram's limit needs."""
    case = session.scalar(select(CaseRow).where(CaseRow.number == number.strip()))
    if case is None or not may_act(worker, case):
        return [message_worker(session, worker, replies.worker_text("not_yours", number=number.strip()[:20]))]
    size = replies.TELEGRAM_LIMIT - 100  # room for the heading
    parts = [case.text[start:start + size] for start in range(0, len(case.text), size)] or [""]
    return [message_worker(session, worker, replies.worker_text(
        "case_text", number=case.number, part=n, parts=len(parts), text=part), case.id)
        for n, part in enumerate(parts, start=1)]


def open_tasks(session: Session, world: World, worker: Worker) -> list[DeliveryRow]:
    query = (select(CaseRow).where(CaseRow.assigned_worker_id == worker.id, CaseRow.state.in_(cases.OPEN_STATES))
             .order_by(CaseRow.escalate_at))
    tasks = session.scalars(query).all()
    if not tasks:
        return [message_worker(session, worker, replies.worker_text("no_tasks"))]
    tz = world.settings.timezone
    lines = "\n".join(f"{c.number} {replies.state_name(c.state, 'zh')} "
                      f"时限{cases.local_time(c.escalate_at or c.deadline, tz)} "
                      f"{c.text[:20]}" for c in tasks)
    return [message_worker(session, worker, replies.worker_text("tasks", lines=lines))]


def write_log(session: Session, worker: Worker, text: str, now: datetime) -> list[DeliveryRow]:
    entry = OpinionLogRow(worker_id=worker.id, grid_code=worker.grid_code, text=text, at=now)
    session.add(entry)
    session.flush()
    return [message_worker(session, worker, replies.worker_text("logged", id=entry.id), None,
                           [[("立案 Make it a case", f"logcase:{entry.id}")]])]


def log_to_case(session: Session, world: World, worker: Worker, entry_id: str, now: datetime) -> list[DeliveryRow]:
    entry = session.get(OpinionLogRow, int(entry_id)) if entry_id.isdigit() else None
    if entry is None or entry.worker_id != worker.id or entry.case_id is not None:
        return [message_worker(session, worker, replies.worker_text("refused", reason="该日志不存在或已立案"))]
    verdict = world.classifier.classify(entry.text, None)
    if verdict.grid is None and entry.grid_code:
        verdict = replace(verdict, grid=entry.grid_code)
    case = cases.open_case(session, city=world.city, settings=world.settings, channel=WORKER_BOT,
                           reporter=str(worker.telegram_chat_id), text=entry.text, language="zh",
                           verdict=verdict, now=now)
    entry.case_id = case.id
    return route(session, world, case, now) + [message_worker(
        session, worker, replies.worker_text("log_to_case", id=entry.id, number=case.number))]


# --- residents answering ----------------------------------------------------------------------


def parse_rating(text: str) -> int | None:
    clean = normalise(text).rstrip("!！。.")
    if clean in RATING_WORDS:
        return RATING_WORDS[clean]
    return int(clean) if clean in ("1", "2", "3", "4", "5") else None


def rate(session: Session, world: World, case: CaseRow, rating: int, now: datetime) -> list[DeliveryRow]:
    """The resident's verdict closes the case; a dissatisfied one reopens it once instead."""
    case.rating, case.awaiting = rating, None
    if rating <= DISSATISFIED and case.reopened == 0:
        case.reopened = 1
        transition(session, case, "in_progress", "resident", f"rated {rating}: reopened", now)
        case.escalate_at = now + timedelta(hours=world.settings.escalation_step_hours)
        case.resolved_at, case.reminded_at = None, None
        out = tell_resident(session, case, "reopened")
        holder = world.city.workers.get(case.assigned_worker_id or "")
        leader = grid_team(world.city, case.grid_code, "grid_leader")
        for worker in {w.id: w for w in (holder, leader) if w is not None}.values():
            out.append(message_worker(session, worker, replies.worker_text(
                "reopened_leader", number=case.number, worker=holder.name if holder else "—"),
                case.id, task_buttons(case.number)))
        return out
    transition(session, case, "closed", "resident", f"rated {rating}", now)
    return tell_resident(session, case, "rated")


def answer_question(session: Session, world: World, case: CaseRow, text: str, now: datetime) -> list[DeliveryRow]:
    case.awaiting = None
    session.add(cases.CaseEventRow(case_id=case.id, at=now, actor="resident", from_state=case.state,
                                   to_state=case.state, note=f"answered: {text}"))
    holder = world.city.workers.get(case.assigned_worker_id or "")
    out = tell_resident(session, case, "info_received")
    if holder is not None:
        out.append(message_worker(session, holder, replies.worker_text(
            "answer", number=case.number, text=replies.excerpt(text, case.number)), case.id))
    return out


# --- the clock --------------------------------------------------------------------------------


def tick(session: Session, world: World, now: datetime) -> list[DeliveryRow]:
    """Reminders before deadlines, one-level escalation after them, and closing unrated cases."""
    out: list[DeliveryRow] = []
    holding = ("assigned", "accepted", "in_progress", "escalated")
    remind_from = now + timedelta(hours=world.settings.reminder_hours)
    due_soon = session.scalars(select(CaseRow).where(
        CaseRow.state.in_(holding), CaseRow.reminded_at.is_(None), CaseRow.escalate_at > now,
        CaseRow.escalate_at <= remind_from)).all()
    for case in due_soon:
        holder = world.city.workers.get(case.assigned_worker_id or "")
        # Conditional, so a second clock running at the same moment (two sweepers overlapping
        # across a lease handover) finds it reminded and sends nothing.
        if not session.execute(update(CaseRow).where(CaseRow.id == case.id, CaseRow.reminded_at.is_(None))
                               .values(reminded_at=now)).rowcount:
            continue
        if holder is not None:
            out.append(message_worker(session, holder, replies.worker_text(
                "reminder", number=case.number, deadline=cases.local_time(case.escalate_at, world.settings.timezone)),
                case.id, task_buttons(case.number)))
    overdue = session.scalars(select(CaseRow).where(
        CaseRow.state.in_(holding), CaseRow.escalate_at <= now, CaseRow.level > 0)).all()
    for case in overdue:
        try:
            with session.begin_nested():
                out += escalate(session, world, case, "clock", "逾期未办结 overdue", now)
        except NobodyAbove:  # stop trying every tick
            case.escalate_at = None
        except IllegalTransition:  # someone acted on it meanwhile: theirs stands
            continue
    unrated = session.scalars(select(CaseRow).where(
        CaseRow.state == "resolved",
        CaseRow.resolved_at <= now - timedelta(hours=world.settings.rating_timeout_hours))).all()
    for case in unrated:
        try:
            with session.begin_nested():
                transition(session, case, "closed", "clock", "no rating in time", now)
        except IllegalTransition:  # the resident rated it meanwhile
            continue
    return out

