"""Choosing the confidence threshold from labelled appeals the model never trained on.

Below the threshold a case goes to the triage desk, which costs a person's time; above it a
wrong department bounces the case and costs the resident days. The table shows, for each
threshold, which share is routed automatically and how often those routes are right.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(20))  # 0.00 .. 0.95
TARGET_ACCURACY = 0.97  # of the automatically routed cases (issue 15)
MAX_TRIAGE = 0.15  # share of cases the desk can take


@dataclass(frozen=True)
class Row:
    threshold: float
    routed: float  # share of appeals at or above the threshold
    accuracy: float  # department accuracy over those (1.0 when none)


def table(confidences: Sequence[float], correct: Sequence[bool],
          thresholds: Sequence[float] = THRESHOLDS) -> list[Row]:
    """One row per threshold: share routed automatically and the department accuracy on them."""
    rows = []
    for threshold in thresholds:
        routed = [ok for confidence, ok in zip(confidences, correct, strict=True) if confidence >= threshold]
        rows.append(Row(threshold, len(routed) / len(confidences), sum(routed) / len(routed) if routed else 1.0))
    return rows


def choose(rows: Sequence[Row], target: float = TARGET_ACCURACY, max_triage: float = MAX_TRIAGE) -> Row:
    """The lowest threshold whose routed cases reach `target` within the triage budget; if none
    does, the most accurate one within the budget (the desk cannot take more)."""
    affordable = [row for row in rows if 1 - row.routed <= max_triage + 1e-9] or [min(rows, key=lambda r: r.threshold)]
    good = [row for row in affordable if row.accuracy >= target]
    if good:
        return min(good, key=lambda row: row.threshold)
    return max(affordable, key=lambda row: (row.accuracy, -row.threshold))
