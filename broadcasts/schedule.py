"""Quiet hours: non-emergency notices wait until morning, in the city's own time zone.

Times in the store are naive UTC (as `gateway.store.utcnow` makes them); quiet hours are local
wall-clock times (`settings.timezone`). Every function takes `now` so tests control the clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo


@dataclass(frozen=True)
class QuietHours:
    start: time
    end: time

    @classmethod
    def parse(cls, text: str) -> QuietHours | None:
        """"21:00-08:00" (may wrap past midnight); "" means no quiet hours."""
        if not text.strip():
            return None
        try:
            start, end = (time.fromisoformat(part.strip()) for part in text.split("-"))
        except ValueError as bad:
            raise ValueError(f"quiet_hours must look like 21:00-08:00, not {text!r}") from bad
        return cls(start, end)

    def contains(self, moment: time) -> bool:
        if self.start <= self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end


def release_time(now: datetime, quiet: QuietHours | None, timezone: str) -> datetime:
    """`now` (naive UTC) if it is outside quiet hours, else when they end (naive UTC)."""
    if quiet is None:
        return now
    zone = ZoneInfo(timezone)
    local = now.replace(tzinfo=UTC).astimezone(zone)
    if not quiet.contains(local.time()):
        return now
    end = local.replace(hour=quiet.end.hour, minute=quiet.end.minute, second=0, microsecond=0)
    if end <= local:
        end = (local + timedelta(days=1)).replace(hour=quiet.end.hour, minute=quiet.end.minute,
                                                  second=0, microsecond=0)
    return end.astimezone(UTC).replace(tzinfo=None)

