"""A run's checkpoints: each epoch's weights and optimizer, committed so that a kill at any instant resumes."""
import numpy as np

from edge_runtime.files import atomic_path, write_json, write_text


class Checkpoints:
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

    def save_epoch(self, model, phase, epoch, row, callback_state, improved_to=None):
        """Commit one epoch's checkpoint; improved_to: the monitored value when it is the best so far."""
        from .callbacks import optimizer_state

        tag = f"p{phase}-e{epoch:04d}"
        self.state["last_file"] = self._save(f"epoch-{tag}.npz", model, phase, epoch, optimizer_state(model.optimizer))
        if improved_to is not None:
            self.state["best_file"] = self._save(f"best-{tag}.npz", model, phase, epoch)
            self.state["best"] = float(improved_to)
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
    lines = [",".join(keys)] + [",".join("" if row.get(k) is None
                                         else f"{row[k]:.6g}" if isinstance(row[k], float) else str(row[k])
                                         for k in keys) for row in history]
    write_text(path, "\n".join(lines) + "\n")
