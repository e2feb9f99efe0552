"""Callbacks that survive an interruption: their state is saved with every epoch's checkpoint."""
import numpy as np
import tf_keras as keras


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

    def __init__(self, store, phase, monitor, watched, is_chief=True):
        super().__init__()
        self.store, self.phase, self.monitor, self.watched, self.is_chief = store, phase, monitor, watched, is_chief

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        lr = float(keras.backend.get_value(self.model.optimizer.learning_rate))
        row = {"phase": self.phase, "epoch": len(self.store.state["history"]) + 1, "lr": lr}
        row.update({k: float(v) for k, v in logs.items() if k != "lr"})
        value = logs.get(self.monitor)
        improved = value is not None and value < self.store.state.get("best", np.inf)
        if not self.is_chief:
            return
        self.store.save_epoch(self.model, self.phase, epoch + 1, row, improved, value,
                              {name: cb.get_state() for name, cb in self.watched.items()})
