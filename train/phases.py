"""The two phases of a run: the head on a frozen backbone (a probe or SGD), then the deeper layers unfrozen;
each from its first epoch or where an interrupted run left it."""
import sys
import time
from pathlib import Path

import numpy as np

from . import data as D
from .distribute import log
from edge_runtime.preprocess import fit_of

from .pipeline import Images, dataset


class TrainingData:
    """The run's subsets as tf.data pipelines, with what training needs to know about them."""

    def __init__(self, cfg, samples, class_names):
        from .augment import augmenter

        self.index = {c: i for i, c in enumerate(class_names)}
        self.cfg = cfg
        self.root = Path(cfg["data_root"])
        self.subset = {k: [s for s in samples if s.subset == k] for k in ("train", "val", "test")}
        self.augment = augmenter(cfg["augment"], cfg["seed"], cfg.get("flip", True), cfg.get("augment_style", "basic"))
        size = cfg["image_size"]
        n_cached = len(self.subset["train"]) + len(self.subset["val"])
        cache = D.cache_in_memory(n_cached, size, cfg.get("cache_limit_gb", 2.0))
        log(f"input pipeline: {n_cached} training and validation images, {D.decoded_bytes(n_cached, size) / 2**20:.0f} MiB "
            + ("decoded, cached in memory" if cache
               else f"decoded: over --cache-limit-gb {cfg.get('cache_limit_gb', 2.0):g}, "
               "so decoded again every epoch, not cached"))
        self.train = dataset(self.images("train", size), cfg["batch_size"], training=True, augment=self.augment,
                             seed=cfg["seed"], cache=cache)
        self.val = dataset(self.images("val", size), cfg["batch_size"], cache=cache)
        self.monitor = "val_loss" if self.subset["val"] else "loss"
        self.class_weight = ({self.index[c]: w for c, w in cfg["class_weights"].items()} if cfg["use_class_weights"]
                             else None)

    def images(self, subset, size):
        return Images(self.root, self.subset[subset], self.index, size, fit_of(self.cfg))

    def preview(self, cfg, path):
        """A PNG of original and augmented training samples, once per run."""
        from edge_runtime.preprocess import load_pixels

        from .augment import preview

        if path.exists() or self.augment is None:
            return
        picks = self.subset["train"][:: max(1, len(self.subset["train"]) // 4)][:4]
        preview([load_pixels(self.root / s.path, cfg["image_size"], fit_of(cfg)) for s in picks], cfg["augment"], path,
                seed=cfg["seed"], flip=cfg.get("flip", True), style=cfg.get("augment_style", "basic"))


class PhaseTrainer:
    """The two phases of one run, each from its first epoch or where an interrupted run left it."""

    def __init__(self, run, cfg, model, strategy, checkpoints, data):
        self.run_folder, self.cfg, self.model, self.strategy = run, cfg, model, strategy
        self.store, self.state, self.data = checkpoints, checkpoints.state, data

    def run(self, phase, epochs, lr):
        """Train one phase, from its first epoch or where an interrupted run left it."""
        from runlib.tf_setup import import_keras
        keras = import_keras()

        from .callbacks import restore_optimizer
        from .model import compile_for_training, set_phase

        cfg, state, store, model, data = self.cfg, self.state, self.store, self.model, self.data
        resume = phase == state["phase"] and state["epoch"] > 0
        start = state["epoch"] if resume else 0
        cb_state = state.get("callbacks", {}) if resume else {}
        if resume and cb_state.get("early_stopping", {}).get("wait", 0) >= cfg["patience"]:
            start = epochs  # it had already stopped early
        if phase == 1 and start < epochs and uses_probe(cfg):
            self.probe()
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

    def probe(self):
        """Phase 1: the head as a logistic regression on the frozen backbone's features, solved to convergence."""
        from .probe import features, fit_head

        model, cfg, data, state = self.model, self.cfg, self.data, self.state
        t0 = time.time()
        log(f"phase 1 (head only, backbone frozen): features of {len(data.subset['train'])} training and "
            f"{len(data.subset['val'])} validation images, then the head fitted to convergence for each C")
        train_feats = features(model, dataset(data.images("train", cfg["image_size"]), cfg["batch_size"], cache=False))
        val_feats = features(model, data.val) if data.subset["val"] else (np.zeros((0, train_feats[0].shape[1])),
                                                                           np.zeros(0, int))
        kernel, bias, rows, best = fit_head(train_feats, val_feats, data.class_weight, len(data.index), log=log)
        model.get_layer("head_dense").set_weights([kernel, bias])
        log(f"phase 1 done in {time.time() - t0:.0f} s: C={best['C']:.3g} chosen on the validation split "
            f"(val accuracy {best['val_accuracy'] if best['val_accuracy'] is not None else float('nan'):.3f})")
        for row in rows:
            row["chosen"] = int(row is best)
            row["lr"] = None
        state["history"].extend(rows)
        value = best["val_loss"] if data.subset["val"] else best["loss"]
        if data.subset["val"]:  # the same measure phase 2's early stopping watches (unweighted), so "best" compares alike
            model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
            value = float(model.evaluate(data.val, verbose=0)[0])
        self.store.save_best(model, 1, 0, value, len(state["history"]))
        state["probe"] = {k: best[k] for k in ("C", "val_loss", "val_accuracy")}

    def callbacks(self, phase, epochs, lr, start, cb_state):
        """Early stopping, the learning-rate schedule, TensorBoard, the checkpoint and progress of one phase."""
        from runlib.tf_setup import import_keras
        keras = import_keras()

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
                                  EpochCheckpoint(self.store, phase, data.monitor, resumable),
                                  EpochProgress(phase, start, epochs)]


def uses_probe(cfg):
    """Phase 1 fits the head on cached features when the backbone is pretrained (and so frozen)."""
    return cfg.get("head", "probe") == "probe" and cfg.get("weights") not in (None, "none")


def phase_description(cfg, phase):
    if cfg.get("weights") in (None, "none"):
        return "random weights: the whole network trains" + ("" if phase == 1 else ", at the lower learning rate")
    return "head only, backbone frozen" if phase == 1 else "deeper layers unfrozen"




def set_precision(cfg, keras):
    """Set the run's Keras precision policy; the resolved one is recorded in config.json on the first start."""
    from .precision import machine_capabilities, resolve

    policy, why = resolve(cfg.get("precision", "float32"), *machine_capabilities())
    log(f"precision: {policy} ({why})")
    keras.mixed_precision.set_global_policy(policy)
    return policy
