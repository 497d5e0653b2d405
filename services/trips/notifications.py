"""The trips service's notification log: one JSON line per trip, appended durably."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

DEFAULT_PATH = Path(".data/trips/notifications.log")


class NotificationLog:
    """An append-only JSON-lines file holding at most one record per trip.

    `ctx.run` is at-least-once: an attempt that ends after appending but before its
    result is durable runs the side effect again. The log therefore remembers which
    trips it already holds and skips repeats, so every trip gets exactly one record.

    Args:
        path: The file; its parent directory is created when missing.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._trips: set[str] | None = None
        self._torn = False

    def append(self, record: dict[str, Any]) -> None:
        """Appends `record` (which has a `trip_id`) and fsyncs, unless the trip has one.

        Blocking, but only for one small fsync'd write per trip.
        """
        trips = self._load()
        if record["trip_id"] in trips:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            # After a crash mid-write, start on a fresh line rather than extend the torn one.
            f.write(("\n" if self._torn else "") + json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._torn = False
        trips.add(record["trip_id"])

    def _load(self) -> set[str]:
        # Read once per process: the log assumes one trips process writes it at a time.
        if self._trips is None:
            self._trips = set()
            if self.path.exists():
                text = self.path.read_text(encoding="utf-8")
                self._torn = bool(text) and not text.endswith("\n")
                for line in text.splitlines():
                    try:
                        self._trips.add(json.loads(line)["trip_id"])
                    except (ValueError, KeyError, TypeError):
                        continue  # a torn last line from a crash mid-write
        return self._trips
