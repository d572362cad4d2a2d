"""Broadcasts end to end on a running `gridline up` of their own (signature set, no quiet hours,
SMS limited to 150/s so a notice to a few hundred takes long enough to pause): the HTTP API with
operator tokens, the CLI, the sandbox's record of every SMS, and Twilio's delivery reports."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import load_settings
from tests.conftest import ROOT, Stack, http_json, stack_environment, wait_for
from tests.test_sms_flow import CITY

SIGNATURE = "【测试网格中心】"


@contextlib.contextmanager
def running_stack(home: Path, **overrides: str) -> Iterator[Stack]:
    """`gridline up` in `home` with extra GRIDLINE_* settings, stopped afterwards."""
    env = stack_environment(home, **overrides)
    log_path = home / "gridline.log"
    with log_path.open("w") as log:
        process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "up"], env=env, cwd=ROOT,
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "Gridline is up" in log_path.read_text() or process.poll() is not None,
                 timeout=90, what="gridline up")
        if process.poll() is not None:
            raise RuntimeError("gridline up failed:\n" + log_path.read_text())
        yield Stack(load_settings(env), process, log_path, env)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


def sandbox_messages(stack: Stack) -> list[dict]:
    return http_json("GET", f"{stack.sandbox_url}/_sandbox/messages")[1]["messages"]


def marked(stack: Stack, marker: str) -> Counter[str]:
    """How many messages carrying `marker` each phone got."""
    return Counter(m["to"] for m in sandbox_messages(stack) if marker in m["body"])


@pytest.fixture(scope="module")
def bstack(tmp_path_factory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("broadcast-stack"), GRIDLINE_SMS_SIGNATURE=SIGNATURE,
                       GRIDLINE_QUIET_HOURS="", GRIDLINE_SMS_RATE_LIMIT="150",
                       GRIDLINE_SMS_RATE_UNIT="messages", GRIDLINE_TELEGRAM_RATE_LIMIT="0") as stack:
        yield stack


def token(stack: Stack, worker_id: str) -> dict[str, str]:
    issued = stack.gridline("operator", "token", worker_id)
    assert issued.returncode == 0, issued.stderr
    return {"Authorization": f"Bearer {issued.stdout.strip()}"}


def officer(role: str, grid: str) -> str:
    return next(w.id for w in CITY.workers.values() if w.role == role and w.grid_code == grid)


def status(stack: Stack, broadcast_id: int, headers: dict[str, str]) -> dict:
    code, view = http_json("GET", f"{stack.url}/api/broadcasts/{broadcast_id}", headers=headers)
    assert code == 200, view
    return view


def test_an_officer_sends_a_notice_over_http_and_each_resident_gets_it_once(bstack):
    headers = token(bstack, officer("community_officer", "QH-DH-01"))
    texts = {"zh": "{name}您好：明天高温，请减少外出。网格员{worker_name}，电话{worker_phone}（{grid}）",
             "en": "Dear {name}, a heat wave is coming. Your grid worker {worker_name}: {worker_phone} ({grid})"}
    body = {"title": "heat", "audience": "grid:QH-DH-01 and (tag:elderly or language:en)", "texts": texts}
    code, created = http_json("POST", f"{bstack.url}/api/broadcasts", body, headers)
    assert code == 201, created
    chosen = [r for r in CITY.residents.values()
              if r.grid_code.startswith("QH-DH-01-") and ("elderly" in r.tags or r.language == "en")]
    assert created["preview"]["recipients"] == len(chosen) and created["state"] == "created"

    code, sent = http_json("POST", f"{bstack.url}/api/broadcasts/{created['id']}/send", {}, headers)
    assert code == 200 and sent["state"] == "scheduled"
    wait_for(lambda: status(bstack, created["id"], headers)["state"] == "done", timeout=30, what="done")

    messages = sandbox_messages(bstack)
    bot = bstack.settings.telegram_tokens["resident"]
    for resident in chosen:
        text = texts[resident.language].format(**_fields(resident.grid_code, resident.name, resident.language))
        sms = [m["body"] for m in messages if m["to"] == resident.phone]
        if resident.telegram_chat_id:  # Telegram where linked, without the SMS signature
            chats = http_json("GET", f"{bstack.settings.telegram_base}/_sandbox/{bot}/messages"
                                     f"?chat_id={resident.telegram_chat_id}")[1]["messages"]
            assert ([c["text"] for c in chats], sms) == ([text], []), resident.id
        else:
            assert sms == [SIGNATURE + text], resident.id
    assert any(r.telegram_chat_id for r in chosen) and not all(r.telegram_chat_id for r in chosen)
    on_sms = sum(not r.telegram_chat_id for r in chosen)  # Telegram sends no delivery reports
    final = wait_for(lambda: (v := status(bstack, created["id"], headers))["delivered"] == on_sms and v,
                     timeout=20, what="delivery reports")
    assert final["sent"] == len(chosen) and final["failed"] == 0 and final["remaining"] == 0


def _fields(grid_code: str, name: str, language: str) -> dict[str, str]:
    worker = next(w for w in CITY.workers.values() if w.role == "grid_worker" and w.grid_code == grid_code)
    grid = CITY.grids[grid_code]
    return {"name": name, "worker_name": worker.name, "worker_phone": worker.phone,
            "grid": grid.name_en if language == "en" else grid.name}


def test_an_audience_outside_the_jurisdiction_is_refused(bstack):
    headers = token(bstack, officer("community_officer", "QH-DH-01"))
    body = {"audience": "tag:elderly", "texts": {"zh": "x"}}
    code, refused = http_json("POST", f"{bstack.url}/api/broadcasts", body, headers)
    assert code == 403 and "outside your jurisdiction (QH-DH-01)" in refused["error"]
    code, bad = http_json("POST", f"{bstack.url}/api/broadcasts/preview",
                          {"audience": "tag:eldery and grid:QH-DH-01", "texts": {"zh": "x"}}, headers)
    assert code == 400 and "unknown tag 'eldery'" in bad["error"]

    theirs = token(bstack, officer("street_officer", "QH-XS"))
    code, created = http_json("POST", f"{bstack.url}/api/broadcasts",
                              {"audience": "grid:QH-XS-01", "texts": {"zh": "x"}}, theirs)
    assert code == 201
    assert http_json("GET", f"{bstack.url}/api/broadcasts/{created['id']}", headers=headers)[0] == 404
    water = next(w.id for w in CITY.workers.values() if w.department_code == "WATER")
    assert http_json("POST", f"{bstack.url}/api/broadcasts", body, token(bstack, water))[0] == 403


def cli_json(stack: Stack, *args: str) -> dict:
    done = stack.gridline("broadcast", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def sent_through_the_lane(stack: Stack, marker: str) -> None:
    """A small notice sent after whatever came before it in the SMS lane: once it is done, so is
    every send that was already under way, and nothing held back has gone meanwhile."""
    created = cli_json(stack, "create", "--audience", "grid:QH-DH-01-01 and channel:sms", "--text", f"zh={marker}您好")
    cli_json(stack, "send", str(created["id"]))
    wait_for(lambda: cli_json(stack, "status", str(created["id"]))["state"] == "done", timeout=30, what=marker)
    assert sum(marked(stack, marker).values()) == created["preview"]["recipients"] > 0


def test_pause_resume_and_cancel_from_the_cli(bstack):
    audience = "(grid:QH-NM or grid:QH-BY) and channel:sms"  # SMS only: the sandbox counts them
    chosen = {r.phone for r in CITY.residents.values()
              if r.grid_code.startswith(("QH-NM-", "QH-BY-")) and not r.telegram_chat_id}
    created = cli_json(bstack, "create", "--audience", audience, "--text", "zh=[pause-test]{name}您好")
    assert created["preview"]["recipients"] == len(chosen) > 400
    number = str(created["id"])
    cli_json(bstack, "send", number)
    wait_for(lambda: sum(marked(bstack, "[pause-test]").values()) > 100, timeout=20, what="sending")
    assert cli_json(bstack, "pause", number)["state"] == "paused"
    sent_through_the_lane(bstack, "[marker-1]")  # a chunk claimed before the pause has finished
    paused_at = sum(marked(bstack, "[pause-test]").values())
    sent_through_the_lane(bstack, "[marker-2]")
    assert sum(marked(bstack, "[pause-test]").values()) == paused_at < len(chosen)
    assert cli_json(bstack, "resume", number)["state"] == "sending"
    wait_for(lambda: cli_json(bstack, "status", number)["state"] == "done", timeout=30, what="done")
    got = marked(bstack, "[pause-test]")
    assert set(got) == chosen and set(got.values()) == {1}

    created = cli_json(bstack, "create", "--audience", "(grid:QH-XS or grid:QH-LT) and channel:sms",
                       "--text", "zh=[cancel-test]{name}您好")
    number = str(created["id"])
    cli_json(bstack, "send", number)
    wait_for(lambda: sum(marked(bstack, "[cancel-test]").values()) > 50, timeout=20, what="sending")
    view = cli_json(bstack, "cancel", number)
    assert view["state"] == "cancelled" and view["cancelled"] > 0
    sent_through_the_lane(bstack, "[marker-3]")
    sent = marked(bstack, "[cancel-test]")
    sent_through_the_lane(bstack, "[marker-4]")
    assert marked(bstack, "[cancel-test]") == sent and set(sent.values()) == {1}
    assert cli_json(bstack, "status", number)["cancelled"] + sum(sent.values()) == created["preview"]["recipients"]
    assert bstack.gridline("broadcast", "resume", number).returncode == 1  # cancelled is final


def test_status_callbacks_are_signed_and_checked(bstack):
    query = urllib.parse.urlencode({"delivery": "1"})
    code, refused = http_json("POST", f"{bstack.url}/webhooks/twilio/broadcast-status?{query}")
    assert code in (403, 415)
