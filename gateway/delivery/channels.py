"""The channels messages come in and go out on: the registry of channel packages, one line each,
and the one place the gateway turns its settings into `adapters.Channel` objects.

A channel package (adapters/<name>/) has a `Config` dataclass of its settings, `channels(config)`
giving its configured `Channel`s (none when it is not enabled) and `sandbox_process(config)` giving the
loopback fake the supervisor should run, if any. The app mounts every channel's routes from here,
the senders send through the same objects, and the supervisor starts the sandboxes. A new channel
is a package, its settings (GRIDLINE_<NAME>_*, fields of gateway.config.Settings) and one line in
REGISTRY.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from adapters import Channel, Sandbox
from gateway.config import Settings


def _twilio(settings: Settings, package: Any) -> Any:
    account_sid, auth_token = settings.twilio_credentials
    return package.Config(
        account_sid=account_sid, auth_token=auth_token, from_number=settings.twilio_from_number,
        api_base=settings.twilio_base, status_url=settings.base_url + package.STATUS_PATH,
        rate=settings.sms_rate_limit, unit=settings.sms_rate_unit, concurrency=settings.broadcast_concurrency,
        region=settings.default_region,
        sandbox_port=settings.sandbox_port if settings.sandbox and not settings.twilio_api_base else None)


def _telegram(settings: Settings, package: Any) -> Any:
    return package.Config(
        tokens=settings.telegram_tokens, api_base=settings.telegram_base,
        webhook_secret=settings.telegram_webhook_secret, rate=settings.telegram_rate_limit,
        per_chat_rate=settings.telegram_chat_rate_limit, region=settings.default_region,
        sandbox_port=(settings.telegram_sandbox_port
                      if settings.telegram_sandbox and not settings.telegram_api_base else None))


def prefixed(prefix: str) -> Callable[[Settings, Any], Any]:
    """A package configured by the settings `<prefix><field>` (GRIDLINE_<PREFIX><FIELD>), given to
    `Config.from_strings` as text (empty: the package's default), with the city's region and our
    public URL."""
    def configure(settings: Settings, package: Any) -> Any:
        values = {f.name[len(prefix):]: getattr(settings, f.name) for f in fields(settings)
                  if f.name.startswith(prefix) and getattr(settings, f.name) != ""}
        return package.Config.from_strings({**values, "region": settings.default_region,
                                            "public_url": settings.base_url})

    return configure


@dataclass(frozen=True)
class Registration:
    module: str  # the package, imported when channels are built (providers' clients are slow to import)
    configure: Callable[[Settings, Any], Any]  # settings, package → the package's Config


REGISTRY = (
    Registration("adapters.twilio_sms", _twilio),
    Registration("adapters.telegram", _telegram),
    Registration("adapters.http_api", prefixed("http_")),
)


def _configured(settings: Settings) -> list[tuple[Any, Any]]:
    packages = [(importlib.import_module(r.module), r) for r in REGISTRY]
    return [(package, r.configure(settings, package)) for package, r in packages]


def build_channels(settings: Settings) -> dict[str, Channel]:
    """Every configured channel by name (each lane process sends on one of them, the app mounts their
    routes); ValueError for a configuration that does not hold together."""
    built: dict[str, Channel] = {}
    for package, config in _configured(settings):
        for channel in package.channels(config):
            if channel.name in built:
                raise ValueError(f"two channels are named {channel.name!r}")
            built[channel.name] = channel
    return built


@functools.lru_cache(maxsize=4)
def phone_channels(settings: Settings) -> frozenset[str]:
    """The channels whose addresses are phone numbers (SMS, an HTTP SMS gateway): a message's sender
    there is the resident's phone."""
    return frozenset(name for name, channel in build_channels(settings).items() if channel.phone_addresses)


def sandboxes(settings: Settings) -> list[Sandbox]:
    """The loopback fakes of the channels that talk to one (no account or URL configured)."""
    return [s for package, config in _configured(settings) if (s := package.sandbox_process(config)) is not None]
