"""What every part of the pipeline shares: the loaded city, the classifier, the settings, and the
names of the channels messages come and go on."""

from __future__ import annotations

from dataclasses import dataclass

from classifiers import Classifier
from gateway.config import Settings
from gateway.domain.city import City

SMS = "sms"
RESIDENT_BOT = "telegram-resident"  # the residents' Telegram bot
WORKER_BOT = "telegram-worker"  # the grid workers' Telegram bot
BOTS = {"resident": RESIDENT_BOT, "worker": WORKER_BOT}


@dataclass
class World:
    """Loaded once per worker process."""

    settings: Settings
    city: City
    classifier: Classifier
