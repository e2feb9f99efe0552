"""One training run, start to finish: data, split, two phases with resume, evaluation, plots."""
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edge_runtime.errors import InputError
from edge_runtime.files import atomic_path, sha256_file, write_json, write_text
from edge_runtime.preprocess import contract

from . import data as D
from .config import RESUME_KEYS, resolve
from .shared.lock import RunLock, holder
from .shared.run_folder import RUNS_DIR, Run
from .shared.scratch import prefix, tidy
from .shared.split import write_split
from .shared.progress import NORMAL, logger
from .duplicates import group
from .shared.versions import package_versions

_log = logger("train")



def log(msg, level=NORMAL):
    (logger(f"train{_worker_tag()}") if _worker_tag() else _log)(msg, level)


def _worker_tag():
    return "" if is_chief() else f" worker {tf_config()['task'].get('index', 0)}"


# ---------------------------------------------------------------- run folder

def _default_name(cfg):
    data = "demo" if cfg["demo"] else Path(cfg["data_root"]).name
    return f"{data}-{cfg['backbone']}"


def _refuse_finished(run, overwrite):
    if run.finished and not overwrite:
        raise InputError(f"run {run.path} is already finished; pass --overwrite (OVERWRITE=1) to replace it, or choose another --run")


def _refuse_other_options(run, cfg):
    """A run resumes only with the options it was started with."""
    recorded = run.config()
    diff = [k for k in RESUME_KEYS if k in recorded and recorded[k] != cfg.get(k)]  # options a run predates pass
    if diff:
        raise InputError(f"run {run.path} was started with other options ({', '.join(diff)}); "
                         f"rerun with the same options to resume, or pass --overwrite")


def choose_run(cfg, run_arg, overwrite):
    """The run folder to use, and whether we resume an interrupted run in it. The caller holds its lock."""
    if run_arg:
        run = Run(run_arg)
        _refuse_finished(run, overwrite)
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
        _refuse_other_options(run, cfg)
        return True
    if run.path.exists() and any(run.path.iterdir()):
        raise InputError(f"{run.path} exists and is not a run folder; pass --overwrite or choose another --run")
    return False


def worker_run(cfg, run_arg, overwrite):
    """A non-chief worker of a multi-worker run: a private scratch copy of the run folder.

    Every worker runs the same code (saving and evaluating take part in collective ops, so all must
    call them), but only the chief writes the real folder; the others write here, and the scratch is
    deleted when they finish. When the chief's folder holds a checkpoint, the copy starts from it.
    """
    real = Run(run_arg)
    _refuse_finished(real, overwrite)
    resuming = not overwrite and real.state_file.exists()
    if resuming:
        _refuse_other_options(real, cfg)
    scratch = Run(Path(tempfile.mkdtemp(prefix=prefix("train-worker"))) / real.path.name)
    if resuming:
        shutil.copytree(real.path, scratch.path, ignore=shutil.ignore_patterns("export", "benchmark", "logs"))
    return scratch, resuming


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
    samples, groups, report["duplicates"] = group(samples, [s.phash for s in samples], cfg.get("group_near_duplicates", True))
    kept = Counter(s.label for s in samples)  # conflicting copies (one photo, two labels) are left out
    report.update(per_class={label: kept.get(label, 0) for label in report["per_class"]}, images_used=len(samples))
    _log_duplicates(report["duplicates"])
    D.validate_classes(report, cfg["val_frac"], cfg["test_frac"])
    D.split(samples, cfg["val_frac"], cfg["test_frac"], cfg["seed"], groups)
    D.undersample(samples, cfg["max_per_class"], cfg["seed"])
    report["split"] = {sub: {l: sum(1 for s in samples if s.subset == sub and s.label == l) for l in sorted(report["per_class"])}
                       for sub in ("train", "val", "test", "unused")}
    return samples, report


def _log_duplicates(d):
    log(f"copies: {d['exact_copies']} exact copy(ies) in {d['exact_groups']} group(s), {d['near_pairs']} near-copy pair(s) "
        f"({d['near_pairs_across_classes']} across classes), {len(d['conflicts'])} conflict(s) (the same bytes under two "
        f"labels: {d['conflicting_files']} file(s) left out); "
        + ("copies are kept in one subset" if d["grouped_for_split"]["near"] else "exact copies kept in one subset"))


