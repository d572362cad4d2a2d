"""The Prometheus endpoint of a running stack moves with traffic; JSON-lines logs keep the masking."""

from __future__ import annotations

import json
import logging
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from gateway.logs import REQUEST_ID, setup_logging
from tests.conftest import http_json, wait_for
from tests.test_sms_flow import SMS_PATH
from tests.twilio_client import inbound_form, post


def scrape(stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample on the endpoint: (name, sorted labels) → value."""
    url = f"http://127.0.0.1:{stack.settings.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, name: str, **labels: str) -> float:
    """The sum over the samples of `name` whose labels include `labels` (processes are summed already)."""
    return sum(v for (n, found), v in samples.items()
               if n == name and set(labels.items()) <= set(found))


def test_counters_move_with_traffic(stack):
    """An appeal whose acknowledgement meets one provider error (500), and a forged webhook."""
    before = wait_for(lambda: _try_scrape(stack), timeout=30, what="the metrics endpoint")
    assert http_json("POST", f"{stack.sandbox_url}/_sandbox/faults", {"status": 500, "count": 1})[0] == 200
    phone = "+8617199000777"
    form = inbound_form(phone, "翠湖花园3号楼门口垃圾三天没人清了", stack.settings)
    assert post(stack.settings, SMS_PATH, form).status == 200
    stack.wait_sent(phone, timeout=90)  # the first appeal of a session waits for the workers' warm-up
    refused = post(stack.settings, SMS_PATH, inbound_form("+8617199000778", "你好", stack.settings), signature="bad")
    assert refused.status == 403
    after = wait_for(lambda: (s := scrape(stack)) and value(s, "gridline_acknowledgement_seconds_count")
                     > value(before, "gridline_acknowledgement_seconds_count") and s,
                     what="the acknowledgement observed")

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("gridline_inbound_messages_total", channel="sms", outcome="stored") == 1
    assert moved("gridline_inbound_messages_total", channel="sms", outcome="refused_403") == 1
    assert moved("gridline_cases_opened_total") == 1 and moved("gridline_classifier_confidence_count") == 1
    assert moved("gridline_acknowledgement_seconds_count") == 1
    assert moved("gridline_provider_errors_total", channel="sms") == 1
    assert moved("gridline_sweeper_duty_seconds_count", duty="clock") >= 1
    assert value(after, "gridline_deliveries", channel="sms", state="sent") \
        + value(after, "gridline_deliveries", channel="sms", state="delivered") >= 1
    depths = {dict(labels)["queue"] for name, labels in after if name == "gridline_queue_depth"}
    assert {"inbound", "clock", "broadcast", "send:sms:urgent", "send:telegram-worker:bulk"} <= depths
    assert value(after, "gridline_oldest_pending_seconds", work="inbound") >= 0


def _try_scrape(stack):
    try:
        return scrape(stack)
    except OSError:
        return None


def test_json_lines_carry_the_request_id_and_keep_phones_masked(monkeypatch, capsys):
    monkeypatch.setenv("GRIDLINE_LOG_FORMAT", "json")
    setup_logging()
    token = REQUEST_ID.set("req-42")
    try:
        logging.getLogger("gateway.test").warning("appeal from %s", "+8617033259997")
    finally:
        REQUEST_ID.reset(token)
        logging.getLogger().handlers.clear()
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["message"] == "appeal from +86170****9997" and line["request_id"] == "req-42"
    assert line["level"] == "WARNING" and line["logger"] == "gateway.test"
