"""One training run, start to finish: data, split, two phases with resume, evaluation, plots."""
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edge_runtime.errors import InputError
from edge_runtime.files import atomic_path, write_json, write_text
from edge_runtime.preprocess import contract

from . import data as D
from .config import RESUME_KEYS, resolve
from .shared.run_folder import RUNS_DIR, Run
from .shared.split import write_split
from .shared.progress import NORMAL, logger
from .shared.versions import package_versions

_log = logger("train")



def log(msg, level=NORMAL):
    _log(f"{_worker_tag().strip()}: {msg}" if _worker_tag() else msg, level)


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
    diff = [k for k in RESUME_KEYS if run.config().get(k) != cfg.get(k)]
    if diff:
        raise InputError(f"run {run.path} was started with other options ({', '.join(diff)}); "
                         f"rerun with the same options to resume, or pass --overwrite")


def choose_run(cfg, run_arg, overwrite):
    """The run folder to use, and whether we resume an interrupted run in it."""
    if run_arg:
        run = Run(run_arg)
        _refuse_finished(run, overwrite)
    else:
        base = RUNS_DIR / _default_name(cfg)
        run, n = Run(base), 1
        while run.finished and not overwrite:  # never overwrite silently: take the next free name
            n += 1
            run = Run(f"{base}-{n}")
    if overwrite and run.path.exists():
        log(f"--overwrite: removing {run.path}")
        shutil.rmtree(run.path)
    if run.state_file.exists():
        _refuse_other_options(run, cfg)
        return run, True
    if run.path.exists() and any(run.path.iterdir()):
        raise InputError(f"{run.path} exists and is not a run folder; pass --overwrite or choose another --run")
    return run, False


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
    scratch = Run(Path(tempfile.mkdtemp(prefix="train-worker-")) / real.path.name)
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
    D.validate_classes(report, cfg["val_frac"], cfg["test_frac"])
    D.split(samples, cfg["val_frac"], cfg["test_frac"], cfg["seed"])
    D.undersample(samples, cfg["max_per_class"], cfg["seed"])
    report["split"] = {sub: {l: sum(1 for s in samples if s.subset == sub and s.label == l) for l in sorted(report["per_class"])}
                       for sub in ("train", "val", "test", "unused")}
    return samples, report


# ---------------------------------------------------------------- checkpoint store

class Store:
    """Per-epoch checkpoint files of one run; state.json is the commit point."""

    def __init__(self, run, state):
        self.run, self.state = run, state
        run.checkpoints.mkdir(parents=True, exist_ok=True)

    def path(self, name):
        return self.run.checkpoints / name

    # Plain arrays rather than Keras' H5 weights: these load the same under any tf.distribute strategy.
    def save_weights(self, model, name):
        with atomic_path(self.path(name), suffix=".npz") as tmp:
            np.savez(tmp, *model.get_weights())

    def load_weights(self, model, name):
        with np.load(self.path(name)) as z:
            model.set_weights([z[f"arr_{i}"] for i in range(len(z.files))])

    def save_epoch(self, model, phase, epoch, row, improved, value, callback_state):
        from .callbacks import optimizer_state

        self.save_weights(model, "last.npz")
        with atomic_path(self.path("optimizer.npz"), suffix=".npz") as tmp:
            np.savez(tmp, *optimizer_state(model.optimizer))
        if improved:
            self.save_weights(model, "best.npz")
            self.state["best"] = float(value)
            self.state["best_epoch"] = row["epoch"]
        self.state["history"].append(row)
        self.state.update(phase=phase, epoch=epoch, phase_complete=False, callbacks=callback_state,
                          lr=row["lr"], status="training")
        self.commit()

    def commit(self):
        write_json(self.run.state_file, self.state)
        write_history(self.run.history, self.state["history"])


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
    run, resuming = choose_run(cfg, run_arg, overwrite) if chief else worker_run(cfg, run_arg, overwrite)

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
    if cfg["mixed_precision"]:
        keras.mixed_precision.set_global_policy("mixed_float16")
    data = Data(cfg, samples, class_names)
    data.preview(cfg, run.augment_preview)
    with strategy.scope():
        model = build_model(cfg, len(class_names))
    if cfg["epochs_finetune"] > 0:
        unfreeze_start(model, cfg)  # a misspelt --unfreeze-from fails now, not after phase 1
    store = Store(run, state)
    if state.get("phase_complete") or state["epoch"] > 0:
        store.load_weights(model, "last.npz")
    training = Phases(run, cfg, model, strategy, store, state, data, len(class_names))
    for phase, epochs, lr in ((1, cfg["epochs_head"], cfg["lr"]), (2, cfg["epochs_finetune"], cfg["lr_finetune"])):
        if phase < state["phase"] or (phase == state["phase"] and state.get("phase_complete")):
            continue
        training.run(phase, epochs, lr)
        # the phase ends on its best weights (best over all phases so far)
        if store.path("best.npz").exists():
            store.load_weights(model, "best.npz")
        store.save_weights(model, "last.npz")
        state.update(phase=phase, epoch=epochs, phase_complete=True)
        store.commit()
    if cfg["mixed_precision"]:  # the saved inference model is plain float32
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
                with np.load(store.path("optimizer.npz")) as z:
                    restore_optimizer(model.optimizer, model, [z[f"arr_{i}"] for i in range(len(z.files))])
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
    store.save_weights(model, "best.npz")
    state.update(best=value, best_epoch=len(state["history"]), probe={k: best[k] for k in ("C", "val_loss", "val_accuracy")})


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
