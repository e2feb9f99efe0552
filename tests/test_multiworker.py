"""Two training workers on 127.0.0.1 under MultiWorkerMirroredStrategy, and resuming where a run stopped."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import REPO, TINY_ARGS
from runlib.run_folder import Run

pytestmark = pytest.mark.slow

# random weights: every layer trains, so BatchNorm statistics and all-reduced gradients are both in play
ARGS = ["--backbone", "mobilenet", "--alpha", "0.25", "--weights", "none", "--image-size", "32", "--batch-size", "8",
        "--augment", "0.2", "--patience", "50"]


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def start_workers(run, data, extra, logs):
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    procs = []
    for i in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}))
        out = open(logs / f"worker{i}.log", "a")
        procs.append(subprocess.Popen([sys.executable, "-m", "train", "--data", str(data), "--run", str(run), *ARGS, *extra],
                                      cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, text=True))
    return procs


def wait_all(procs, timeout=600):
    return [p.wait(timeout=timeout) for p in procs]


def kill_when(procs, run, condition, timeout=600):
    """SIGKILL every worker as soon as the chief's state.json satisfies condition: a hard stop, no clean-up."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        state = Run(run).state() if Run(run).state_file.exists() else {}
        if state and condition(state):
            for p in procs:
                p.send_signal(signal.SIGKILL)
            wait_all(procs)
            return state
        assert all(p.poll() is None for p in procs), "a worker ended before the interruption point"
        time.sleep(0.02)
    raise AssertionError("interruption point never reached")


def fingerprints(logs):
    out = []
    for i in range(2):
        lines = [l for l in (logs / f"worker{i}.log").read_text().splitlines() if "weights fingerprint" in l]
        out.append(lines[-1].split()[-1])
    return out


def test_two_workers_train_one_run_the_chief_alone_writes_it(tmp_path, tiny_data):
    run = tmp_path / "run"
    procs = start_workers(run, tiny_data, ["--epochs-head", "2", "--epochs-finetune", "1"], tmp_path)
    assert wait_all(procs) == [0, 0], (tmp_path / "worker1.log").read_text()[-3000:]
    log0, log1 = ((tmp_path / f"worker{i}.log").read_text() for i in range(2))
    assert "MultiWorkerMirroredStrategy over 2 replicas (2 workers)" in log0
    a, b = fingerprints(tmp_path)
    assert a == b, "the workers' final weights differ"
    assert Run(run).finished and Run(run).model.exists()
    # the other worker wrote only to its own scratch folder, and removed it
    scratch = [l.split(": ", 1)[1] for l in log1.splitlines() if "scratch folder" in l][0]
    assert str(run) not in scratch and not os.path.exists(scratch)
    # the run, its lock (an OS lock file beside it, kept for the next writer) and the two logs: nothing else
    assert sorted(p.name for p in run.parent.iterdir()) == [".run.lock", "run", "worker0.log", "worker1.log"]


def test_two_workers_resume_after_a_kill_in_phase_one_and_in_phase_two(tmp_path, tiny_data):
    run = tmp_path / "run"
    extra = ["--epochs-head", "4", "--epochs-finetune", "3"]
    at_kill = kill_when(start_workers(run, tiny_data, extra, tmp_path), run, lambda s: s["phase"] == 1 and s["epoch"] >= 1)
    assert at_kill["status"] == "training" and not Run(run).model.exists()
    at_kill2 = kill_when(start_workers(run, tiny_data, extra, tmp_path), run,
                         lambda s: s["phase"] == 2 and s["epoch"] >= 1 and not s["phase_complete"])
    assert at_kill2["history"][: len(at_kill["history"])] == at_kill["history"], "phase 1 history kept"
    assert wait_all(start_workers(run, tiny_data, extra, tmp_path)) == [0, 0], (tmp_path / "worker1.log").read_text()[-3000:]
    state = Run(run).state()
    assert state["status"] == "finished"
    epochs = [(h["phase"], h["epoch"]) for h in state["history"]]
    assert epochs == [(1, 1), (1, 2), (1, 3), (1, 4), (2, 5), (2, 6), (2, 7)], "every epoch once, in order"
    assert state["history"][: len(at_kill2["history"])] == at_kill2["history"]
    logs = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    for text in logs:
        assert "resuming" in text and "at phase 2, epoch" in text
    a, b = fingerprints(tmp_path)
    assert a == b


def test_a_run_stopped_early_resumes_in_the_next_phase(tmp_path, tiny_data, monkeypatch):
    """Killed right after early stopping ended phase 1 (before the phase was marked done): phase 1 must not go on."""
    from train import callbacks
    from train.__main__ import main

    run = tmp_path / "early"
    # learning rate 0 and a frozen pretrained backbone: validation loss cannot improve, so patience 1 stops at epoch 2
    args = ["--data", str(tiny_data), "--run", str(run), *TINY_ARGS, "--head", "sgd", "--lr", "0", "--patience", "1",
            "--epochs-head", "6"]
    original = callbacks.EpochCheckpoint.on_epoch_end

    def die_when_stopping(self, epoch, logs=None):
        original(self, epoch, logs)
        if self.model.stop_training:
            raise KeyboardInterrupt

    monkeypatch.setattr(callbacks.EpochCheckpoint, "on_epoch_end", die_when_stopping)
    assert main(args) == 130
    state = Run(run).state()
    assert (state["phase"], state["phase_complete"]) == (1, False) and state["epoch"] < 6
    stopped_at = state["epoch"]
    monkeypatch.setattr(callbacks.EpochCheckpoint, "on_epoch_end", original)
    assert main(args) == 0
    history = Run(run).state()["history"]
    assert max(h["epoch"] for h in history if h["phase"] == 1) == stopped_at, "phase 1 did not train on after stopping"
    assert [h["phase"] for h in history].count(2) == 2
