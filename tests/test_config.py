"""Settings: defaults, then the TOML file, then GRIDLINE_* variables, each overriding the last."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import RoutingOverride, load_settings


def test_toml_then_environment(tmp_path: Path):
    (tmp_path / "gridline.toml").write_text(
        'port = 9000\npublic_url = "https://grid.example.org"\nclassifier_threshold = 0.7\n'
        '[[routing.overrides]]\ncategory = "pets_animals"\narea = "QH-LT"\ndepartment = "CIVIL_AFFAIRS"\n',
        encoding="utf-8")
    settings = load_settings({"GRIDLINE_CONFIG_DIR": str(tmp_path), "GRIDLINE_PORT": "9100",
                              "GRIDLINE_TELEGRAM_POLLING": "1"})
    assert settings.port == 9100  # the variable wins over the file
    assert settings.base_url == "https://grid.example.org"
    assert settings.classifier_threshold == 0.7 and settings.telegram_polling is True
    assert settings.routing_overrides == (RoutingOverride("pets_animals", "QH-LT", "CIVIL_AFFAIRS"),)
    assert settings.city_dir == tmp_path / "city"


def test_defaults_mean_the_sandboxes():
    settings = load_settings({})
    assert settings.sandbox and settings.telegram_sandbox
    assert settings.twilio_base.startswith("http://127.0.0.1:")
    assert settings.sqlalchemy_url.startswith("sqlite:///") and settings.sqlalchemy_url.endswith("gridline.db")


def test_an_unknown_setting_is_an_error(tmp_path: Path):
    (tmp_path / "gridline.toml").write_text("prot = 9000\n", encoding="utf-8")
    with pytest.raises(ValueError, match="prot"):
        load_settings({"GRIDLINE_CONFIG_DIR": str(tmp_path)})


@pytest.mark.parametrize(("variable", "value", "reason"), [
    ("GRIDLINE_SMS_SENDERS", "0", "sms_senders must be at least 1"),
    ("GRIDLINE_WORKERS", "0", "workers must be at least 1"),
    ("GRIDLINE_WEB_PROCESSES", "-1", "web_processes must be at least 1"),
    ("GRIDLINE_SMS_RATE_LIMIT", "-5", "sms_rate_limit must be a number, not negative"),
    ("GRIDLINE_SWEEP_INTERVAL", "nan", "sweep_interval must be a number above 0"),
    ("GRIDLINE_STALE_AFTER", "0", "stale_after must be a number above 0"),
    ("GRIDLINE_CONSOLE_IDLE_MINUTES", "-1", "console_idle_minutes must be a number above 0"),
    ("GRIDLINE_TELEGRAM_RATE_LIMIT", "inf", "telegram_rate_limit must be a number, not negative"),
    ("GRIDLINE_CLASSIFIER_THRESHOLD", "1.5", "classifier_threshold must be between 0 and 1"),
])
def test_a_value_no_stack_can_work_with_is_refused(variable: str, value: str, reason: str):
    with pytest.raises(ValueError, match=reason):
        load_settings({variable: value})
