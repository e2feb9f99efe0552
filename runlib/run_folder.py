"""The run folder: everything a training run leaves for export, benchmark and the device.

TF-free, so export and benchmark can read a run without paying for a TensorFlow import.
"""
import json
from pathlib import Path

import numpy as np

from edge_runtime.errors import InputError
from edge_runtime.preprocess import fit_of

from .split import read_split

RUNS_DIR = Path("runs")


class Run:
    def __init__(self, path):
        self.path = Path(path)

    # Files a run holds, in one place so no stage spells a name differently.
    model = property(lambda self: self.path / "model.keras")
    labels = property(lambda self: self.path / "labels.txt")
    config_file = property(lambda self: self.path / "config.json")
    split_file = property(lambda self: self.path / "split.csv")
    data_report = property(lambda self: self.path / "data_report.json")
    state_file = property(lambda self: self.path / "state.json")
    history = property(lambda self: self.path / "history.csv")
    curves = property(lambda self: self.path / "training_curves.png")
    metrics = property(lambda self: self.path / "metrics.json")
    confusion = property(lambda self: self.path / "confusion_matrix.png")
    augment_preview = property(lambda self: self.path / "augment_preview.png")
    checkpoints = property(lambda self: self.path / "checkpoints")
    logs = property(lambda self: self.path / "logs")
    export_dir = property(lambda self: self.path / "export")
    export_manifest = property(lambda self: self.path / "export" / "manifest.json")
    benchmark_dir = property(lambda self: self.path / "benchmark")

    def lock(self, what):
        """This run for this process alone while `what` works on it (runlib/lock.py)."""
        from .lock import RunLock

        return RunLock(self.path, what)

    def state(self):
        return _read_json(self.state_file) if self.state_file.exists() else {}

    @property
    def finished(self):
        return self.state().get("status") == "finished"

    def config(self):
        return _read_json(self.config_file)

    def class_names(self):
        return [l for l in self.labels.read_text(encoding="utf-8").splitlines() if l.strip()]

    def split(self):
        """The samples of split.csv, refused if the file changed since training wrote it."""
        expected = self.config().get("split_sha256") if self.config_file.is_file() else None
        if expected:
            from edge_runtime.files import sha256_file

            if not self.split_file.is_file() or sha256_file(self.split_file) != expected:
                raise InputError(f"{self.split_file} changed since training wrote it (its SHA-256 is not the one in "
                                 f"{self.config_file.name}): the split cannot be trusted; restore it or train a new run")
        return read_split(self.split_file)

    def manifest(self):
        """The export manifest; one clear error when there is no export or it is unreadable."""
        from edge_runtime.files import read_manifest

        if not self.export_manifest.is_file():
            raise InputError(f"{self.path} has no export yet; run `make export RUN={self.path}` first")
        return read_manifest(self.export_manifest)

    def data_root(self):
        return Path(self.config()["data_root"])

    def test_set(self, subset="test"):
        """(paths, label indices, uint8 pixels) of a subset of the split, refusing images that went missing or
        changed since training (checked by SHA-256 against split.csv)."""
        from edge_runtime.files import sha256_file
        from edge_runtime.preprocess import load_batch

        samples = [s for s in self.split() if s.subset == subset]
        if not samples:
            raise InputError(f"{self.split_file} has no {subset} images (was --{subset}-frac 0?); nothing to measure on")
        root = self.data_root()
        missing = [s.path for s in samples if not (root / s.path).is_file()]
        changed = [s.path for s in samples if s.path not in missing and s.sha256 and sha256_file(root / s.path) != s.sha256]
        if missing or changed:
            first = (missing + changed)[0]
            raise InputError(f"the {subset} split of {self.path} no longer matches the images under {root}: "
                             f"{len(missing)} missing, {len(changed)} changed (first: {first}); restore the data or "
                             "train a new run")
        index = {c: i for i, c in enumerate(self.class_names())}
        unknown = [s.label for s in samples if s.label not in index]
        if unknown:
            raise InputError(f"{self.split_file}: label {unknown[0]!r} is not in {self.labels}")
        paths = [root / s.path for s in samples]
        size, fit = tuple(self.config()["image_size"]), fit_of(self.config())
        return paths, np.array([index[s.label] for s in samples]), load_batch(paths, size, fit)

    def require_finished(self):
        """Raise one clear error unless this is a complete training run."""
        if not self.path.is_dir():
            raise InputError(f"run folder {self.path} does not exist (train one with `make train`)")
        missing = [p.name for p in (self.model, self.labels, self.config_file, self.split_file) if not p.exists()]
        if missing or not self.finished:
            why = f"missing {', '.join(missing)}" if missing else "training did not finish"
            raise InputError(f"run folder {self.path} is incomplete ({why}); finish it with `make train RUN={self.path}`")
        return self


def _read_json(path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: unreadable JSON ({e})") from None


def newest_run(runs_dir=RUNS_DIR):
    """The most recently finished run, for commands given no RUN."""
    runs = [Run(p) for p in Path(runs_dir).glob("*") if p.is_dir()] if Path(runs_dir).is_dir() else []
    finished = [r for r in runs if r.finished]
    if not finished:
        raise InputError(f"no finished run in {runs_dir}/ (train one with `make train`, or pass RUN=runs/<name>)")
    return max(finished, key=lambda r: r.state().get("finished_at", ""))


def resolve_run(path):
    return Run(path).require_finished() if path else newest_run()
