"""The appeal classifier: text model + gazetteer + department routing + triage.

Built once at start-up from the city folder and `config/classifier/` (labelled examples and
keyword lists), so a new city brings its own taxonomy, gazetteer and examples without code changes.
"""

from __future__ import annotations

import json
from pathlib import Path

from classifiers import Classification, Suggestion
from classifiers.gazetteer import Gazetteer
from classifiers.normalize import normalize
from classifiers.segment import Segmenter
from classifiers.text_model import Featurizer, PhraseIndex, TextModel, load_examples
from gateway.config import Settings
from gateway.domain.city import City

SUGGESTIONS = 3
# What the classifier reads of an appeal. Cost grows with length (jieba, features, place scan):
# 1,000+ characters ran at ~110/s uncapped. What and where come early in residents' messages; the
# rest of a long one is background, which the triage desk reads anyway.
READ_LIMIT = 300


def classifier_dir(settings: Settings) -> Path:
    return settings.config_dir / "classifier"


class AppealClassifier:
    def __init__(self, city: City, settings: Settings):
        self.city = city
        self.settings = settings
        folder = classifier_dir(settings)
        keywords = json.loads((folder / "keywords.json").read_text(encoding="utf-8"))
        phrases: dict[str, list[str]] = {}
        for code in city.categories:
            phrases["kc:" + code] = keywords.get("categories", {}).get(code, [])
        for code in city.appeal_types:
            phrases["kt:" + code] = keywords.get("appeal_types", {}).get(code, [])
        keyword_index = PhraseIndex(phrases)
        areas = [name for g in city.grids.values() if g.level < 3 for name in (g.name, g.name_en)]
        self.gazetteer = Gazetteer(city.places, areas, place_kinds=keywords.get("place_kinds", ()))
        user_words = [*self.gazetteer.words, *keyword_index.phrases, *(c.name for c in city.categories.values())]
        self.segmenter = self.gazetteer.segmenter = Segmenter(user_words)
        examples = [e for path in sorted(folder.glob("examples*.jsonl")) for e in load_examples(path)
                    if e.category in city.categories and e.appeal_type in city.appeal_types]
        self.text_model = TextModel(Featurizer(keyword_index), examples, self.segmenter.tokenize)

    def classify(self, text: str, sender: str | None) -> Classification:
        normal = normalize(text[:READ_LIMIT])
        tokens = self.segmenter.tokenize(normal)
        resident = self.city.resident_by_phone(sender) if sender else None
        location = self.gazetteer.locate(normal, resident.grid_code if resident else None, tokens)
        prediction = self.text_model.predict(normal, tokens)
        category, confidence = prediction.categories[0]
        department = self.department(category, location.grid)
        suggestions: tuple[Suggestion, ...] = ()
        if confidence < self.settings.classifier_threshold:
            suggestions = tuple(Suggestion(c, self.department(c, location.grid), round(p, 3))
                                for c, p in prediction.categories[:SUGGESTIONS])
            department = self.settings.triage_department
        return Classification(category=category, appeal_type=prediction.appeal_type, department=department,
                              grid=location.grid, place=location.place, confidence=round(confidence, 3),
                              suggestions=suggestions, grid_candidates=location.candidates)

    def department(self, category: str, grid: str | None) -> str:
        """The category's default department, unless a routing override covers the grid's area."""
        if grid is not None:
            for override in self.settings.routing_overrides:
                if override.category == category and _inside(self.city, grid, override.area):
                    return override.department
        return self.city.categories[category].department_code


def _inside(city: City, grid: str, area: str) -> bool:
    """`area` is a grid code (its whole subtree) or, failing that, a code prefix."""
    return city.within(grid, area) if area in city.grids else grid.startswith(area)