# ---------------------------------------------------------------- checkpoint store

class Store:
    """The checkpoints of one run, committed so that a kill at any instant resumes with the weights and
    optimizer of one epoch.

    Each commit writes epoch-named files first (weights and optimizer together in one file), then
    state.json naming them (the commit point: written atomically and forced to disk), and only then
    removes the files state.json no longer names. Before state.json is replaced, the files it names are
    still there; after, the new ones are.
    """

    def __init__(self, run, state):
        self.run, self.state = run, state
        run.checkpoints.mkdir(parents=True, exist_ok=True)

    def path(self, name):
        return self.run.checkpoints / name

    # Plain arrays rather than Keras' H5 weights: these load the same under any tf.distribute strategy.
    def _save(self, name, model, phase, epoch, optimizer=None):
        arrays = {f"w{i}": w for i, w in enumerate(model.get_weights())}
        arrays.update({f"o{i}": v for i, v in enumerate(optimizer or [])})
        with atomic_path(self.path(name), suffix=".npz") as tmp:
            np.savez(tmp, phase=phase, epoch=epoch, **arrays)
        return name

    def _file(self, which):
        # runs interrupted before epoch-named checkpoints used fixed names
        return self.state.get(f"{which}_file") or f"{which}.npz"

    def has(self, which):
        return self.path(self._file(which)).is_file()

    def load_weights(self, model, which="last"):
        """The weights of the last committed checkpoint, or of the best one."""
        with np.load(self.path(self._file(which))) as z:
            keys = sorted((k for k in z.files if k.startswith("w") and k[1:].isdigit()), key=lambda k: int(k[1:]))
            if not keys:  # a fixed-name file of an older run: arr_0, arr_1, ...
                keys = [f"arr_{i}" for i in range(len(z.files))]
            model.set_weights([z[k] for k in keys])

    def optimizer_values(self):
        """The optimizer's variables saved with the last checkpoint's weights."""
        name = self.state.get("last_file")
        if name is None:  # an older run: a separate file
            with np.load(self.path("optimizer.npz")) as z:
                return [z[f"arr_{i}"] for i in range(len(z.files))]
        with np.load(self.path(name)) as z:
            return [z[k] for k in sorted((k for k in z.files if k.startswith("o") and k[1:].isdigit()),
                                         key=lambda k: int(k[1:]))]

    def save_epoch(self, model, phase, epoch, row, improved, value, callback_state):
        from .callbacks import optimizer_state

        tag = f"p{phase}-e{epoch:04d}"
        self.state["last_file"] = self._save(f"epoch-{tag}.npz", model, phase, epoch, optimizer_state(model.optimizer))
        if improved:
            self.state["best_file"] = self._save(f"best-{tag}.npz", model, phase, epoch)
            self.state["best"] = float(value)
            self.state["best_epoch"] = row["epoch"]
        self.state["history"].append(row)
        self.state.update(phase=phase, epoch=epoch, phase_complete=False, callbacks=callback_state,
                          lr=row["lr"], status="training")
        self.commit()

    def save_best(self, model, phase, epoch, value, best_epoch):
        """The best weights so far (phase 1's fitted head), committed."""
        self.state["best_file"] = self._save(f"best-p{phase}-e{epoch:04d}.npz", model, phase, epoch)
        self.state.update(best=value, best_epoch=best_epoch)

    def end_phase(self, model, phase, epochs):
        """The phase ends on its best weights (best over all phases so far); committed as its last checkpoint."""
        if self.has("best"):
            self.load_weights(model, "best")
        self.state["last_file"] = self._save(f"end-p{phase}.npz", model, phase, epochs)
        self.state.update(phase=phase, epoch=epochs, phase_complete=True)
        self.commit()

    def commit(self):
        write_json(self.run.state_file, self.state)  # the commit point
        write_history(self.run.history, self.state["history"])
        keep = {self.state.get("last_file"), self.state.get("best_file")}
        for p in self.run.checkpoints.glob("*.npz"):
            if p.name not in keep:
                p.unlink()


