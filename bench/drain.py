"""Drain: what it costs a worker to turn a stored appeal into a classified, routed case with its
acknowledgement and task alerts in the deliveries table — the work between the intake and the lanes.

Runs `pipeline.process_inbound` in this process on N stored appeals (texts from the classifier's
examples, each from its own phone), IDS_PER_JOB to a call as an rq job would, on a scratch SQLite
store. CPU time per appeal is what bounds the drain: two workers on two cores can do at most
2 / (CPU s per appeal) appeals a second, less what the web, intake and senders need meanwhile.
`--profile` prints where the time goes.

    .venv/bin/python bench/drain.py --appeals 2000 [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import random
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from sqlalchemy import insert

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from classifiers import build_classifier  # noqa: E402
from gateway import pipeline  # noqa: E402
from gateway.config import load_settings  # noqa: E402
from gateway.roles.jobs import IDS_PER_JOB  # noqa: E402
from gateway.roles.supervisor import prepare_store  # noqa: E402
from gateway.store import InboundRow, load_city_from_store, make_engine, session_factory, utcnow  # noqa: E402
from gateway.world import SMS, World  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--appeals", type=int, default=2000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="gridline-bench-drain-"))
    settings = replace(load_settings({}), home=home, config_dir=ROOT / "config")
    prepare_store(settings)
    sessions = session_factory(make_engine(settings.sqlalchemy_url))
    with (ROOT / "config" / "classifier" / "examples.jsonl").open() as examples:
        texts = [json.loads(line)["text"] for line in examples if line.strip()]
    rng = random.Random(3)
    with sessions() as session, session.begin():
        session.execute(insert(InboundRow), [
            {"channel": SMS, "provider_id": f"SM{n:032x}", "sender": f"+86199{n:08d}", "text": rng.choice(texts),
             "kind": "text", "payload": {}, "media": [], "received_at": utcnow()} for n in range(args.appeals)])
    with sessions() as session:
        city = load_city_from_store(session)
    world = World(settings, city, build_classifier(city, settings))
    world.classifier.classify("warm-up", None)

    profile = cProfile.Profile() if args.profile else None
    ids = list(range(1, args.appeals + 1))
    wall, cpu = time.perf_counter(), time.process_time()
    if profile:
        profile.enable()
    queued = 0
    for start in range(0, len(ids), IDS_PER_JOB):
        queued += len(pipeline.process_inbound(sessions, world, ids[start:start + IDS_PER_JOB]))
    if profile:
        profile.disable()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"{args.appeals:,} appeals → {queued:,} deliveries queued in {wall:.1f} s "
          f"({args.appeals / wall:,.0f} appeals/s on one core); CPU {cpu / args.appeals * 1000:.2f} ms per appeal "
          f"→ at most {2 * args.appeals / cpu:,.0f} appeals/s on two cores")
    if profile:
        pstats.Stats(profile).sort_stats("cumulative").print_stats(30)
    shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
