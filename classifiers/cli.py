"""`gridline classify` and `gridline eval`: the classifier on JSON lines, and its scorecard.

The argparse wiring lives in gateway/cli.py; these functions take the settings and streams. A
person's mistake (a missing file, a file without labels, a line that is not JSON) raises
`InputError`, which the command prints as one line and exit code 2.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TextIO

from classifiers import Classification, Classifier, build_classifier
from gateway.config import Settings
from gateway.domain.city import load_city

FIELDS = ("category", "appeal_type", "department", "grid")
F1_FIELDS = ("category", "appeal_type")
CONFUSED_PAIRS = 5

CLASSIFY_FORMAT = """\
Input (stdin): one JSON object a line, {"text": "...", "sender": "+86..." or null}; blank lines
are skipped. Output (stdout): one JSON object a line, in the same order: category, appeal_type,
department, grid, place, confidence."""

EVAL_FORMAT = """\
FILE: JSON lines, one labelled appeal a line (the format of config/classifier/examples.jsonl):
  {"text": "...", "sender": "+86..." or null, "voice": "english" (optional),
   "expected": {"category": ..., "appeal_type": ..., "department": ..., "grid": ...}}
A field missing from "expected" is not scored. With "voice" tags the report adds a table by
voice. --compare scores the current and the candidate model side by side."""


class InputError(Exception):
    """A person's mistake in what they gave a command: reported in one line, exit code 2."""


def _output(result: Classification) -> dict:
    return {"category": result.category, "appeal_type": result.appeal_type, "department": result.department,
            "grid": result.grid, "place": result.place, "confidence": result.confidence}


def classify_stream(settings: Settings, lines: Iterable[str], out: TextIO,
                    classifier: Classifier | None = None) -> None:
    """One JSON object `{"text", "sender"}` per input line -> one result line, in the same order."""
    classifier = classifier or build_classifier(load_city(settings.city_dir), settings)
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            appeal = json.loads(line)
            text, sender = appeal["text"], appeal.get("sender")
        except (json.JSONDecodeError, TypeError, KeyError, AttributeError):
            raise InputError(f"line {number}: not a JSON object with a \"text\" field") from None
        result = classifier.classify(text, sender)
        out.write(json.dumps(_output(result), ensure_ascii=False) + "\n")
        out.flush()


