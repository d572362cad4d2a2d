"""Trained text models on disk: the candidate `gridline train` builds, the one in service, and the
history that `gridline model rollback` walks back.

Layout under the deployment's home (`var/` by default):

    models/<version>.npz   one file per trained model (classifiers.text_model.TextModel.save)
    models/candidate       the version `gridline train` built last
    models/current         the version in service; absent: the model trained at start-up from the
                           shipped examples (config/classifier/examples*.jsonl)
    models/history         versions promoted, one a line, oldest first

Pointers are replaced atomically (write, then rename), so a worker reading `current` between
jobs sees the old version or the new one, never half a file. Workers compare the pointer's
modification time and size with what they loaded (a stat, ~2 µs) and reload only on change.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

SHIPPED = "shipped"  # the name of "no promoted model": trained at start-up from the shipped examples


class RegistryError(Exception):
    """Nothing to promote, or nothing to roll back to: a person's mistake, told in one line."""


@dataclass(frozen=True)
class Registry:
    folder: Path

    @classmethod
    def at(cls, home: Path) -> Registry:
        return cls(home / "models")

    def path(self, version: str) -> Path:
        return self.folder / f"{version}.npz"

    def new_version(self) -> str:
        return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")

    def _read(self, pointer: str) -> str | None:
        try:
            return (self.folder / pointer).read_text(encoding="utf-8").strip() or None
        except FileNotFoundError:
            return None

    def _write(self, pointer: str, value: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        staging = self.folder / f".{pointer}.{os.getpid()}"
        staging.write_text(value + "\n", encoding="utf-8")
        os.replace(staging, self.folder / pointer)

    def current(self) -> str | None:
        """The promoted version in service, or None for the shipped model."""
        version = self._read("current")
        return None if version in (None, SHIPPED) else version

    def candidate(self) -> str | None:
        return self._read("candidate")

    def stamp(self) -> tuple[int, int] | None:
        """What changes whenever `current` is rewritten: checked by workers between jobs."""
        try:
            stat = (self.folder / "current").stat()
        except FileNotFoundError:
            return None
        return stat.st_mtime_ns, stat.st_ino

    def history(self) -> list[str]:
        text = self._read("history") or ""
        return [line for line in text.splitlines() if line.strip()]

    def set_candidate(self, version: str) -> None:
        self._write("candidate", version)

    def promote(self, version: str | None = None) -> str:
        """Put the candidate (or the named version) in service; the one before stays in the history."""
        version = version or self.candidate()
        if version is None or not self.path(version).is_file():
            raise RegistryError(f"no trained model {version!r} to promote: run `gridline train` first"
                                if version else "no candidate to promote: run `gridline train` first")
        history = self.history()
        if not history:
            history.append(SHIPPED)  # so the first promotion can be rolled back too
        history.append(version)
        self._write("history", "\n".join(history))
        self._write("current", version)
        return version

    def rollback(self) -> str:
        """Put the previously promoted version (or the shipped model) back in service."""
        history = self.history()
        if len(history) < 2:
            raise RegistryError("nothing to roll back to: no model was promoted")
        history.pop()
        self._write("history", "\n".join(history))
        self._write("current", history[-1])
        return history[-1]
