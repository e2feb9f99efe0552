"""What the Python API's stage functions return: the run folder, and what the stage found in it."""
import json
from dataclasses import dataclass
from pathlib import Path

from .run_folder import Run


@dataclass
class TrainResult:
    """A finished training run."""
    run: Run

    @property
    def config(self):
        return self.run.config()

    @property
    def metrics(self):
        """{"val": {...}, "test": {...}}: top-1, top-5, macro-F1, balanced accuracy, per-class recall, confusion."""
        return json.loads(self.run.metrics.read_text(encoding="utf-8"))


@dataclass
class ExportResult:
    """The run's exported variants (manifest.json) and which of those asked for failed."""
    run: Run
    manifest: dict
    failed: list

    @property
    def ok(self):
        return not self.failed

    def file(self, variant):
        """The exported file of a variant."""
        return Path(self.run.export_dir) / self.manifest["variants"][variant]["file"]


@dataclass
class BenchmarkResult:
    """The benchmark's report (report.json) and the parity gate's verdict."""
    run: Run
    report: dict

    @property
    def failures(self):
        """{variant: [reasons]} for every variant that missed the parity gate."""
        return self.report["gate"]["failures"]

    @property
    def inconclusive(self):
        """Too few test images for the gate to judge (and no variant clearly missed)."""
        return bool(self.report["gate"].get("inconclusive"))

    @property
    def passed(self):
        g = self.report["gate"]
        return not self.failures and (not self.inconclusive or bool(g.get("inconclusive_accepted")))

    @property
    def rows(self):
        return {r["variant"]: r for r in self.report["rows"]}

    @property
    def recommendation(self):
        return self.report.get("recommendation") or {}
