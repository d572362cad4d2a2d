"""Benchmark of the appeal classifier: cold start and warm throughput on one core.

Cold start runs in fresh interpreters: imports, city load, classifier build (jieba dictionary and
model training included) and the first classification. Throughput pins this process to one core
and classifies the labelled dev set over and over after a warm-up pass; then, by length, appeals
made by joining dev-set appeals up to 70, 200, 500, 1,000 and 3,000 characters (the classifier
reads at most `READ_LIMIT` characters, so the cost per appeal stops growing).

    .venv/bin/python bench/classify.py [--config DIR] [--seconds 5] [--rounds 5] [--cold-runs 3]

Goals (issue 3): cold start < 3 s, >= 3,000 appeals/s. The script reports; it does not fail.
Rates are appeals per second of this process's CPU time (time.process_time), which a machine busy
with other work does not distort the way wall-clock time is; cold start is given both ways.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEV_SET = ROOT / "config" / "classifier" / "examples-dev.jsonl"
COLD_GOAL_S = 3.0
THROUGHPUT_GOAL = 3000

COLD_START = """
import time
started, cpu = time.perf_counter(), time.process_time()
from pathlib import Path
from classifiers import build_classifier
from gateway.domain.city import load_city
from gateway.config import Settings
settings = Settings(config_dir=Path({config!r}))
classifier = build_classifier(load_city(settings.city_dir), settings)
classifier.classify("门口的垃圾桶满了，三天没人清运", None)
print(time.perf_counter() - started, time.process_time() - cpu)
"""


def cold_start(config: Path) -> tuple[float, float, float]:
    """(seconds inside the interpreter, its CPU seconds, seconds of the whole process) for one fresh start."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", COLD_START.format(config=str(config))], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    inside, cpu = (float(v) for v in done.stdout.strip().splitlines()[-1].split())
    return inside, cpu, time.perf_counter() - started


def throughput(config: Path, seconds: float, rounds: int) -> tuple[list[float], int]:
    """Appeals per CPU second in each of `rounds` rounds (the machine's speed drifts between rounds
    by up to a third, so the median is the figure), and how many appeals were classified."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    sys.path.insert(0, str(ROOT))
    from classifiers import build_classifier
    from gateway.config import Settings
    from gateway.domain.city import load_city

    settings = Settings(config_dir=config)
    classifier = build_classifier(load_city(settings.city_dir), settings)
    appeals = [json.loads(line) for line in DEV_SET.read_text(encoding="utf-8").splitlines() if line.strip()]
    for appeal in appeals:  # warm-up
        classifier.classify(appeal["text"], appeal["sender"])
    rates, total = [], 0
    for _ in range(rounds):
        count, started = 0, time.process_time()
        while time.process_time() - started < seconds / rounds:
            for appeal in appeals:
                classifier.classify(appeal["text"], appeal["sender"])
            count += len(appeals)
        rates.append(count / (time.process_time() - started))
        total += count
    return rates, total


LENGTHS = (70, 200, 500, 1000, 3000)


def by_length(config: Path, seconds: float) -> list[tuple[int, float]]:
    """(length, appeals/s) for appeals of about each length in LENGTHS, one core."""
    from classifiers import build_classifier
    from gateway.config import Settings
    from gateway.domain.city import load_city

    settings = Settings(config_dir=config)
    classifier = build_classifier(load_city(settings.city_dir), settings)
    texts = [json.loads(line)["text"] for line in DEV_SET.read_text(encoding="utf-8").splitlines() if line.strip()]
    figures = []
    for length in LENGTHS:
        appeals, start = [], 0
        for _ in range(50):
            text = ""
            while len(text) < length:
                text += texts[start % len(texts)]
                start += 1
            appeals.append(text[:length])
        for text in appeals:
            classifier.classify(text, None)
        count, started = 0, time.process_time()
        while time.process_time() - started < seconds / len(LENGTHS):
            for text in appeals:
                classifier.classify(text, None)
            count += len(appeals)
        figures.append((length, count / (time.process_time() - started)))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "config")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--cold-runs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5, help="throughput rounds within --seconds")
    args = parser.parse_args()
    config = args.config.resolve()
    colds = [cold_start(config) for _ in range(args.cold_runs)]
    inside = min(c[0] for c in colds)
    cpu = min(c[1] for c in colds)
    process = min(c[2] for c in colds)
    rates, count = throughput(config, args.seconds, args.rounds)
    rate = statistics.median(rates)
    rows = [
        ("cold start, import to first result", f"{inside:.2f} s", f"< {COLD_GOAL_S:.0f} s", inside < COLD_GOAL_S),
        ("cold start, whole process", f"{process:.2f} s", f"< {COLD_GOAL_S:.0f} s", process < COLD_GOAL_S),
        ("cold start, CPU time to first result", f"{cpu:.2f} s", f"< {COLD_GOAL_S:.0f} s", cpu < COLD_GOAL_S),
        (f"warm throughput, per CPU second, median of {len(rates)}", f"{rate:,.0f}/s", f">= {THROUGHPUT_GOAL:,}/s",
         rate >= THROUGHPUT_GOAL),
    ]
    print(f"{'measure':<42} {'value':>10} {'goal':>12}  ok")
    for name, value, goal, ok in rows:
        print(f"{name:<42} {value:>10} {goal:>12}  {'yes' if ok else 'NO'}")
    print(f"(throughput rounds {min(rates):,.0f}-{max(rates):,.0f}/s over {count:,} appeals; "
          f"best of {args.cold_runs} cold starts; jieba's dictionary cache in the temp dir was "
          f"{'present' if any(Path('/tmp').glob('jieba*.cache')) else 'absent'})")
    print(f"\n{'characters':>10} {'appeals/s':>10}  (per CPU second)")
    for length, rate in by_length(config, args.seconds):
        print(f"{length:>10,} {rate:>10,.0f}")


if __name__ == "__main__":
    main()
