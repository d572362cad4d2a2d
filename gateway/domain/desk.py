"""Learning from the triage desk: what it settles about a case becomes a labelled example.

`record` is called by `workflow.settle`, the one domain function every desk front end uses (the
CLI today; the console and HTTP API call the same function), so no settlement is missed.
`labelled_examples` gives them back in the classifier's training format for `gridline train`.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from classifiers.text_model import Example
from gateway.store import CaseRow, DeskLabelRow


def record(session: Session, case: CaseRow, actor: str, now: datetime, *,
           category: str | None, grid: str | None) -> DeskLabelRow | None:
    """Store what the desk settled (before the case is changed, so the classifier's guess is kept)."""
    if not category and not grid:
        return None
    row = DeskLabelRow(case_id=case.id, text=case.text, category=category, grid_code=grid,
                       appeal_type=case.appeal_type, predicted_category=case.category,
                       predicted_grid=case.grid_code, settled_by=actor, settled_at=now)
    session.add(row)
    return row


def labelled_examples(session: Session, since: datetime | None = None) -> list[Example]:
    """The desk's category labels as training examples, oldest first; the latest label of a case wins.

    The appeal type is the classifier's (the desk does not settle it): the category model learns
    from these, the appeal-type model only from the shipped examples.
    """
    query = select(DeskLabelRow).where(DeskLabelRow.category.is_not(None)).order_by(DeskLabelRow.settled_at,
                                                                                   DeskLabelRow.id)
    if since is not None:
        query = query.where(DeskLabelRow.settled_at >= since)
    latest = {row.case_id: row for row in session.scalars(query)}
    return [Example(row.text, row.category, None) for row in latest.values() if row.category]
