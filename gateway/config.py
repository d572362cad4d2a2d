"""Settings: defaults, overridden by an optional TOML file, overridden by GRIDLINE_* variables.

The TOML file is `config/gridline.toml` unless GRIDLINE_CONFIG names another. Keys are the field
names below (`public_url = "https://..."`); routing overrides live in `[[routing.overrides]]`
tables with `category`, `area` (a grid code prefix) and `department`.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path


@dataclass(frozen=True)
class RoutingOverride:
    """Send `category` appeals located inside grid `area` (and its subtree) to `department`."""

    category: str
    area: str
    department: str


@dataclass(frozen=True)
class Settings:
    home: Path = Path("var")
    config_dir: Path = Path("config")
    database_url: str = ""  # empty: SQLite file under home
    redis_url: str = ""  # empty: Gridline starts a private redis-server under home
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = ""  # the URL Twilio calls; empty: http://host:port
    twilio_account_sid: str = ""
    twilio_auth_token: str = ""
    twilio_from_number: str = "+8617000000000"
    twilio_api_base: str = ""  # empty with no account: the loopback sandbox
    sandbox_port: int = 8089
    # Telegram: the residents' bot and the grid workers' bot. No tokens: the loopback sandbox.
    telegram_resident_token: str = ""
    telegram_worker_token: str = ""
    telegram_api_base: str = ""  # empty with no tokens: the loopback sandbox
    telegram_webhook_secret: str = "sandbox-webhook-secret"  # echoed in X-Telegram-Bot-Api-Secret-Token
    telegram_sandbox_port: int = 8090
    telegram_polling: bool = False  # local development: poll getUpdates instead of a webhook
    # The generic HTTP channel (adapters/http_api: its Config documents each; empty: its default).
    # Enabled when http_secret is set; without http_send_url it talks to its loopback sandbox.
    http_secret: str = ""
    http_send_url: str = ""
    http_send_format: str = ""
    http_send_body: str = ""
    http_send_authorization: str = ""
    http_response_id_field: str = ""
    http_signature_header: str = ""
    http_sender_field: str = ""
    http_text_field: str = ""
    http_id_field: str = ""
    http_status_id_field: str = ""
    http_status_field: str = ""
    http_status_reference_field: str = ""
    http_status_error_field: str = ""
    http_status_map: str = ""
    http_phone_senders: str = ""
    http_rate_limit: str = ""
    http_max_length: str = ""
    http_sandbox_port: str = ""
    # Deadlines: a reminder this long before the holder's deadline; each escalation step's time.
    reminder_hours: float = 4.0
    escalation_step_hours: float = 24.0
    rating_timeout_hours: float = 72.0  # a resolved case nobody rates closes after this
    workers: int = 2
    web_processes: int = 2  # aiohttp processes sharing the port (SO_REUSEPORT)
    sms_senders: int = 2  # sender processes of the SMS lane (it carries broadcasts): each claims its own rows
    timezone: str = "Asia/Shanghai"  # residents and operators see local times
    default_region: str = "CN"  # ISO country whose numbers may be written without +country code
    triage_department: str = "GRID_CENTER"
    # Below this category confidence a case goes to the triage desk. Chosen from bench/calibration.py's
    # table over the four held-out files (config/classifier/README.md): 97.8 % of the routed cases go to
    # the right department with 5.5 % to triage; at 0.5 the pool reaches 97.1 %, one appeal over 97 %,
    # and two of the four files fall below it.
    classifier_threshold: float = 0.60
    sweep_interval: float = 2.0  # seconds between sweeps for work rq lost
    stale_after: float = 10.0  # seconds before unfinished work counts as lost
    metrics_host: str = "127.0.0.1"  # the Prometheus endpoint: loopback unless an operator opens it
    metrics_port: int = 9464  # 0: no metrics role
    log_format: str = "text"  # "json": one JSON object per line, with the request id
    sweeper_lease: float = 10.0  # seconds a dead sweeper's lease outlives it before a standby takes over
    # Broadcasts (broadcasts/): signature, quiet hours, provider rate limits and the cost estimate.
    sms_signature: str = ""  # put before every broadcast SMS, e.g. 【某区网格中心】
    quiet_hours: str = "21:00-08:00"  # local time when non-emergency notices wait; "" = none
    sms_rate_limit: float = 100.0  # SMS per second across all workers; 0 = no limit
    sms_rate_unit: str = "segments"  # what sms_rate_limit counts: "messages" or "segments"
    sms_segment_cost: float = 0.05  # price of one SMS segment, for the preview
    sms_cost_currency: str = "CNY"
    telegram_rate_limit: float = 30.0  # Telegram messages per second overall; 0 = no limit
    telegram_chat_rate_limit: float = 1.0  # Telegram messages per second to one chat
    broadcast_batch: int = 500  # deliveries per rq job
    broadcast_concurrency: int = 50  # provider calls in flight per job
    broadcast_claim_timeout: float = 30.0  # seconds in `sending` before a delivery counts as stuck
    # Operator access: API token lifetime; console sessions end after idling or at the absolute limit.
    operator_token_days: float = 30.0
    console_idle_minutes: float = 30.0
    console_session_hours: float = 12.0
    routing_overrides: tuple[RoutingOverride, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        """Refuse values that would start a stack unable to work (no SMS sender: no acknowledgement ever)."""
        for name in AT_LEAST_ONE:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        for name in NOT_NEGATIVE:
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be a number, not negative, not {getattr(self, name)}")
        for name in POSITIVE:
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be a number above 0, not {getattr(self, name)}")
        if not 0 <= self.classifier_threshold <= 1:
            raise ValueError(f"classifier_threshold must be between 0 and 1, not {self.classifier_threshold}")

    @property
    def city_dir(self) -> Path:
        return self.config_dir / "city"

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'gridline.db').resolve()}"

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def sandbox(self) -> bool:
        """No real Twilio account configured: talk to the loopback sandbox instead."""
        return not self.twilio_account_sid

    @property
    def twilio_credentials(self) -> tuple[str, str]:
        if self.sandbox:
            from adapters.twilio_sms import SANDBOX_ACCOUNT_SID, SANDBOX_AUTH_TOKEN  # twilio takes ~0.7 s to import

            return SANDBOX_ACCOUNT_SID, SANDBOX_AUTH_TOKEN
        return self.twilio_account_sid, self.twilio_auth_token

    @property
    def telegram_sandbox(self) -> bool:
        return not (self.telegram_resident_token and self.telegram_worker_token)

    @property
    def telegram_tokens(self) -> dict[str, str]:
        """Bot name → token; the sandbox's made-up tokens when none are configured."""
        if self.telegram_sandbox:
            from adapters.telegram import SANDBOX_TOKENS  # python-telegram-bot takes ~0.7 s to import

            return {"resident": SANDBOX_TOKENS[0], "worker": SANDBOX_TOKENS[1]}
        return {"resident": self.telegram_resident_token, "worker": self.telegram_worker_token}

    @property
    def telegram_base(self) -> str:
        if self.telegram_api_base:
            return self.telegram_api_base.rstrip("/")
        if self.telegram_sandbox:
            return f"http://127.0.0.1:{self.telegram_sandbox_port}"
        return "https://api.telegram.org"

    @property
    def twilio_base(self) -> str:
        if self.twilio_api_base:
            return self.twilio_api_base.rstrip("/")
        return f"http://127.0.0.1:{self.sandbox_port}" if self.sandbox else "https://api.twilio.com"


