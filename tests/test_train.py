"""Training: the run folder, the model's preprocessing, resume, overwrite protection, distribution."""
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import MOBILENET_WEIGHTS, TINY_ARGS, assert_one_line_error, run_cli
from runlib.run_folder import Run


def test_run_folder_holds_everything_later_stages_need(tiny_run):
    r = tiny_run
    for f in (r.model, r.labels, r.config_file, r.split_file, r.data_report, r.history, r.curves, r.metrics,
              r.confusion, r.augment_preview):
        assert f.exists() and f.stat().st_size > 0, f
    cfg = r.config()
    assert cfg["classes"] == r.class_names() == ["blue", "green", "red"]
    assert cfg["preprocessing"]["input_size"] == [64, 64]
    assert cfg["seed"] == 0 and cfg["versions"]["tensorflow"]
    # balanced class weights from the training split: the smallest class weighs most
    w = cfg["class_weights"]
    assert w["blue"] > w["green"] > w["red"]
    metrics = json.loads(r.metrics.read_text())
    for subset in ("val", "test"):
        m = metrics[subset]
        assert set(m) >= {"top1", "macro_f1", "balanced_accuracy", "per_class_recall", "confusion_matrix"}
        assert set(m["per_class_recall"]) == {"blue", "green", "red"}
    from train.probe import C_GRID

    history = r.history.read_text().splitlines()
    # phase 1: the head solved for every C on the grid (pretrained backbone); phase 2: 2 epochs
    assert history[0].startswith("phase,epoch") and len(history) == 1 + len(C_GRID) + 2
    state = r.state()
    assert state["probe"]["C"] in C_GRID and sum(h.get("chosen", 0) for h in state["history"]) == 1
    assert r.finished


def test_phase_one_solves_the_head_to_convergence():
    from train.probe import fit_head

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (3, 16))
    y = rng.integers(0, 3, 300)
    x = np.abs(centres[y] + rng.normal(0, 1, (300, 16)))
    x[:, 5] = 1e-4 * rng.random(300)  # a nearly dead feature must not get a huge weight
    kernel, bias, rows, best = fit_head((x[:200], y[:200]), (x[200:], y[200:]), {0: 1.0, 1: 1.0, 2: 1.0}, 3,
                                        log=lambda m: None)
    assert all(r["converged"] for r in rows)
    assert best["val_loss"] == min(r["val_loss"] for r in rows)
    assert np.mean((x[200:] @ kernel + bias).argmax(1) == y[200:]) == best["val_accuracy"] >= 0.9
    assert np.abs(kernel[5]).max() <= 10 * np.median(np.abs(kernel))


def test_saved_model_holds_no_optimizer_state(tiny_export):
    # the inference model is the size of its weights: about the float32 TFLite file, not three times it
    fp32 = tiny_export.export_dir / "model-fp32.tflite"
    assert tiny_export.model.stat().st_size <= 1.5 * fp32.stat().st_size + 200_000


def test_tiny_model_learns_the_colours(tiny_run):
    """The tiny classes differ by colour alone: a working pipeline separates them."""
    metrics = json.loads(tiny_run.metrics.read_text())
    assert metrics["val"]["top1"] >= 0.8, metrics["val"]


def test_saved_model_takes_raw_pixels_and_has_no_augmentation(tiny_run):
    import tf_keras as keras

    model = keras.models.load_model(str(tiny_run.model), compile=False)
    assert model.input_shape == (None, 64, 64, 3)
    names = [l.name for l in model.layers]
    assert "augment" not in names and not any(n.startswith("random_") for n in names)
    assert not any(isinstance(l, keras.Model) for l in model.layers), "graph must be flat for tfmot"
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    a, b = model(x, training=False).numpy(), model(x, training=False).numpy()
    assert np.allclose(a, b) and np.allclose(a.sum(1), 1, atol=1e-5)


@pytest.mark.parametrize("backbone,module", [("resnet50", "resnet50"), ("mobilenet", "mobilenet")])
def test_preprocess_layer_equals_keras_preprocess_input(backbone, module):
    import tf_keras as keras
    from train.model import build_model

    cfg = {"backbone": backbone, "alpha": 0.25, "weights": "none", "image_size": [32, 32], "dropout": 0.0}
    model = build_model(cfg, 2)
    x = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    ours = model.get_layer("preprocess")(x).numpy()
    theirs = getattr(keras.applications, module).preprocess_input(x.copy())
    assert np.allclose(ours, theirs, atol=1e-3)


