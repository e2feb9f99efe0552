"""A training run's folder: which one, resumed or new, and what it holds before the first epoch
(the scanned data report, the split, the labels and config.json)."""
import shutil
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from edge_runtime.errors import InputError
from edge_runtime.files import sha256_file, write_json, write_text
from edge_runtime.preprocess import contract
from runlib.lock import holder
from runlib.run_folder import RUNS_DIR, Run
from runlib.scratch import prefix
from runlib.split import write_split
from runlib.versions import package_versions

from . import data as D
from .config import RESUME_KEYS
from .distribute import log
from .duplicates import group


def _default_name(cfg):
    data = "demo" if cfg["demo"] else Path(cfg["data_root"]).name
    return f"{data}-{cfg['backbone']}"


def refuse_finished(run, overwrite):
    if run.finished and not overwrite:
        raise InputError(f"run {run.path} is already finished; pass --overwrite (OVERWRITE=1) to replace it, "
                         "or choose another --run")


# What a run started before these options existed did: its resume must ask for the same (their defaults changed).
PREDATED = {"resize": "squash", "augment_style": "basic", "label_smoothing": 0.0, "extra_data": None}


def refuse_other_options(run, cfg):
    """A run resumes only with the options it was started with."""
    recorded = {**PREDATED, **run.config()}
    diff = [k for k in RESUME_KEYS if k in recorded and recorded[k] != cfg.get(k)]  # options a run predates pass
    if diff:
        raise InputError(f"run {run.path} was started with other options ({', '.join(diff)}); "
                         f"rerun with the same options to resume, or pass --overwrite")


def choose_run(cfg, run_arg, overwrite):
    """The run folder to use, and whether we resume an interrupted run in it. The caller holds its lock."""
    if run_arg:
        run = Run(run_arg)
        refuse_finished(run, overwrite)
    else:
        base = RUNS_DIR / _default_name(cfg)
        run, n = Run(base), 1
        while (run.finished or holder(run.path)) and not overwrite:  # never overwrite silently: the next free name
            n += 1
            run = Run(f"{base}-{n}")
    return run


def open_run(run, cfg, overwrite):
    """Under the run's lock: clear it for --overwrite, and whether an interrupted run is resumed in it."""
    if overwrite and run.path.exists():
        log(f"--overwrite: removing {run.path}")
        shutil.rmtree(run.path)
    if run.state_file.exists():
        refuse_other_options(run, cfg)
        return True
    if run.path.exists() and any(run.path.iterdir()):
        raise InputError(f"{run.path} exists and is not a run folder; pass --overwrite or choose another --run")
    return False


def prepare_data(cfg):
    """Scan, validate and split; returns (samples, report)."""
    root = Path(cfg["data_root"])
    entries, empty = D.list_csv(cfg["csv"], root) if cfg["csv"] else D.list_folder(root)
    if not entries:
        raise InputError(f"no files found in {root} (expected one sub-folder per class)")
    t0 = time.time()
    samples, report = D.scan(entries, root, empty, progress=True)
    report["scan_seconds"] = round(time.time() - t0, 2)
    log(f"scanned {len(entries)} files in {report['scan_seconds']:.1f} s")
    samples, groups, report["duplicates"] = group(samples, [s.phash for s in samples],
                                                  cfg.get("group_near_duplicates", True))
    kept = Counter(s.label for s in samples)  # conflicting copies (one photo, two labels) are left out
    report.update(per_class={label: kept.get(label, 0) for label in report["per_class"]}, images_used=len(samples))
    _log_duplicates(report["duplicates"])
    D.validate_classes(report, cfg["val_frac"], cfg["test_frac"])
    D.split(samples, cfg["val_frac"], cfg["test_frac"], cfg["seed"], groups)
    D.undersample(samples, cfg["max_per_class"], cfg["seed"])
    classes = sorted(report["per_class"])
    if cfg.get("extra_data"):
        samples += extra_samples(cfg["extra_data"], classes, samples, report)
    report["split"] = {sub: {c: sum(1 for s in samples if s.subset == sub and s.label == c) for c in classes}
                       for sub in ("train", "val", "test", "unused")}
    return samples, report