AT_LEAST_ONE = ("workers", "web_processes", "sms_senders", "broadcast_batch", "broadcast_concurrency")
NOT_NEGATIVE = ("sms_rate_limit", "telegram_rate_limit", "telegram_chat_rate_limit", "reminder_hours")  # 0: none
POSITIVE = ("sweep_interval", "stale_after", "sweeper_lease", "broadcast_claim_timeout", "escalation_step_hours",
            "rating_timeout_hours", "operator_token_days", "console_idle_minutes", "console_session_hours")

# Field annotations are strings (postponed evaluation); these are the ones a variable can set.
COERCE = {"Path": Path, "int": int, "float": float, "str": str,
          "bool": lambda value: str(value).lower() in ("1", "true", "yes", "on")}


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    config_dir = Path(env.get("GRIDLINE_CONFIG_DIR", "config"))
    toml_path = Path(env.get("GRIDLINE_CONFIG", config_dir / "gridline.toml"))
    values: dict = {"config_dir": config_dir}
    if toml_path.is_file():
        data = tomllib.loads(toml_path.read_text(encoding="utf-8"))
        overrides = data.pop("routing", {}).get("overrides", [])
        values["routing_overrides"] = tuple(RoutingOverride(**o) for o in overrides)
        values.update(data)
    kinds = {f.name: str(f.type) for f in fields(Settings)}
    unknown = sorted(set(values) - set(kinds))
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)} in {toml_path}")
    for name in kinds:
        env_value = env.get(f"GRIDLINE_{name.upper()}")
        if env_value is not None:
            values[name] = env_value
    for name, value in values.items():
        if kinds[name] in COERCE:
            values[name] = COERCE[kinds[name]](value)
    return Settings(**values)