def test_phase_two_unfreezes_deeper_layers_but_not_batchnorm():
    import tf_keras as keras
    from train.model import backbone_layers, build_model, set_phase

    cfg = {"backbone": "mobilenet", "alpha": 0.25, "weights": "none", "image_size": [32, 32], "dropout": 0.0,
           "unfreeze_from": "conv_dw_12"}
    model = build_model(cfg, 2)
    cfg["weights"] = "pretrained.h5"  # set_phase only asks whether the weights were random
    head_only = set_phase(model, 1, cfg)
    assert not any(l.trainable for l in backbone_layers(model))
    more = set_phase(model, 2, cfg)
    assert more > head_only
    layers = backbone_layers(model)
    start = next(i for i, l in enumerate(layers) if l.name.startswith("conv_dw_12"))
    assert not any(l.trainable for l in layers[:start])
    assert all(l.trainable != isinstance(l, keras.layers.BatchNormalization) for l in layers[start:] if l.weights)
    assert not model.get_layer("preprocess").trainable


def test_random_weights_train_everything_in_both_phases():
    import tf_keras as keras

    from train.model import backbone_layers, build_model, set_phase

    cfg = {"backbone": "mobilenet", "alpha": 0.25, "weights": "none", "image_size": [32, 32], "dropout": 0.0,
           "train_bn": True}
    model = build_model(cfg, 2)
    for phase in (1, 2):
        set_phase(model, phase, cfg)
        layers = backbone_layers(model)
        assert all(l.trainable for l in layers), phase
        assert any(isinstance(l, keras.layers.BatchNormalization) for l in layers)  # BatchNorm trains too
    # with pretrained weights, by contrast, phase 1 freezes the backbone and phase 2 only its deeper part
    frozen = dict(cfg, weights="imagenet", train_bn=False)
    set_phase(model, 1, frozen)
    assert not any(l.trainable for l in backbone_layers(model))
    set_phase(model, 2, frozen)
    trainable = [l.trainable for l in backbone_layers(model)]
    assert any(trainable) and not all(trainable)


def test_local_weights_file_loads_and_a_mismatched_one_is_named(tmp_path):
    from edge_runtime.errors import InputError
    from train.model import build_model

    if not MOBILENET_WEIGHTS.exists():
        pytest.skip("shared weights not present")
    cfg = {"backbone": "mobilenet", "alpha": 0.25, "weights": str(MOBILENET_WEIGHTS), "image_size": [64, 64], "dropout": 0.0}
    build_model(cfg, 3)
    with pytest.raises(InputError, match=r"does not fit backbone mobilenet \(alpha 0.5\)"):
        build_model({**cfg, "alpha": 0.5}, 3)


def test_finished_run_is_not_overwritten(tiny_run, tiny_data):
    before = tiny_run.model.stat().st_mtime_ns
    proc = run_cli("-m", "train", "--data", str(tiny_data), "--run", str(tiny_run.path), *TINY_ARGS)
    assert_one_line_error(proc, "already finished", "--overwrite")
    assert tiny_run.model.stat().st_mtime_ns == before


def test_interrupted_training_resumes_from_last_checkpoint(tmp_path, tiny_data, monkeypatch):
    from train import callbacks
    from train.__main__ import main

    run = tmp_path / "resumable"
    # --head sgd: phase 1 as epochs, so the interruption falls inside a phase (the probe has no epochs)
    args = ["--data", str(tiny_data), "--run", str(run), *TINY_ARGS, "--head", "sgd"]
    original = callbacks.EpochCheckpoint.on_epoch_end
    calls = {"n": 0}

    def stop_after_two(self, epoch, logs=None):
        original(self, epoch, logs)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(callbacks.EpochCheckpoint, "on_epoch_end", stop_after_two)
    assert main(args) == 130
    state = Run(run).state()
    assert (state["status"], state["phase"], state["epoch"]) == ("training", 1, 2)
    assert not Run(run).model.exists()
    # what epoch 2 committed: weights and optimizer (Adam's moments and step count) in one file
    with np.load(Run(run).checkpoints / state["last_file"]) as z:
        assert (int(z["phase"]), int(z["epoch"])) == (1, 2)
        saved_w = [z[k] for k in sorted((k for k in z.files if k[0] == "w" and k[1:].isdigit()), key=lambda k: int(k[1:]))]
        saved_o = [z[k] for k in sorted((k for k in z.files if k[0] == "o" and k[1:].isdigit()), key=lambda k: int(k[1:]))]
    assert saved_o and any(np.any(o != 0) for o in saved_o)
    # the resumed run starts from exactly those: the model's weights right after loading, and the
    # optimizer's variables right after restoring
    from train import checkpoints

    seen = {}
    load, restore = checkpoints.Checkpoints.load_weights, callbacks.restore_optimizer

    def record_load(self, model, which="last"):
        load(self, model, which)
        seen.setdefault("weights", [w.copy() for w in model.get_weights()])

    def record_restore(optimizer, model, values):
        restore(optimizer, model, values)
        seen.setdefault("optimizer", [v.numpy().copy() for v in optimizer.variables()])

    monkeypatch.setattr(checkpoints.Checkpoints, "load_weights", record_load)
    monkeypatch.setattr(callbacks, "restore_optimizer", record_restore)
    monkeypatch.setattr(callbacks.EpochCheckpoint, "on_epoch_end", original)
    assert main(args) == 0
    assert len(seen["weights"]) == len(saved_w) and all(np.array_equal(a, b) for a, b in zip(seen["weights"], saved_w))
    assert len(seen["optimizer"]) == len(saved_o) and all(np.array_equal(a, b) for a, b in zip(seen["optimizer"], saved_o))
    state = Run(run).state()
    assert state["status"] == "finished"
    epochs = [(h["phase"], h["epoch"]) for h in state["history"]]
    assert epochs == [(1, 1), (1, 2), (1, 3), (2, 4), (2, 5)], "resumed at epoch 3, nothing repeated"
    assert Run(run).model.exists()


