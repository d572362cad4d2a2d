"""The confidence threshold: threshold -> share routed automatically -> department accuracy on those.

Runs the classifier with no threshold over labelled files it never trained on (default: both
voice-tagged held-out files, config/classifier/holdout*.jsonl, together) and
prints the table and the threshold `classifiers.calibration.choose` picks
(GRIDLINE_CLASSIFIER_THRESHOLD's default).

    .venv/bin/python bench/calibration.py [FILE.jsonl ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from classifiers import build_classifier  # noqa: E402
from classifiers.calibration import MAX_TRIAGE, TARGET_ACCURACY, choose, table  # noqa: E402
from gateway.config import Settings  # noqa: E402
from gateway.domain.city import load_city  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    held_out = ROOT / "config" / "classifier"
    parser.add_argument("files", nargs="*", type=Path,
                        default=sorted(held_out.glob("holdout*.jsonl")))
    args = parser.parse_args()
    settings = replace(Settings(config_dir=ROOT / "config"), classifier_threshold=0.0)
    classifier = build_classifier(load_city(settings.city_dir), settings)
    confidences, correct = [], []
    for path in args.files:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                result = classifier.classify(row["text"], row.get("sender"))
                confidences.append(result.confidence)
                correct.append(result.department == row["expected"]["department"])
    rows = table(confidences, correct)
    print(f"{len(correct)} appeals from {', '.join(p.name for p in args.files)}; "
          f"department accuracy with no threshold {sum(correct) / len(correct):.1%}")
    print("| threshold | routed automatically | to triage | department right, of the routed "
          "| routed to the right department, of all | routed to a wrong department, of all |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row.threshold:.2f} | {row.routed:.1%} | {1 - row.routed:.1%} | {row.accuracy:.1%} "
              f"| {row.routed * row.accuracy:.1%} | {row.routed * (1 - row.accuracy):.1%} |")
    chosen = choose(rows)
    print(f"chosen: {chosen.threshold:.2f} (target >= {TARGET_ACCURACY:.0%} correct with <= {MAX_TRIAGE:.0%} "
          f"to triage): {chosen.routed:.1%} routed, {chosen.accuracy:.1%} of them right")


if __name__ == "__main__":
    main()