def extra_samples(folder, classes, samples, report):
    """--extra-data: labelled images for the training split only, kept by absolute path (they live outside the data
    folder). A folder that is not a class is an error; a copy of a validation or test image is left out."""
    root = Path(folder).resolve()
    if not root.is_dir():
        raise InputError(f"--extra-data {folder}: no such folder")
    entries, _ = D.list_folder(root)
    extra, scanned = D.scan(entries, root)
    strangers = sorted({s.label for s in extra} - set(classes))
    if strangers:
        raise InputError(f"--extra-data {folder}: folder(s) {', '.join(strangers)} name no class of the data "
                         f"({', '.join(classes)})")
    held_out = {s.sha256 for s in samples if s.subset in ("val", "test")}
    kept = [s for s in extra if s.sha256 not in held_out]
    for s in kept:
        s.path, s.subset = (root / s.path).as_posix(), "train"
    report["extra_data"] = {"folder": str(root), "images": len(kept), "skipped": scanned["skipped"],
                            "copies_of_held_out_images": len(extra) - len(kept),
                            "per_class": dict(Counter(s.label for s in kept))}
    log(f"--extra-data: {len(kept)} images added to the training split ({scanned['skipped']} unreadable, "
        f"{len(extra) - len(kept)} copies of validation or test images left out)")
    return kept


def _log_duplicates(d):
    log(f"copies: {d['exact_copies']} exact copy(ies) in {d['exact_groups']} group(s), {d['near_pairs']} near-copy pair(s) "
        f"({d['near_pairs_across_classes']} across classes), {len(d['conflicts'])} conflict(s) (the same bytes under two "
        f"labels: {d['conflicting_files']} file(s) left out); "
        + ("copies are kept in one subset" if d["grouped_for_split"]["near"] else "exact copies kept in one subset"))


def start_run(run, cfg):
    """Scan and split the data and write what the run folder holds before training: (state, samples, classes, cfg)."""
    samples, report = prepare_data(cfg)
    class_names = sorted(report["per_class"])
    run.path.mkdir(parents=True, exist_ok=True)
    train_labels = [class_names.index(s.label) for s in samples if s.subset == "train"]
    weights = D.class_weights(train_labels, len(class_names)) if cfg["use_class_weights"] else None
    cfg = dict(cfg, classes=class_names,
               class_weights={class_names[i]: w for i, w in weights.items()} if weights else None,
               preprocessing=contract(*cfg["image_size"], cfg.get("resize", "squash")), versions=package_versions(),
               started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), command=" ".join(sys.argv))
    write_json(run.data_report, report)
    write_split(run.split_file, samples)
    cfg["split_sha256"] = sha256_file(run.split_file)  # export and benchmark refuse a split edited since
    write_text(run.labels, "\n".join(class_names) + "\n")
    write_json(run.config_file, cfg)
    state = {"status": "training", "phase": 1, "epoch": 0, "phase_complete": False, "history": []}
    write_json(run.state_file, state)
    split = report["split"]
    log(f"{report['images_used']} images in {len(class_names)} classes ({report['skipped']} skipped: "
        f"{report['skipped_by_reason'] or 'none'}); split train/val/test = {sum(split['train'].values())}/"
        f"{sum(split['val'].values())}/{sum(split['test'].values())}")
    return state, samples, class_names, cfg


def worker_run(cfg, run_arg, overwrite):
    """A non-chief worker of a multi-worker run: a private scratch copy of the run folder.

    Every worker runs the same code (saving and evaluating take part in collective ops, so all must
    call them), but only the chief writes the real folder; the others write here, and the scratch is
    deleted when they finish. When the chief's folder holds a checkpoint, the copy starts from it.
    """
    real = Run(run_arg)
    refuse_finished(real, overwrite)
    resuming = not overwrite and real.state_file.exists()
    if resuming:
        refuse_other_options(real, cfg)
    scratch = Run(Path(tempfile.mkdtemp(prefix=prefix("train-worker"))) / real.path.name)
    if resuming:
        shutil.copytree(real.path, scratch.path, ignore=shutil.ignore_patterns("export", "benchmark", "logs"))
    return scratch, resuming
