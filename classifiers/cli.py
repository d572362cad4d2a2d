"""`gridline classify` and `gridline eval`: the classifier on JSON lines, and its scorecard.

The argparse wiring lives in gateway/cli.py; these functions take the settings and streams.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TextIO

from classifiers import Classification, build_classifier
from gateway.config import Settings
from gateway.domain.city import load_city

FIELDS = ("category", "appeal_type", "department", "grid")
CONFUSED_PAIRS = 5


def _output(result: Classification) -> dict:
    return {"category": result.category, "appeal_type": result.appeal_type, "department": result.department,
            "grid": result.grid, "place": result.place, "confidence": result.confidence}


def classify_stream(settings: Settings, lines: Iterable[str], out: TextIO) -> None:
    """One JSON object `{"text", "sender"}` per input line -> one result line, in the same order."""
    classifier = build_classifier(load_city(settings.city_dir), settings)
    for line in lines:
        if not line.strip():
            continue
        appeal = json.loads(line)
        result = classifier.classify(appeal["text"], appeal.get("sender"))
        out.write(json.dumps(_output(result), ensure_ascii=False) + "\n")
        out.flush()


def evaluate_file(settings: Settings, path: Path, out: TextIO) -> dict:
    """Score a labelled JSON-lines file (the format of appeals-dev.jsonl) and print a report."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    classifier = build_classifier(load_city(settings.city_dir), settings)
    classifier.classify(rows[0]["text"], rows[0].get("sender"))  # warm-up
    started = time.perf_counter()
    results = [classifier.classify(row["text"], row.get("sender")) for row in rows]
    elapsed = time.perf_counter() - started
    expected = [row["expected"] for row in rows]

    accuracy = {f: sum(getattr(r, f) == e[f] for r, e in zip(results, expected, strict=True)) / len(rows)
                for f in FIELDS}
    macro_f1 = {f: _macro_f1([e[f] for e in expected], [getattr(r, f) for r in results])
                for f in ("category", "appeal_type")}
    confused = Counter((e["category"], r.category) for r, e in zip(results, expected, strict=True)
                       if r.category != e["category"])
    triaged = sum(r.department == settings.triage_department and e["department"] != settings.triage_department
                  for r, e in zip(results, expected, strict=True))
    report = {
        "appeals": len(rows),
        "accuracy": accuracy,
        "macro_f1": macro_f1,
        "confused_categories": [{"expected": a, "got": b, "count": n}
                                for (a, b), n in confused.most_common(CONFUSED_PAIRS)],
        "sent_to_triage": triaged,
        "appeals_per_second": len(rows) / elapsed,
    }
    _print_report(report, path, out)
    return report


def _macro_f1(truth: Sequence[str | None], predicted: Sequence[str | None]) -> float:
    """Mean over the true labels of the per-label F1 score."""
    scores = []
    for label in sorted(set(truth), key=str):
        tp = sum(t == label and p == label for t, p in zip(truth, predicted, strict=True))
        fp = sum(t != label and p == label for t, p in zip(truth, predicted, strict=True))
        fn = sum(t == label and p != label for t, p in zip(truth, predicted, strict=True))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores)


def _print_report(report: dict, path: Path, out: TextIO) -> None:
    print(f"{path}: {report['appeals']} appeals", file=out)
    for field, value in report["accuracy"].items():
        f1 = report["macro_f1"].get(field)
        print(f"  {field:<12} accuracy {value:6.1%}" + (f"   macro-F1 {f1:.3f}" if f1 is not None else ""),
              file=out)
    print(f"  sent to triage (wrongly) {report['sent_to_triage']}", file=out)
    print("  most confused categories (expected -> got):", file=out)
    for pair in report["confused_categories"]:
        print(f"    {pair['expected']} -> {pair['got']}: {pair['count']}", file=out)
    print(f"  throughput {report['appeals_per_second']:,.0f} appeals/s (one process, after warm-up)", file=out)
