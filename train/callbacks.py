"""Callbacks that survive an interruption: their state is saved with every epoch's checkpoint."""
import numpy as np
from runlib.tf_setup import import_keras

keras = import_keras()


class _Resumable:
    """Mixin: restore wait/best counters after Keras resets them in on_train_begin."""

    STATE = ("wait", "best")

    def __init__(self, *args, resume_state=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.resume_state = resume_state or {}

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        for k, v in self.resume_state.items():
            setattr(self, k, v)

    def get_state(self):
        return {k: float(getattr(self, k)) if k == "best" else int(getattr(self, k)) for k in self.STATE}


class EarlyStopping(_Resumable, keras.callbacks.EarlyStopping):
    pass


class ReduceLROnPlateau(_Resumable, keras.callbacks.ReduceLROnPlateau):
    STATE = ("wait", "best", "cooldown_counter")


def warmup_rate(peak, epoch, warmup):
    """The learning rate in epoch `epoch` (from 0) of a linear warm-up over `warmup` epochs, which
    reaches `peak` on epoch `warmup`."""
    return peak * (epoch + 1) / (warmup + 1)


class WarmupCosine(keras.callbacks.Callback):
    """Learning rate per epoch: linear warm-up over `warmup` epochs, then a cosine down to `floor` x peak
    at the phase's last epoch. It depends on the epoch number alone, so a resumed run picks it up exactly."""

    def __init__(self, peak, epochs, warmup=0, floor=0.01):
        super().__init__()
        self.peak, self.epochs, self.warmup, self.floor = peak, epochs, min(warmup, max(0, epochs - 1)), floor

    def rate(self, epoch):
        import math

        if epoch < self.warmup:
            return warmup_rate(self.peak, epoch, self.warmup)
        span = max(1, self.epochs - 1 - self.warmup)
        t = min(1.0, (epoch - self.warmup) / span)
        return self.peak * (self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * t)))

    def on_epoch_begin(self, epoch, logs=None):
        keras.backend.set_value(self.model.optimizer.learning_rate, self.rate(epoch))


class Warmup(keras.callbacks.Callback):
    """Linear warm-up of the learning rate over the first `epochs` epochs of a phase; after that the
    plateau schedule owns it. Also a function of the epoch number alone (resume-safe)."""

    def __init__(self, peak, epochs):
        super().__init__()
        self.peak, self.epochs = peak, epochs

    def on_epoch_begin(self, epoch, logs=None):
        if epoch < self.epochs:
            keras.backend.set_value(self.model.optimizer.learning_rate, warmup_rate(self.peak, epoch, self.epochs))
        elif epoch == self.epochs:
            keras.backend.set_value(self.model.optimizer.learning_rate, self.peak)


def optimizer_state(optimizer):
    return [v.numpy() for v in optimizer.variables()]


def restore_optimizer(optimizer, model, values):
    """Build the optimizer's slots for the model's trainable weights and load saved values."""
    optimizer.build(model.trainable_variables)
    variables = optimizer.variables()
    if len(variables) != len(values):
        raise ValueError(f"checkpoint has {len(values)} optimizer variables, model needs {len(variables)}")
    for var, value in zip(variables, values):
        var.assign(value)


class EpochCheckpoint(keras.callbacks.Callback):
    """After every epoch: weights, optimizer, best weights, history and callback state, then state.json last.

    state.json is written last and atomically, so it always points at a complete checkpoint.
    """

    def __init__(self, store, phase, monitor, watched):
        super().__init__()
        self.store, self.phase, self.monitor, self.watched = store, phase, monitor, watched

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        lr = float(keras.backend.get_value(self.model.optimizer.learning_rate))
        row = {"phase": self.phase, "epoch": len(self.store.state["history"]) + 1, "lr": lr}
        row.update({k: float(v) for k, v in logs.items() if k != "lr"})
        value = logs.get(self.monitor)
        improved = value is not None and value < self.store.state.get("best", np.inf)
        self.store.save_epoch(self.model, self.phase, epoch + 1, row,
                              {name: cb.get_state() for name, cb in self.watched.items()},
                              improved_to=value if improved else None)


class EpochProgress(keras.callbacks.Callback):
    """Epochs done of the phase, with the time left at the rate so far (Keras shows the epoch itself)."""

    def __init__(self, phase, start, epochs, stage="train"):
        super().__init__()
        from runlib.progress import Progress

        self.progress = Progress(stage, epochs - start, f"epochs of {phase if isinstance(phase, str) else f'phase {phase}'}")
        self.start = start

    def on_epoch_end(self, epoch, logs=None):
        self.progress.update(epoch + 1 - self.start, "early stop" if self.model.stop_training else "")
