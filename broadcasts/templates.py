"""Notice templates: one text per language, with per-resident fields, and what an SMS costs.

Fields: {name} (the resident), {worker_name} and {worker_phone} (the resident's grid worker: the
full-time grid worker of their grid, else the nearest responsible worker up the hierarchy) and
{grid} (the grid's name in the resident's language). A resident whose language has no text gets
the first text given. Every SMS starts with the configured sender signature (【...】); Telegram
messages do not need one.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from adapters.twilio_sms import segments
from broadcasts.audience import GridTree
from gateway.store import GridRow, WorkerRow

FIELDS = ("name", "worker_name", "worker_phone", "grid")
# Who answers for a grid, nearest first: the "1+1" team of the grid, then the community and street.
RESPONDER_ROLES = ("grid_worker", "grid_leader", "community_officer", "street_officer")


class TemplateError(ValueError):
    """Templates we cannot render, with the reason."""


def check(templates: dict[str, str]) -> None:
    if not templates:
        raise TemplateError("give at least one text, e.g. {\"zh\": \"...\"}")
    for language, text in templates.items():
        if not text.strip():
            raise TemplateError(f"the {language} text is empty")
        try:
            parts = [(field, spec, conversion) for _, field, spec, conversion in string.Formatter().parse(text)
                     if field is not None]
        except ValueError as bad:
            raise TemplateError(f"the {language} text is not a valid template: {bad}") from bad
        if any(spec or conversion for _, spec, conversion in parts):  # {name:>99999999} would fill memory
            raise TemplateError(f"the {language} text formats a field: write {{name}}, not {{name:...}} or {{name!r}}")
        names = [field for field, _, _ in parts]
        unknown = sorted(set(names) - set(FIELDS))
        if unknown:
            raise TemplateError(f"the {language} text uses unknown field(s) {', '.join(unknown)}; "
                                f"known: {', '.join(FIELDS)}")


@dataclass(frozen=True)
class Responder:
    name: str
    phone: str


@dataclass
class Renderer:
    """Everything rendering needs besides the resident: small tables, loaded once per job."""

    templates: dict[str, str]
    grid_names: dict[str, tuple[str, str]]  # code → (name, name_en)
    responders: dict[str, Responder]  # grid code → the worker residents there should call

    @classmethod
    def load(cls, session: Session, templates: dict[str, str]) -> Renderer:
        tree = GridTree.load(session)
        grid_names = {code: (name, name_en) for code, name, name_en
                      in session.execute(select(GridRow.code, GridRow.name, GridRow.name_en))}
        staff: dict[tuple[str, str], Responder] = {}
        for worker in session.scalars(select(WorkerRow).where(WorkerRow.role.in_(RESPONDER_ROLES))
                                      .order_by(WorkerRow.id)):
            staff.setdefault((worker.grid_code or "", worker.role), Responder(worker.name, worker.phone))
        responders = {}
        for code in tree.parents:
            responder = _nearest(tree, staff, code)
            if responder:
                responders[code] = responder
        return cls(templates, grid_names, responders)

    def render(self, language: str, name: str, grid_code: str) -> str:
        text = self.templates.get(language) or next(iter(self.templates.values()))
        responder = self.responders.get(grid_code, Responder("", ""))
        grid_name, grid_name_en = self.grid_names.get(grid_code, (grid_code, grid_code))
        return text.format(name=name, worker_name=responder.name, worker_phone=responder.phone,
                           grid=grid_name_en if language == "en" and grid_name_en else grid_name)


def _nearest(tree: GridTree, staff: dict[tuple[str, str], Responder], code: str) -> Responder | None:
    current: str | None = code
    while current is not None:
        for role in RESPONDER_ROLES:
            if (current, role) in staff:
                return staff[current, role]
        current = tree.parents.get(current)
    return None


def sms_body(signature: str, text: str) -> str:
    return f"{signature}{text}"


def sms_cost(body: str, unit: str) -> int:
    """Tokens one SMS takes from the rate limit: 1, or its segments when limiting segments."""
    return segments(body) if unit == "segments" else 1
