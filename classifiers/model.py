"""The appeal classifier: text model + gazetteer + department routing + triage.

Built once at start-up from the city folder and `config/classifier/` (labelled examples and
keyword lists), so a new city brings its own taxonomy, gazetteer and examples without code changes.
The text model in service is the one promoted in the deployment's model registry
(classifiers/registry.py) if any, else one trained at start-up from the shipped examples.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from classifiers import Classification, Suggestion
from classifiers.gazetteer import Gazetteer
from classifiers.normalize import normalize
from classifiers.registry import Registry
from classifiers.segment import Segmenter
from classifiers.text_model import TRAINING, Example, Featurizer, PhraseIndex, TextModel, Tokens, load_examples
from gateway.config import Settings
from gateway.domain.city import City

log = logging.getLogger(__name__)

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
        self.featurizer = Featurizer(keyword_index)
        self.examples = [e for path in sorted(folder.glob("examples*.jsonl")) for e in load_examples(path)
                         if e.category in city.categories and e.appeal_type in city.appeal_types]
        # A saved model's weights only mean something with the same features: same keywords, same
        # segmenter dictionary, same taxonomy, same featurizer (TRAINING carries its version).
        self.fingerprint = hashlib.sha256("\n".join([
            TRAINING, json.dumps(keywords, sort_keys=True, ensure_ascii=False), *sorted(set(user_words)),
            *sorted(city.categories), *sorted(city.appeal_types)]).encode()).hexdigest()[:16]
        self.registry = Registry.at(settings.home)
        self._shipped: TextModel | None = None
        self._stamp = self.registry.stamp()
        self.version, self.text_model = self._in_service()

    def _in_service(self) -> tuple[str, TextModel]:
        """The promoted model if one is in service and fits this configuration, else the shipped one."""
        version = self.registry.current()
        if version is not None:
            try:
                return version, self.load(version)
            except (OSError, ValueError, KeyError) as error:
                log.warning("model %s cannot serve (%s); using the shipped examples", version, error)
        if self._shipped is None:
            self._shipped = self._shipped_model()
        return "shipped", self._shipped

    def _shipped_model(self) -> TextModel:
        """Trained from the shipped examples once per configuration and machine user, then read back
        from the user's cache folder (as jieba caches its dictionary): training takes ~1 s on a quiet
        machine and far more on a busy one, reading ~0.05 s; cold start must stay under 3 s."""
        digest = hashlib.sha256(f"{self.fingerprint}\n".encode())
        for example in self.examples:
            digest.update(f"{example.text}\t{example.category}\t{example.appeal_type}\n".encode())
        path = _cache_dir() / f"shipped-{digest.hexdigest()[:16]}.npz"
        try:
            return TextModel.load(path, self.featurizer)[0]
        except (OSError, ValueError, KeyError):
            pass
        model = self.train(())
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            staging = path.with_suffix(f".{os.getpid()}.tmp")
            model.save(staging, fingerprint=self.fingerprint, corrections="0", examples=str(len(self.examples)))
            os.replace(staging, path)
        except OSError as error:  # a read-only cache folder only costs the next start its training time
            log.warning("cannot keep the shipped model in %s: %s", path.parent, error)
        return model

    def train(self, corrections: Sequence[Example]) -> TextModel:
        """A text model from the shipped examples plus `corrections` (the triage desk's labels)."""
        known = [e for e in corrections if e.category in self.city.categories
                 and (e.appeal_type is None or e.appeal_type in self.city.appeal_types)]
        return TextModel.train(self.featurizer, [*self.examples, *known], self.segmenter.tokenize)

    def save(self, model: TextModel, version: str, corrections: int) -> Path:
        path = self.registry.path(version)
        path.parent.mkdir(parents=True, exist_ok=True)
        model.save(path, fingerprint=self.fingerprint, corrections=str(corrections),
                   examples=str(len(self.examples)))
        return path

    def load(self, version: str) -> TextModel:
        model, meta = TextModel.load(self.registry.path(version), self.featurizer)
        if meta.get("fingerprint") != self.fingerprint:
            raise ValueError("trained with other keywords, places, taxonomy or features: run `gridline train` again")
        return model

    def refresh(self) -> bool:
        """Pick up a model promoted or rolled back since the last look; True when it changed.
        Workers call this between jobs: a stat of the registry's `current` pointer."""
        stamp = self.registry.stamp()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        version, model = self._in_service()
        changed = version != self.version
        if changed:
            log.info("classifier model %s -> %s", self.version, version)
        self.version, self.text_model = version, model
        return changed

    def using(self, model: TextModel, version: str) -> AppealClassifier:
        """This classifier with another text model (for side-by-side comparisons)."""
        twin = copy.copy(self)
        twin.text_model, twin.version = model, version
        return twin

    def read(self, text: str) -> tuple[str, Tokens]:
        """What the classifier reads of an appeal: its first READ_LIMIT characters, normalised, and
        their tokens (what and where come early, so the cost per appeal is bounded)."""
        normal = normalize(text[:READ_LIMIT])
        return normal, self.segmenter.tokenize(normal)

    def classify(self, text: str, sender: str | None) -> Classification:
        normal, tokens = self.read(text)
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


def _cache_dir() -> Path:
    """The user's private cache folder (XDG), not the shared temp folder: a model file decides routes."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gridline"


def _inside(city: City, grid: str, area: str) -> bool:
    """`area` is a grid code (its whole subtree) or, failing that, a code prefix."""
    return city.within(grid, area) if area in city.grids else grid.startswith(area)
