"""Understanding an appeal: what it is about, what kind of appeal it is, where, and who handles it.

The pipeline only sees this interface: `build_classifier(city, settings)` once at start-up, then
`classify(text, sender)` per appeal. A classification below the configured confidence threshold,
or with no grid, sends the case to the triage department with the suggestions attached.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from gateway.config import Settings
from gateway.domain.city import City


@dataclass(frozen=True)
class Suggestion:
    category: str
    department: str
    score: float


@dataclass(frozen=True)
class Classification:
    category: str | None  # a category code of the city's taxonomy; None when unknown
    appeal_type: str | None  # an appeal type code (complaint, report, ...)
    department: str  # the handling department code (the triage department when unsure)
    grid: str | None  # a level-3 grid code; None when no place could be pinned down
    place: str | None  # the gazetteer place name the appeal mentions, if any
    confidence: float  # 0..1 for the category decision
    suggestions: tuple[Suggestion, ...] = field(default_factory=tuple)  # top three when unsure
    grid_candidates: tuple[str, ...] = field(default_factory=tuple)  # grids of an ambiguous mention

    @property
    def needs_triage(self) -> bool:
        return self.category is None or self.grid is None


class Classifier(Protocol):
    def classify(self, text: str, sender: str | None) -> Classification: ...

    def refresh(self) -> bool:
        """Pick up a newly promoted model, if any (workers call it between jobs)."""
        ...


def build_classifier(city: City, settings: Settings) -> Classifier:
    """The classifier for this deployment, built from its city data and configuration."""
    from classifiers.model import AppealClassifier

    return AppealClassifier(city, settings)
