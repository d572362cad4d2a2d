"""Acknowledgement latency: how long a resident waits, under load, for the SMS that gives them a case number.

Starts `gridline up` in a scratch folder with Telegram's limits at their defaults (30 messages/s per
bot, 1 per chat: every appeal also makes task alerts on the workers' bot, which that limit holds
back), then sends signed Twilio webhooks at a steady rate, each from its own phone, with texts from
the classifier's examples (so they are classified, routed and alerted like real appeals). Latency
is measured per appeal from the webhook's 200 (the appeal is stored) to the moment the Twilio
sandbox accepted the acknowledgement, both on this machine's clock.

`--broadcast N` first creates N synthetic residents and starts one notice to all of them, so the
appeals compete with a broadcast in progress for the SMS lane and the CPU.

    .venv/bin/python bench/ack_latency.py                       # 100 appeals/s for 60 s
    .venv/bin/python bench/ack_latency.py --broadcast 100000    # the same during a broadcast
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters import twilio_sms  # noqa: E402
from bench.broadcast import TEXTS, synthetic_residents  # noqa: E402
from bench.inbound import free_port, wait_http  # noqa: E402
from broadcasts import service  # noqa: E402
from broadcasts.audience import GridTree  # noqa: E402
from gateway.config import load_settings  # noqa: E402
from gateway.roles.supervisor import prepare_store  # noqa: E402
from gateway.store import make_engine, session_factory, utcnow  # noqa: E402


def appeal_texts() -> list[str]:
    with (ROOT / "config" / "classifier" / "examples.jsonl").open() as examples:
        return [json.loads(line)["text"] for line in examples if line.strip()]


def sandbox_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=120) as response:
        return json.load(response)


async def drive(settings, rate: float, seconds: float, texts: list[str]) -> dict[str, float]:
    """Send rate × seconds appeals at a steady pace; the time each was answered 200, by sender."""
    url = f"{settings.base_url}/webhooks/twilio/sms"
    _, auth_token = settings.twilio_credentials
    answered: dict[str, float] = {}
    refused = 0
    rng = random.Random(7)

    async def one(session: aiohttp.ClientSession, n: int) -> None:
        nonlocal refused
        phone = f"+86199{n:08d}"
        form = {"MessageSid": f"SM{n:032x}", "AccountSid": settings.twilio_credentials[0], "From": phone,
                "To": settings.twilio_from_number, "Body": rng.choice(texts), "NumMedia": "0"}
        headers = {"X-Twilio-Signature": twilio_sms.sign(url, form, auth_token)}
        async with session.post(url, data=form, headers=headers) as response:
            await response.read()
            if response.status == 200:
                answered[phone] = time.time()
            else:
                refused += 1

    total = int(rate * seconds)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session:
        started = time.monotonic()
        tasks = []
        for n in range(total):
            delay = started + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(session, n)))
        await asyncio.gather(*tasks)
    if refused:
        print(f"  {refused} webhooks were refused", flush=True)
    return answered


def percentile(values: list[float], share: float) -> float:
    return sorted(values)[min(len(values) - 1, int(share * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=100.0, help="appeals per second")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--broadcast", type=int, default=0, help="residents a notice is sending to meanwhile")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sms-senders", type=int, default=2, help="sender processes of the SMS lane")
    parser.add_argument("--callbacks", choices=("all", "final", "none"), default="all",
                        help="delivery reports the Twilio sandbox posts")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (store, logs)")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="gridline-bench-ack-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDLINE_")}
    env.update({"GRIDLINE_HOME": str(home), "GRIDLINE_CONFIG_DIR": str(ROOT / "config"),
                "GRIDLINE_PORT": str(free_port()), "GRIDLINE_SANDBOX_PORT": str(free_port()),
                "GRIDLINE_TELEGRAM_SANDBOX_PORT": str(free_port()), "GRIDLINE_WORKERS": str(args.workers),
                "GRIDLINE_SMS_SENDERS": str(args.sms_senders),
                "GRIDLINE_QUIET_HOURS": "", "GRIDLINE_SMS_RATE_LIMIT": "0"})
    settings = load_settings(env)
    prepare_store(settings)
    if args.broadcast:
        print(f"store: {args.broadcast:,} synthetic residents ...", flush=True)
        synthetic_residents(settings, args.broadcast)
    stack = subprocess.Popen([sys.executable, "-m", "gateway.cli", "up"], cwd=ROOT, env=env,
                             stdout=(home / "gridline.log").open("w"), stderr=subprocess.STDOUT)
    try:
        wait_http(f"{settings.base_url}/healthz", timeout=120)
        time.sleep(5)  # the workers load the classifier after the gateway answers
        urllib.request.urlopen(urllib.request.Request(f"{settings.twilio_base}/_sandbox/callbacks",
                                                      json.dumps({"mode": args.callbacks}).encode(),
                                                      {"Content-Type": "application/json"}), timeout=10)
        if args.broadcast:
            sessions = session_factory(make_engine(settings.sqlalchemy_url))
            with sessions() as session, session.begin():
                tree = GridTree.load(session)
                broadcast = service.create(session, settings, tree, None, title="bench", expression="all",
                                           texts=TEXTS, emergency=False, now=utcnow())
                service.send(session, settings, tree, broadcast, None, utcnow())
            while sum(sandbox_json(f"{settings.twilio_base}/_sandbox/recipients").values()) < 2000:
                time.sleep(0.5)  # the notice is under way before the first appeal
            print("broadcast under way", flush=True)
        print(f"{args.rate:g} appeals/s for {args.seconds:g} s ...", flush=True)
        answered = asyncio.run(drive(settings, args.rate, args.seconds, appeal_texts()))
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            first = sandbox_json(f"{settings.twilio_base}/_sandbox/first-accepted")
            if all(phone in first for phone in answered):
                break
            time.sleep(1)
        latencies = [first[phone] - at for phone, at in answered.items() if phone in first]
        broadcast_sent = sum(n for phone, n in sandbox_json(f"{settings.twilio_base}/_sandbox/recipients").items()
                             if phone.startswith("+86171"))
    finally:
        stack.send_signal(signal.SIGTERM)
        stack.wait(120)
    print(f"\nappeals answered 200: {len(answered):,}; acknowledged: {len(latencies):,}")
    if args.broadcast:
        print(f"broadcast messages accepted by the end: {broadcast_sent:,}")
    if latencies:
        print(f"acknowledgement latency (webhook 200 → provider accepted): p50 {statistics.median(latencies):.3f} s, "
              f"p90 {percentile(latencies, 0.9):.3f} s, p99 {percentile(latencies, 0.99):.3f} s, "
              f"max {max(latencies):.3f} s")
    if args.keep:
        print(f"scratch folder kept: {home}")
    else:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
