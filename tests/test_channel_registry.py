"""The channel registry: which channels the settings make, which sandboxes the supervisor starts,
and the contract's layering (adapters/ imports nothing from the gateway)."""

from __future__ import annotations

import ast
import importlib
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.config import Settings, load_settings
from gateway.delivery.channels import REGISTRY, build_channels, phone_channels, sandboxes

ADAPTERS = Path(__file__).resolve().parent.parent / "adapters"


def test_every_channel_and_route_from_the_default_settings() -> None:
    channels = build_channels(Settings())
    assert sorted(channels) == ["sms", "telegram-resident", "telegram-worker"]  # HTTP is off without a secret
    routes = [(route.path, route.kind) for channel in channels.values() for route in channel.routes()]
    assert sorted(routes) == [("/webhooks/telegram/resident", "inbound"), ("/webhooks/telegram/worker", "inbound"),
                              ("/webhooks/twilio/broadcast-status", "status"), ("/webhooks/twilio/sms", "inbound"),
                              ("/webhooks/twilio/status", "status")]
    assert phone_channels(Settings()) == {"sms"}
    assert [s.name for s in sandboxes(Settings())] == ["twilio-sandbox", "telegram-sandbox"]


def test_the_http_channel_is_on_when_its_secret_is_set_and_its_sandbox_only_without_a_url() -> None:
    on = load_settings({"GRIDLINE_HTTP_SECRET": "s", "GRIDLINE_HTTP_SANDBOX_PORT": "9191"})
    http = build_channels(on)["http"]
    assert phone_channels(on) == {"sms", "http"}
    assert phone_channels(replace(on, http_phone_senders="0")) == {"sms"}  # an app whose users are not phones
    assert [(r.path, r.kind) for r in http.routes()] == [("/webhooks/http/inbound", "inbound"),
                                                         ("/webhooks/http/status", "status")]
    [sandbox] = [s for s in sandboxes(on) if s.name == "http-sandbox"]
    assert sandbox.args == ("--port", "9191") and '"secret": "s"' in sandbox.env["GRIDLINE_HTTP_SANDBOX_CONFIG"]
    real = replace(on, http_send_url="https://sms.example.cn/api/send")
    assert "http" in build_channels(real) and "http-sandbox" not in [s.name for s in sandboxes(real)]


def test_no_sandbox_where_an_account_or_an_api_base_is_configured() -> None:
    configured = Settings(twilio_account_sid="AC" + "1" * 32, twilio_auth_token="t",
                          telegram_api_base="http://127.0.0.1:1")
    assert sandboxes(configured) == []


def test_a_bad_http_setting_stops_the_gateway_with_its_name() -> None:
    with pytest.raises(ValueError, match="GRIDLINE_HTTP_STATUS_MAP"):
        build_channels(load_settings({"GRIDLINE_HTTP_SECRET": "s", "GRIDLINE_HTTP_STATUS_MAP": "ok:fine"}))


def test_one_registry_line_per_package() -> None:
    modules = [registration.module for registration in REGISTRY]
    assert modules == ["adapters.twilio_sms", "adapters.telegram", "adapters.http_api"]


def test_adapters_import_nothing_from_the_gateway_or_broadcasts() -> None:
    imported: set[tuple[str, str]] = set()
    for path in ADAPTERS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            imported |= {(path.name, name) for name in names if name.split(".")[0] in ("gateway", "broadcasts")}
    assert imported == set()


def test_sandboxes_still_found_once_the_sandbox_modules_are_imported() -> None:
    """Importing `adapters.<package>.sandbox` sets that attribute of the package to the module: the
    function the registry calls must have another name."""
    for package in ("twilio_sms", "telegram", "http_api"):
        importlib.import_module(f"adapters.{package}.sandbox")
    assert [s.name for s in sandboxes(load_settings({"GRIDLINE_HTTP_SECRET": "s"}))] == [
        "twilio-sandbox", "telegram-sandbox", "http-sandbox"]