def read_labelled(path: Path) -> list[dict]:
    """The rows of a labelled JSON-lines file, checked enough to score them."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise InputError(f"{path}:{number}: not JSON") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise InputError(f"{path}:{number}: a row needs a \"text\"")
        if not isinstance(row.get("expected"), dict) or not any(f in row["expected"] for f in FIELDS):
            raise InputError(f"{path}:{number}: no labels (\"expected\" with category, appeal_type, department "
                             "or grid)")
        rows.append(row)
    if not rows:
        raise InputError(f"{path}: no appeals")
    return rows


def score(rows: Sequence[dict], results: Sequence[Classification], triage_department: str) -> dict:
    """Accuracy per field (over the rows labelled with it), macro-F1, confusions, wrongly triaged."""
    accuracy: dict[str, float] = {}
    macro_f1: dict[str, float] = {}
    for field in FIELDS:
        pairs = [(row["expected"][field], getattr(result, field)) for row, result in zip(rows, results, strict=True)
                 if field in row["expected"]]
        if pairs:
            accuracy[field] = sum(e == g for e, g in pairs) / len(pairs)
            if field in F1_FIELDS:
                macro_f1[field] = _macro_f1([e for e, _ in pairs], [g for _, g in pairs])
    confused = Counter((row["expected"]["category"], result.category) for row, result in zip(rows, results, strict=True)
                       if "category" in row["expected"] and result.category != row["expected"]["category"])
    triaged = sum(result.department == triage_department and row["expected"].get("department") != triage_department
                  for row, result in zip(rows, results, strict=True))
    return {"appeals": len(rows), "accuracy": accuracy, "macro_f1": macro_f1,
            "confused_categories": [{"expected": a, "got": b, "count": n}
                                    for (a, b), n in confused.most_common(CONFUSED_PAIRS)],
            "sent_to_triage": triaged}


def evaluate_file(settings: Settings, path: Path, out: TextIO, classifier: Classifier | None = None) -> dict:
    """Score a labelled JSON-lines file (the format of config/classifier/examples-dev.jsonl) and print a report."""
    rows = read_labelled(path)
    classifier = classifier or build_classifier(load_city(settings.city_dir), settings)
    classifier.classify(rows[0]["text"], rows[0].get("sender"))  # warm-up
    started = time.perf_counter()
    results = [classifier.classify(row["text"], row.get("sender")) for row in rows]
    elapsed = time.perf_counter() - started
    report = score(rows, results, settings.triage_department)
    report["appeals_per_second"] = len(rows) / elapsed
    report["by_voice"] = by_voice(rows, results, settings.triage_department)
    print_report(report, path, out)
    return report


def by_voice(rows: Sequence[dict], results: Sequence[Classification], triage_department: str) -> dict[str, dict]:
    """The scorecard of each voice tag (elderly, english, ...), for files that have them."""
    groups: dict[str, list[int]] = defaultdict(list)
    for index, row in enumerate(rows):
        if row.get("voice"):
            groups[row["voice"]].append(index)
    return {voice: score([rows[i] for i in found], [results[i] for i in found], triage_department)
            for voice, found in sorted(groups.items())}


def compare_file(settings: Settings, path: Path, out: TextIO, current: Classifier, candidate: Classifier) -> dict:
    """Score two models on one labelled file and print their figures side by side."""
    rows = read_labelled(path)
    reports = {}
    for name, classifier in (("current", current), ("candidate", candidate)):
        results = [classifier.classify(row["text"], row.get("sender")) for row in rows]
        reports[name] = score(rows, results, settings.triage_department)
    print(f"{path}: {len(rows)} appeals", file=out)
    print(f"  {'':<24} {'current':>9} {'candidate':>9}", file=out)
    for field in reports["current"]["accuracy"]:
        print(f"  {field + ' accuracy':<24} {reports['current']['accuracy'][field]:>9.1%} "
              f"{reports['candidate']['accuracy'][field]:>9.1%}", file=out)
    for field in reports["current"]["macro_f1"]:
        print(f"  {field + ' macro-F1':<24} {reports['current']['macro_f1'][field]:>9.3f} "
              f"{reports['candidate']['macro_f1'][field]:>9.3f}", file=out)
    print(f"  {'sent to triage (wrongly)':<24} {reports['current']['sent_to_triage']:>9} "
          f"{reports['candidate']['sent_to_triage']:>9}", file=out)
    return reports


def _macro_f1(truth: Sequence[str | None], predicted: Sequence[str | None]) -> float:
    """Mean over the true labels of the per-label F1 score."""
    scores = []
    for label in sorted(set(truth), key=str):
        tp = sum(t == label and p == label for t, p in zip(truth, predicted, strict=True))
        fp = sum(t != label and p == label for t, p in zip(truth, predicted, strict=True))
        fn = sum(t == label and p != label for t, p in zip(truth, predicted, strict=True))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores)


def print_report(report: dict, path: Path, out: TextIO) -> None:
    """`gridline eval`'s report; the throughput line only where the report was timed."""
    print(f"{path}: {report['appeals']} appeals", file=out)
    for field, value in report["accuracy"].items():
        f1 = report["macro_f1"].get(field)
        print(f"  {field:<12} accuracy {value:6.1%}" + (f"   macro-F1 {f1:.3f}" if f1 is not None else ""),
              file=out)
    print(f"  sent to triage (wrongly) {report['sent_to_triage']}", file=out)
    print("  most confused categories (expected -> got):", file=out)
    for pair in report["confused_categories"]:
        print(f"    {pair['expected']} -> {pair['got']}: {pair['count']}", file=out)
    if report["by_voice"]:
        print(f"  by voice: {'n':>4} {'category':>9} {'type':>6} {'dept':>6} {'cat F1':>7} {'type F1':>8}", file=out)
        for voice, figures in report["by_voice"].items():
            accuracy, f1 = figures["accuracy"], figures["macro_f1"]
            print(f"  {voice:<12}{figures['appeals']:>4} {accuracy.get('category', 0):>9.1%} "
                  f"{accuracy.get('appeal_type', 0):>6.1%} {accuracy.get('department', 0):>6.1%} "
                  f"{f1.get('category', 0):>7.3f} {f1.get('appeal_type', 0):>8.3f}", file=out)
    if "appeals_per_second" in report:
        print(f"  throughput {report['appeals_per_second']:,.0f} appeals/s (one process, after warm-up)", file=out)
