"""Learning from the triage desk, end to end: before and after.

Half of a labelled file (every other appeal) goes through the real path as cases
(`cases.open_case`); those the desk would see, sent to triage or routed to a wrong department (they
bounce back), are settled with their true category and grid (`workflow.settle`, which stores each
settlement in `desk_labels`); with --all every case of that half is settled. Then `gridline
train`'s steps build a candidate from the shipped examples plus those labels, it is promoted, and
the running classifier picks it up with
`refresh()` as a worker would between jobs. The other half (never seen by the desk) and any extra
files are scored before and after. Everything happens in a temporary home (store and models).

    .venv/bin/python bench/desk.py [--labelled FILE.jsonl] [--also FILE.jsonl ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from classifiers import build_classifier  # noqa: E402
from classifiers.cli import read_labelled, score  # noqa: E402
from gateway.config import Settings  # noqa: E402
from gateway.domain import cases, desk, workflow  # noqa: E402
from gateway.domain.city import load_city  # noqa: E402
from gateway.store import import_city, make_engine, migrate, session_factory, utcnow  # noqa: E402
from gateway.world import SMS, World  # noqa: E402

FIELDS = ("category", "department", "appeal_type")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labelled", type=Path, default=ROOT / "config" / "classifier" / "holdout-4.jsonl")
    parser.add_argument("--also", type=Path, nargs="*", default=[ROOT / "config" / "classifier" / "holdout-3.jsonl"])
    parser.add_argument("--all", action="store_true", help="the desk settles every case of the half, not only "
                        "the triaged and misrouted ones")
    args = parser.parse_args()
    rows = read_labelled(args.labelled)
    settled, unseen = rows[0::2], rows[1::2]
    extra = {path.name: read_labelled(path) for path in args.also}

    with tempfile.TemporaryDirectory() as home:
        settings = replace(Settings(config_dir=ROOT / "config"), home=Path(home))
        city = load_city(settings.city_dir)
        classifier = build_classifier(city, settings)
        world = World(settings, city, classifier)
        engine = make_engine(settings.sqlalchemy_url)
        migrate(engine)
        sessions = session_factory(engine)

        def scorecards() -> dict[str, dict]:
            sets = {f"{args.labelled.name} (other half)": unseen, **extra}
            return {name: score(found, [classifier.classify(r["text"], r.get("sender")) for r in found],
                                settings.triage_department) for name, found in sets.items()}

        before = scorecards()
        with sessions() as session, session.begin():
            import_city(session, city)
            now = utcnow()
            for row in settled:
                verdict = classifier.classify(row["text"], row.get("sender"))
                case = cases.open_case(session, city=city, settings=settings, channel=SMS,
                                       reporter=row.get("sender") or "+8617000000000", text=row["text"],
                                       language=row.get("lang", "zh"), verdict=verdict, now=now)
                seen_by_desk = case.queue == "triage" or case.department != row["expected"]["department"]
                if not (seen_by_desk or args.all):
                    continue
                grid = row["expected"].get("grid")
                workflow.settle(session, world, case, "operator:bench", now, category=row["expected"]["category"],
                                grid=grid if grid in city.grids else None)
        with sessions() as session:
            corrections = desk.labelled_examples(session)
            changed = sum(e.category != p for e, p in zip(
                corrections, [classifier.classify(e.text, None).category for e in corrections], strict=True))
        version = classifier.registry.new_version()
        classifier.save(classifier.train(corrections), version, len(corrections))
        classifier.registry.set_candidate(version)
        classifier.registry.promote()
        assert classifier.refresh(), "the promoted model was not picked up"
        after = scorecards()

    print(f"{len(corrections)} desk labels from {args.labelled.name} (every other appeal"
          f"{'' if args.all else ', those sent to triage or misrouted'}), "
          f"{changed} of them different from the model's own answer")
    print("| file | field | before | after |")
    print("|---|---|---|---|")
    for name in before:
        for field in FIELDS:
            was, now = before[name]["accuracy"][field], after[name]["accuracy"][field]
            print(f"| {name} | {field} | {was:.1%} | {now:.1%} |")
        print(f"| {name} | sent to triage (wrongly) | {before[name]['sent_to_triage']} | "
              f"{after[name]['sent_to_triage']} |")


if __name__ == "__main__":
    main()