def write_history(path, history):
    keys = []
    for row in history:
        keys += [k for k in row if k not in keys]
    lines = [",".join(keys)] + [",".join("" if row.get(k) is None else f"{row[k]:.6g}" if isinstance(row[k], float) else str(row[k])
                                         for k in keys) for row in history]
    write_text(path, "\n".join(lines) + "\n")


# ---------------------------------------------------------------- tensorflow side

def make_strategy(cfg):
    import tensorflow as tf

    if cfg["logical_cpus"] > 1:  # the GPU code path, exercised on one CPU split into N devices
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * cfg["logical_cpus"])
        return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(cfg["logical_cpus"])])
    choice = cfg["strategy"]
    if choice == "multiworker" or (choice == "auto" and os.environ.get("TF_CONFIG")):
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_physical_devices("GPU")
    if choice == "mirrored" or (choice == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def tf_config():
    try:
        return json.loads(os.environ.get("TF_CONFIG") or "{}")
    except json.JSONDecodeError as e:
        raise InputError(f"TF_CONFIG is not valid JSON ({e})") from None


def is_chief():
    conf = tf_config()
    task = conf.get("task", {})
    return task.get("type", "chief") == "chief" or (task.get("type") == "worker" and task.get("index", 0) == 0
                                                    and "chief" not in conf.get("cluster", {}))


def train(options):
    """Train one run from explicit options (names of train/shared/options.py); returns the finished Run."""
    options = dict(options)
    demo = not options.get("data")
    if options.get("csv") and demo:
        raise InputError("--csv needs --data, the folder its filenames are relative to")
    if demo:
        from .demo import make_demo
        options["data"] = str(make_demo(Path("data") / "demo-digits", seed=0))
        log(f"no --data given: using the built-in demo dataset in {options['data']}")
    cfg = resolve(options, demo)
    cfg["data_root"] = str(Path(cfg.pop("data")).resolve())
    cfg["csv"] = str(Path(cfg["csv"]).resolve()) if cfg["csv"] else None
    run_arg, overwrite = cfg.pop("run"), bool(options.get("overwrite"))
    multiworker = bool(os.environ.get("TF_CONFIG"))
    if multiworker and not run_arg:
        raise InputError("a multi-worker run (TF_CONFIG is set) needs --run, the same folder on every worker")
    chief = is_chief()
    if not chief:
        return _train_in(worker_run(cfg, run_arg, overwrite), cfg, run_arg, chief)
    run = choose_run(cfg, run_arg, overwrite)
    with RunLock(run.path, "train"):  # one writer: a second train, or an export, of this run waits its turn
        opened = open_run(run, cfg, overwrite)
        tidy(run, log)
        return _train_in((run, opened), cfg, run_arg, chief)


def _train_in(opened, cfg, run_arg, chief):
    run, resuming = opened
    if resuming:
        state, samples, class_names, cfg = run.state(), run.split(), run.class_names(), run.config()
        log(f"resuming {run.path} at phase {state['phase']}, epoch {state['epoch']}")
    else:
        state, samples, class_names, cfg = start_run(run, cfg)
    log(f"run folder: {run.path}" if chief else f"scratch folder (the chief writes {run_arg}): {run.path}")
    if cfg.get("logical_cpus", 0) > 1 or cfg.get("strategy") == "multiworker" or os.environ.get("TF_CONFIG"):
        # Several CPU replicas: the last, partial batch leaves one replica an empty batch, and oneDNN's
        # depthwise kernels on AVX-512 machines then fail ("input depth must be evenly divisible by filter
        # depth: 3 vs 8"; fine with oneDNN off). Must be set before TensorFlow loads.
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    try:
        _fit_and_finish(run, cfg, samples, class_names, state)
    finally:
        if not chief:
            shutil.rmtree(run.path.parent, ignore_errors=True)
    return Run(run_arg) if not chief else run


def start_run(run, cfg):
    """Scan and split the data and write what the run folder holds before training: (state, samples, classes, cfg)."""
    samples, report = prepare_data(cfg)
    class_names = sorted(report["per_class"])
    run.path.mkdir(parents=True, exist_ok=True)
    train_labels = [class_names.index(s.label) for s in samples if s.subset == "train"]
    weights = D.class_weights(train_labels, len(class_names)) if cfg["use_class_weights"] else None
    cfg = dict(cfg, classes=class_names,
               class_weights={class_names[i]: w for i, w in weights.items()} if weights else None,
               preprocessing=contract(*cfg["image_size"]), versions=package_versions(),
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


class Data:
    """The run's subsets as tf.data pipelines, with what training needs to know about them."""

    def __init__(self, cfg, samples, class_names):
        from .augment import augmenter
        from .pipeline import dataset

        self.index = {c: i for i, c in enumerate(class_names)}
        self.root = Path(cfg["data_root"])
        self.subset = {k: [s for s in samples if s.subset == k] for k in ("train", "val", "test")}
        self.augment = augmenter(cfg["augment"], cfg["seed"], cfg.get("flip", True))
        size = cfg["image_size"]
        n_cached = len(self.subset["train"]) + len(self.subset["val"])
        cache = D.cache_in_memory(n_cached, size, cfg.get("cache_limit_gb", 2.0))
        log(f"input pipeline: {n_cached} training and validation images, {D.decoded_bytes(n_cached, size) / 2**20:.0f} MiB "
            + ("decoded, cached in memory" if cache else f"decoded: over --cache-limit-gb {cfg.get('cache_limit_gb', 2.0):g}, "
               "so decoded again every epoch, not cached"))
        self.train = dataset(self.root, self.subset["train"], self.index, size, cfg["batch_size"], training=True,
                             augment=self.augment, seed=cfg["seed"], cache=cache)
        self.val = dataset(self.root, self.subset["val"], self.index, size, cfg["batch_size"], cache=cache)
        self.monitor = "val_loss" if self.subset["val"] else "loss"
        self.class_weight = ({self.index[c]: w for c, w in cfg["class_weights"].items()} if cfg["use_class_weights"]
                             else None)

    def preview(self, cfg, path):
        """A PNG of original and augmented training samples, once per run."""
        from edge_runtime.preprocess import load_pixels

        from .augment import preview

        if path.exists() or self.augment is None:
            return
        picks = self.subset["train"][:: max(1, len(self.subset["train"]) // 4)][:4]
        preview([load_pixels(self.root / s.path, cfg["image_size"]) for s in picks], cfg["augment"], path,
                seed=cfg["seed"], flip=cfg.get("flip", True))


def _precision(cfg, keras):
    """Set the run's Keras precision policy; the resolved one is recorded in config.json on the first start."""
    from .precision import machine_capabilities, resolve

    policy, why = resolve(cfg.get("precision", "float32"), *machine_capabilities())
    log(f"precision: {policy} ({why})")
    keras.mixed_precision.set_global_policy(policy)
    return policy


def _strategy(cfg):
    import tensorflow as tf

    strategy = make_strategy(cfg)
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        log(f"MultiWorkerMirroredStrategy over {strategy.num_replicas_in_sync} replicas "
            f"({len(tf_config()['cluster'].get('worker', [])) + len(tf_config()['cluster'].get('chief', []))} workers)")
    elif strategy.num_replicas_in_sync > 1:
        log(f"{type(strategy).__name__} over {strategy.num_replicas_in_sync} devices")
    return strategy


def _fit_and_finish(run, cfg, samples, class_names, state):
    from .model import build_model, unfreeze_start
    from .shared.tf_setup import device_summary, import_tensorflow

    tf = import_tensorflow()
    log(f"training runs on {device_summary()}")
    import tf_keras as keras

    keras.utils.set_random_seed(cfg["seed"])
    strategy = _strategy(cfg)
    policy = state["precision"] = _precision(cfg, keras)
    data = Data(cfg, samples, class_names)
    data.preview(cfg, run.augment_preview)
    with strategy.scope():
        model = build_model(cfg, len(class_names))
    if cfg["epochs_finetune"] > 0:
        unfreeze_start(model, cfg)  # a misspelt --unfreeze-from fails now, not after phase 1
    store = Store(run, state)
    if state.get("phase_complete") or state["epoch"] > 0:
        store.load_weights(model, "last")
    training = Phases(run, cfg, model, strategy, store, state, data, len(class_names))
    for phase, epochs, lr in ((1, cfg["epochs_head"], cfg["lr"]), (2, cfg["epochs_finetune"], cfg["lr_finetune"])):
        if phase < state["phase"] or (phase == state["phase"] and state.get("phase_complete")):
            continue
        training.run(phase, epochs, lr)
        store.end_phase(model, phase, epochs)
    if policy != "float32":  # the saved inference model is plain float32
        keras.mixed_precision.set_global_policy("float32")
        f32 = build_model({**cfg, "weights": "none"}, len(class_names))
        f32.set_weights(model.get_weights())
        model = f32
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        log(f"weights fingerprint {weights_fingerprint(model)}")  # equal on every worker, or they drifted apart
    _finish(run, cfg, model, data.subset, data.index, class_names, state)


class Phases:
    """The two phases of one run, each from its first epoch or where an interrupted run left it."""

    def __init__(self, run, cfg, model, strategy, store, state, data, num_classes):
        self.run_folder, self.cfg, self.model, self.strategy = run, cfg, model, strategy
        self.store, self.state, self.data, self.num_classes = store, state, data, num_classes

    def run(self, phase, epochs, lr):
        """Train one phase, from its first epoch or where an interrupted run left it."""
        import tf_keras as keras

        from .callbacks import restore_optimizer
        from .model import compile_for_training, set_phase

        cfg, state, store, model, data = self.cfg, self.state, self.store, self.model, self.data
        resume = phase == state["phase"] and state["epoch"] > 0
        start = state["epoch"] if resume else 0
        cb_state = state.get("callbacks", {}) if resume else {}
        if resume and cb_state.get("early_stopping", {}).get("wait", 0) >= cfg["patience"]:
            start = epochs  # it had already stopped early
        if phase == 1 and start < epochs and uses_probe(cfg):
            _probe_phase(model, cfg, store, state, data.root, data.subset, data.index, data.class_weight, self.num_classes,
                         data.val)
            start = epochs
        if start >= epochs:
            return
        with self.strategy.scope():
            trainable = set_phase(model, phase, cfg)
            compile_for_training(model, cfg, lr)
            if resume:
                restore_optimizer(model.optimizer, model, store.optimizer_values())
                keras.backend.set_value(model.optimizer.learning_rate, state["lr"])
        log(f"phase {phase} ({phase_description(cfg, phase)}): "
            f"{trainable:,} trainable parameters, epochs {start + 1}..{epochs}, lr {lr:g}")
        model.fit(data.train, validation_data=data.val if data.subset["val"] else None, epochs=epochs, initial_epoch=start,
                  class_weight=data.class_weight, callbacks=self.callbacks(phase, epochs, lr, start, cb_state),
                  verbose=1 if sys.stdout.isatty() else 2)

    def callbacks(self, phase, epochs, lr, start, cb_state):
        """Early stopping, the learning-rate schedule, TensorBoard, the checkpoint and progress of one phase."""
        import tf_keras as keras

        from .callbacks import EarlyStopping, EpochCheckpoint, EpochProgress, ReduceLROnPlateau, Warmup, WarmupCosine

        cfg, data = self.cfg, self.data
        es = EarlyStopping(monitor=data.monitor, patience=cfg["patience"], resume_state=cb_state.get("early_stopping"))
        resumable = {"early_stopping": es}
        warmup = cfg.get("warmup_epochs") or 0
        if cfg.get("schedule", "plateau") == "cosine":
            schedule = [WarmupCosine(lr, epochs, warmup=warmup)]
        else:
            resumable["reduce_lr"] = ReduceLROnPlateau(monitor=data.monitor, factor=0.3, patience=cfg["lr_patience"],
                                                       min_lr=1e-7, verbose=1, resume_state=cb_state.get("reduce_lr"))
            schedule = ([Warmup(lr, warmup)] if warmup else []) + [resumable["reduce_lr"]]
        return [es] + schedule + [keras.callbacks.TensorBoard(str(self.run_folder.logs / f"phase{phase}"), profile_batch=0),
                                  EpochCheckpoint(self.store, phase, data.monitor, resumable), EpochProgress(phase, start, epochs)]


def weights_fingerprint(model):
    import hashlib

    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()[:16]


def uses_probe(cfg):
    """Phase 1 fits the head on cached features when the backbone is pretrained (and so frozen)."""
    return cfg.get("head", "probe") == "probe" and cfg.get("weights") not in (None, "none")


def phase_description(cfg, phase):
    if cfg.get("weights") in (None, "none"):
        return "random weights: the whole network trains" + ("" if phase == 1 else ", at the lower learning rate")
    return "head only, backbone frozen" if phase == 1 else "deeper layers unfrozen"


def _probe_phase(model, cfg, store, state, root, subset, index, class_weight, num_classes, val_ds):
    """Phase 1: the head as a logistic regression on the frozen backbone's features, solved to convergence."""
    from .pipeline import dataset
    from .probe import features, fit_head

    t0 = time.time()
    log(f"phase 1 (head only, backbone frozen): features of {len(subset['train'])} training and "
        f"{len(subset['val'])} validation images, then the head fitted to convergence for each C")
    train_feats = features(model, dataset(root, subset["train"], index, cfg["image_size"], cfg["batch_size"],
                                                cache=False))  # one pass
    val_feats = features(model, val_ds) if subset["val"] else (np.zeros((0, train_feats[0].shape[1])), np.zeros(0, int))
    kernel, bias, rows, best = fit_head(train_feats, val_feats, class_weight, num_classes, log=log)
    model.get_layer("head_dense").set_weights([kernel, bias])
    log(f"phase 1 done in {time.time() - t0:.0f} s: C={best['C']:.3g} chosen on the validation split "
        f"(val accuracy {best['val_accuracy'] if best['val_accuracy'] is not None else float('nan'):.3f})")
    for row in rows:
        row["chosen"] = int(row is best)
        row["lr"] = None
    state["history"].extend(rows)
    value = best["val_loss"] if subset["val"] else best["loss"]
    if subset["val"]:  # the same measure phase 2's early stopping watches (unweighted), so "best" compares alike
        model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        value = float(model.evaluate(val_ds, verbose=0)[0])
    store.save_best(model, 1, 0, value, len(state["history"]))
    state["probe"] = {k: best[k] for k in ("C", "val_loss", "val_accuracy")}


def _finish(run, cfg, model, subset, index, class_names, state):
    from .shared.metrics import classification_metrics
    from .pipeline import dataset, labels_of
    from .shared.plots import confusion_matrices, training_curves

    import tf_keras as keras

    # Inference only: an uncompiled twin sharing the layers, so no optimizer state is saved
    # (the resume state lives in checkpoints/). The file is the size of the weights.
    inference = keras.Model(model.inputs, model.outputs, name=model.name)
    with atomic_path(run.model, suffix=".keras") as tmp:
        inference.save(str(tmp))
    metrics = {}
    for name in ("val", "test"):
        if subset[name]:
            probs = model.predict(dataset(Path(cfg["data_root"]), subset[name], index, cfg["image_size"], cfg["batch_size"],
                                          cache=False), verbose=0)
            metrics[name] = classification_metrics(labels_of(subset[name], index), probs, class_names)
    write_json(run.metrics, metrics)
    if state["history"]:
        training_curves(state["history"], run.curves)
    if metrics:
        confusion_matrices([(f"{k} (top-1 {m['top1']:.3f})", m["confusion_matrix"]) for k, m in metrics.items()],
                           class_names, run.confusion)
    state.update(status="finished", finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    write_json(run.state_file, state)
    shown = ", ".join(f"{k} top-1 {m['top1']:.3f} macro-F1 {m['macro_f1']:.3f}" for k, m in metrics.items())
    log(f"done: {shown}")
    log(f"model: {run.model}" if is_chief() else "done; the chief writes the run folder")