def test_resume_with_other_options_is_refused(tmp_path, tiny_data):
    run = tmp_path / "r"
    run.mkdir()
    (run / "state.json").write_text('{"status": "training", "phase": 1, "epoch": 1, "history": []}')
    (run / "config.json").write_text(json.dumps({"backbone": "resnet50"}))
    proc = run_cli("-m", "train", "--data", str(tiny_data), "--run", str(run), *TINY_ARGS)
    assert_one_line_error(proc, "started with other options")


def test_unknown_unfreeze_block_is_one_line(tmp_path, tiny_data):
    proc = run_cli("-m", "train", "--data", str(tiny_data), "--run", str(tmp_path / "r"), *TINY_ARGS,
                   "--unfreeze-from", "no_such_block")
    assert_one_line_error(proc, "no_such_block")


@pytest.mark.slow
def test_one_epoch_under_mirrored_strategy_on_two_logical_cpus(tmp_path, tiny_data):
    run = tmp_path / "mirrored"
    proc = run_cli("-m", "train", "--data", str(tiny_data), "--run", str(run), "--logical-cpus", "2",
                   "--backbone", "mobilenet", "--alpha", "0.25", "--weights", "none", "--image-size", "32",
                   "--epochs-head", "1", "--epochs-finetune", "1", "--batch-size", "8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MirroredStrategy over 2 devices" in proc.stdout
    assert Run(run).finished


def test_preview_augment_writes_a_png(tmp_path, tiny_data):
    out = tmp_path / "grid.png"
    proc = run_cli("-m", "train", "preview-augment", "--data", str(tiny_data), "--image-size", "32", "--count", "3",
                   "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    from PIL import Image
    assert Image.open(out).size[0] > 100


def test_learning_rate_schedules_depend_on_the_epoch_alone():
    from train.callbacks import WarmupCosine

    s = WarmupCosine(1e-3, epochs=10, warmup=2)
    rates = [s.rate(e) for e in range(10)]
    assert rates[0] < rates[1] < rates[2] == 1e-3  # linear warm-up to the peak
    assert all(a > b for a, b in zip(rates[2:], rates[3:]))  # then strictly down
    assert abs(rates[-1] - 1e-5) < 1e-12  # to 1% of the peak on the last epoch
    assert [WarmupCosine(1e-3, epochs=10, warmup=2).rate(e) for e in range(10)] == rates  # resume gives the same


def test_demo_leaves_out_mirror_images_and_user_data_keeps_them():
    from train import config
    from train.augment import augmenter

    demo = config.resolve({}, demo=True)
    data = config.resolve({"data": "x"}, demo=False)
    assert demo["flip"] is False and data["flip"] is True
    names = lambda aug: [type(l).__name__ for l in aug.layers]  # noqa: E731
    assert "RandomFlip" not in names(augmenter(1.0, flip=False)) and "RandomFlip" in names(augmenter(1.0, flip=True))


def test_auto_precision_resolves_as_stated():
    from edge_runtime.errors import InputError
    from train.precision import resolve

    assert resolve("auto", ["avx2", "fma", "avx512f", "avx512_bf16"])[0] == "mixed_bfloat16"
    assert resolve("auto", ["avx2", "amx_bf16"])[0] == "mixed_bfloat16"
    assert resolve("auto", ["avx2", "fma", "avx512_vnni"]) == (
        "float32", "auto: no GPU, and this CPU has no bfloat16 instructions (amx_bf16, avx512_bf16)")
    assert resolve("auto", ["avx512_bf16"], [(8, 0)])[0] == "mixed_float16"  # a GPU decides, not the CPU
    assert resolve("auto", [], [(6, 1)])[0] == "float32"  # a GPU without fast float16
    assert resolve("float32", ["avx512_bf16"]) == ("float32", "asked for")
    assert resolve("mixed_bfloat16", []) == ("mixed_bfloat16", "asked for")
    with pytest.raises(InputError, match="--precision must be one of"):
        resolve("bf16", [])


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_the_saved_model_is_float32_whatever_the_precision(tmp_path, tiny_data, precision):
    import tf_keras as keras

    from train.__main__ import main

    run = tmp_path / precision
    assert main(["--data", str(tiny_data), "--run", str(run), *TINY_ARGS, "--head", "sgd", "--epochs-head", "1",
                 "--epochs-finetune", "1", "--precision", precision]) == 0
    assert Run(run).state()["precision"] == precision and Run(run).config()["precision"] == precision
    keras.mixed_precision.set_global_policy("float32")
    model = keras.models.load_model(str(Run(run).model), compile=False)
    assert all(w.dtype == np.float32 for w in model.get_weights())
    assert all(l.dtype_policy.name == "float32" for l in model.layers)
    out = model(np.zeros((1, 64, 64, 3), np.float32))
    assert out.dtype.name == "float32" and np.isfinite(out.numpy()).all()


def test_step_time_prints_one_row_per_precision_and_refuses_an_unknown_one():
    from conftest import assert_one_line_error, run_cli

    proc = run_cli("-m", "checks.step_time", "--backbone", "mobilenet", "--image-size", "32", "--batch", "2",
                   "--precision", "float32,mixed_bfloat16", "--max-seconds", "1")
    assert proc.returncode == 0, proc.stderr
    rows = [l for l in proc.stdout.splitlines() if l.startswith("| ") and not l.startswith("| precision")]
    assert [r.split(" | ")[0] for r in rows] == ["| float32", "| mixed_bfloat16"]
    assert rows[0].split(" | ")[2] == "1.00" and "CPU flags:" in proc.stdout
    assert_one_line_error(run_cli("-m", "checks.step_time", "--precision", "float64"), "--precision")


def test_extra_data_joins_the_training_split_only_and_crop_field_augmentation_and_smoothing_train(tmp_path, tiny_data):
    """The review loop: labelled images from elsewhere (--extra-data) go into training, never validation or
    test; with the field recipe's options on (a crop contract, field augmentation, label smoothing)."""
    import csv
    import json
    import shutil

    from conftest import make_tree

    extra = make_tree(tmp_path / "extra", {"red": 3, "green": 2}, size=48)
    shutil.copy(next((tiny_data / "blue").iterdir()), extra / "green" / "copy-of-a-blue.png")  # mislabelled copy
    run = tmp_path / "r"
    args = ["-m", "train", "--data", str(tiny_data), "--run", str(run), "--backbone", "mobilenet", "--alpha", "0.25",
            "--weights", "none", "--image-size", "32", "--epochs-head", "1", "--epochs-finetune", "1",
            "--batch-size", "16", "--resize", "crop", "--augment-style", "field", "--label-smoothing", "0.1"]
    proc = run_cli(*args, "--extra-data", str(extra))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(open(run / "split.csv")))
    outside = [r for r in rows if Path(r["path"]).is_absolute()]
    held = {r["sha256"] for r in rows if r["subset"] in ("val", "test")}
    assert 5 <= len(outside) <= 6 and {r["subset"] for r in outside} == {"train"}
    assert not any(r["sha256"] in held for r in outside)  # a copy of a held-out image never trains
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["preprocessing"]["fit"] == "crop" and cfg["preprocessing"]["version"] == 2
    report = json.loads((run / "data_report.json").read_text())["extra_data"]
    assert report["images"] == len(outside)

    (extra / "moth").mkdir()
    make_tree(extra / "moth", {"x": 1})
    bad = run_cli(*args[:5], str(tmp_path / "r2"), *args[6:], "--extra-data", str(extra))
    assert_one_line_error(bad, "--extra-data", "moth", "name no class")
