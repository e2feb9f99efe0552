"""Seconds per stage of a conversion, for the manifest's `stage_seconds`."""
import time


class Stopwatch(dict):
    """{stage: seconds}; lap(stage) records the time since the previous lap (or since it was made)."""

    def __init__(self):
        super().__init__()
        self._since = time.time()

    def lap(self, stage):
        now = time.time()
        self[stage], self._since = round(now - self._since, 1), now
