"""One training run, start to finish: the run folder, the data, two phases with resume, evaluation, plots.

train/run_start.py opens the folder and writes what it holds before training; train/distribute.py says where
training runs; train/phases.py trains the phases; train/checkpoints.py commits every epoch. TensorFlow is
imported only once the run is open (phases and the input pipeline load it): a multi-replica run must set
TF_ENABLE_ONEDNN_OPTS before that.
"""
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

from edge_runtime.errors import InputError
from edge_runtime.files import atomic_path, write_json
from runlib.lock import RunLock
from runlib.run_folder import Run
from runlib.scratch import tidy

from .checkpoints import Checkpoints
from .config import resolve
from .distribute import is_chief, log, strategy_for, weights_fingerprint
from .run_start import choose_run, open_run, start_run, worker_run


def train_run(options):
    """Train one run from explicit options (names of runlib/options.py); returns the finished Run."""
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


def _fit_and_finish(run, cfg, samples, class_names, state):
    from runlib.tf_setup import device_summary, import_keras, import_tensorflow

    from .model import build_model, unfreeze_start
    from .phases import PhaseTrainer, TrainingData, set_precision

    tf = import_tensorflow()
    log(f"training runs on {device_summary()}")
    keras = import_keras()

    keras.utils.set_random_seed(cfg["seed"])
    strategy = strategy_for(cfg)
    policy = state["precision"] = set_precision(cfg, keras)
    data = TrainingData(cfg, samples, class_names)
    data.preview(cfg, run.augment_preview)
    with strategy.scope():
        model = build_model(cfg, len(class_names))
    if cfg["epochs_finetune"] > 0:
        unfreeze_start(model, cfg)  # a misspelt --unfreeze-from fails now, not after phase 1
    store = Checkpoints(run, state)
    if state.get("phase_complete") or state["epoch"] > 0:
        store.load_weights(model, "last")
    training = PhaseTrainer(run, cfg, model, strategy, store, data)
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
    _finish(run, cfg, model, data, state)


def _finish(run, cfg, model, data, state):
    """The inference model saved, its validation and test metrics, the curves and confusion matrices."""
    from runlib.metrics import classification_metrics
    from runlib.plots import confusion_matrices, training_curves

    from .pipeline import dataset, labels_of

    from runlib.tf_setup import import_keras
    keras = import_keras()

    # Inference only: an uncompiled twin sharing the layers, so no optimizer state is saved
    # (the resume state lives in checkpoints/). The file is the size of the weights.
    inference = keras.Model(model.inputs, model.outputs, name=model.name)
    with atomic_path(run.model, suffix=".keras") as tmp:
        inference.save(str(tmp))
    metrics, class_names = {}, list(data.index)
    for name in ("val", "test"):
        if data.subset[name]:
            probs = model.predict(dataset(data.images(name, cfg["image_size"]), cfg["batch_size"], cache=False), verbose=0)
            metrics[name] = classification_metrics(labels_of(data.subset[name], data.index), probs, class_names)
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
