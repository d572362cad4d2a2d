"""k-fold cross-validation of the text model over its own training examples.

This is how the L2 penalties and the category scale in classifiers/text_model.py were chosen.
The held-out files (`config/classifier/holdout*.jsonl`) must not choose anything: a file that
tunes the model stops measuring how it does on appeals it has never seen.

    python -m classifiers.crossval [--folds 5]
    python -m classifiers.crossval --out-of-fold config/classifier/examples-dev.jsonl

The second form measures a labelled file that is also training data (the maintainers' dev set): each of
its appeals is classified, gazetteer and threshold included, by a model trained on every example outside
its fold of that file.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from classifiers.cli import InputError, by_voice, print_report, read_labelled, score
from classifiers.model import AppealClassifier
from classifiers.text_model import CATEGORY_L2, TYPE_L2, Example, TextModel
from gateway.config import Settings
from gateway.domain.city import load_city

PENALTIES = (0.0, 3e-4, 1e-3, 3e-3)
SCALES = tuple(round(0.5 * i, 1) for i in range(2, 21))  # 1.0 .. 10.0


@dataclass(frozen=True)
class Scores:
    category: float
    appeal_type: float  # over the examples that have a type
    truth: list[float]  # each example's out-of-fold probability of its true category
    probabilities: list[list[float]]  # ... and of every category


def fold_of(text: str, folds: int) -> int:
    """An example's fold, from a hash of its text: stable whatever the order or number of files."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") % folds


def cross_validate(classifier: AppealClassifier, examples: Sequence[Example], folds: int,
                   category_l2: float = CATEGORY_L2, type_l2: float = TYPE_L2, category_scale: float = 1.0,
                   ) -> Scores:
    """Accuracy over all examples, each predicted by a model trained on the other folds."""
    fold = [fold_of(e.text, folds) for e in examples]
    right_category = right_type = typed = 0
    truth, rows = [], []
    for k in range(folds):
        train = [e for e, f in zip(examples, fold, strict=True) if f != k]
        model = TextModel.train(classifier.featurizer, train, classifier.segmenter.tokenize,
                                category_l2, type_l2, category_scale)
        for example in (e for e, f in zip(examples, fold, strict=True) if f == k):
            prediction = model.predict(*classifier.read(example.text))
            truth.append(dict(prediction.categories).get(example.category, 0.0))
            rows.append([p for _, p in prediction.categories])
            right_category += prediction.categories[0][0] == example.category
            if example.appeal_type is not None:
                typed += 1
                right_type += prediction.appeal_type == example.appeal_type
    return Scores(right_category / len(examples), right_type / typed if typed else 0.0, truth, rows)


def out_of_fold(classifier: AppealClassifier, path: Path, folds: int, triage_department: str) -> dict:
    """`gridline eval`'s scorecard of a training file, each appeal classified by a model trained on
    every shipped example outside its fold of that file."""
    rows = read_labelled(path)
    own = {row["text"] for row in rows}
    others = [e for e in classifier.examples if e.text not in own]
    mine = [e for e in classifier.examples if e.text in own]
    results = [None] * len(rows)
    for k in range(folds):
        train = others + [e for e in mine if fold_of(e.text, folds) != k]
        model = TextModel.train(classifier.featurizer, train, classifier.segmenter.tokenize)
        twin = classifier.using(model, f"fold {k}")
        for index, row in enumerate(rows):
            if fold_of(row["text"], folds) == k:
                results[index] = twin.classify(row["text"], row.get("sender"))
    report = score(rows, results, triage_department)
    report["by_voice"] = by_voice(rows, results, triage_department)
    return report


def log_loss(truth: Sequence[float], rows: Sequence[Sequence[float]], scale: float) -> float:
    """Mean negative log probability of the true labels once every logit is multiplied by `scale`
    (softmax(s·z) ∝ p^s, so the probabilities suffice)."""
    losses = []
    for p_true, row in zip(truth, rows, strict=True):
        powered = np.asarray(row, dtype=float) ** scale
        losses.append(-np.log(max(p_true ** scale / powered.sum(), 1e-12)))
    return float(np.mean(losses))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--out-of-fold", type=Path, metavar="FILE", help="score a training file out of fold")
    args = parser.parse_args()
    settings = Settings()
    classifier = AppealClassifier(load_city(settings.city_dir), settings)
    if args.out_of_fold:
        try:
            report = out_of_fold(classifier, args.out_of_fold, args.folds, settings.triage_department)
        except InputError as error:  # a person's mistake: one line, exit code 2
            parser.exit(2, f"crossval: {error}\n")
        print(f"{args.folds}-fold, out of fold:")
        print_report(report, args.out_of_fold, sys.stdout)
        return
    examples = classifier.examples
    print(f"{len(examples)} shipped examples, {args.folds}-fold")
    print("| category L2 | type L2 | category | appeal type |\n|---|---|---|---|")
    grid = {(c, TYPE_L2) for c in PENALTIES} | {(CATEGORY_L2, t) for t in PENALTIES}
    results = {}
    for category_l2, type_l2 in sorted(grid):
        results[category_l2, type_l2] = scores = cross_validate(classifier, examples, args.folds, category_l2, type_l2)
        print(f"| {category_l2:g} | {type_l2:g} | {scores.category:.1%} | {scores.appeal_type:.1%} |", flush=True)
    chosen = results[CATEGORY_L2, TYPE_L2]
    losses = {scale: log_loss(chosen.truth, chosen.probabilities, scale) for scale in SCALES}
    best = min(losses, key=losses.__getitem__)
    print(f"category scale with the least log loss at L2 {CATEGORY_L2:g}: {best:g} "
          f"(log loss {losses[best]:.3f}; unscaled {losses[1.0]:.3f})")


if __name__ == "__main__":
    main()
