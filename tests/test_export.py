"""Export: every variant from one table, a manifest that stays consistent, atomic files."""
import dataclasses
import json

import numpy as np
import pytest

from conftest import assert_one_line_error, run_cli
from edge_runtime import Classifier, load_batch
from export.variants import VARIANTS
from runlib.options import resolve


def test_every_variant_loads_in_edge_runtime_and_gives_probabilities(tiny_export):
    export_dir = tiny_export.export_dir
    manifest = json.loads((export_dir / "manifest.json").read_text())
    assert set(manifest["variants"]) == {v.name for v in VARIANTS}
    samples = [s for s in tiny_export.split() if s.subset == "test"]
    pixels = load_batch([tiny_export.data_root() / s.path for s in samples], (64, 64))
    every = load_batch([tiny_export.data_root() / s.path for s in tiny_export.split()], (64, 64))  # 108 images
    keras_probs = _keras_probabilities(tiny_export.model, every)
    for v in VARIANTS:
        entry = manifest["variants"][v.name]
        assert entry["status"] == "ok", entry
        assert (export_dir / entry["file"]).stat().st_size == entry["bytes"]
        # verifies the checksum against the manifest; library-default settings, whatever a benchmark run
        # before this test recorded for this machine (they change float rounding, not predictions)
        clf = Classifier(export_dir / entry["file"], settings={})
        probs = clf.probabilities(pixels)
        assert probs.shape == (len(samples), 3)
        assert np.allclose(probs.sum(1), 1.0, atol=1e-5)
        assert clf.labels == ["blue", "green", "red"]
        # every variant, the int8 ones included, predicts what the model it came from predicts, on every
        # image of the tiny set (the test split alone is about 15 images: one flip would be 7 points)
        source = (_keras_probabilities(export_dir / entry["reference_model"], every, qat=True)
                  if entry.get("reference_model") else keras_probs)
        mine = clf.probabilities(every)
        assert np.mean(mine.argmax(1) == source.argmax(1)) >= 0.95, (v.name, np.mean(mine.argmax(1) == source.argmax(1)))
        if v.precision == "float32":
            assert np.abs(mine - source).max() < 1e-4, v.name
        if v.integer_io:
            assert entry["inputs"][0]["dtype"] == "uint8" and entry["outputs"][0]["dtype"] == "uint8"
            assert entry["inputs"][0]["quantization"]["scale"] > 0
        if v.calibrated:  # every integer variant takes uint8 pixels, as the contract says (onnx-int8 casts inside)
            assert entry["inputs"][0]["dtype"] == "uint8", v.name
            assert entry["calibration_images"] > 0
        if v.name in ("tflite-int8", "onnx-int8"):  # bias correction: tried only where the plain file misses
            bc = entry["bias_correction"]            # the budget, kept only where it brings the file closer
            if not bc["tried"]:
                assert bc["why"] == "the plain file meets the budget", v.name
            else:
                plain, fixed = bc["validation_plain"], bc["validation_corrected"]
                assert bc["layers"] > 0 and bc["images"] == entry["calibration_images"]
                meets = fixed["agreement"] >= 0.98 and fixed["top1_change_points"] >= -1.0
                assert not bc["kept"] or meets or fixed["mean_abs_prob_diff"] < plain["mean_abs_prob_diff"], bc
        for key in ("sha256", "inputs", "outputs", "seconds", "source_sha256", "smoke_check"):
            assert entry[key], (v.name, key)
    assert manifest["tool_versions"]["tf2onnx"] and manifest["preprocessing"]["input_size"] == [64, 64]
    assert (export_dir / "labels.txt").read_text().split() == ["blue", "green", "red"]


def _keras_probabilities(path, pixels, qat=False):
    from train.model import load_keras

    return load_keras(path, quantization_aware=qat).predict(pixels.astype(np.float32), verbose=0)


def test_onnx_files_carry_labels_and_a_dynamic_batch(tiny_export):
    import onnx

    for name in ("model-fp32.onnx", "model-int8.onnx"):
        model = onnx.load(str(tiny_export.export_dir / name))
        meta = {p.key: p.value for p in model.metadata_props}
        assert json.loads(meta["labels"]) == ["blue", "green", "red"]
        assert model.opset_import[0].version >= 17
        dim0 = model.graph.input[0].type.tensor_type.shape.dim[0]
        assert dim0.dim_param or not dim0.dim_value


def test_qat_variant_was_quantization_aware_trained(tiny_export):
    entry = json.loads((tiny_export.export_dir / "manifest.json").read_text())["variants"]["tflite-qat-int8"]
    assert entry["qat_epochs"] == 1 and len(entry["qat_history"]["loss"]) == 1
    # each stage timed, so the split between QAT's training epochs and the rest can be shown
    assert set(entry["stage_seconds"]) == {"fake-quant model", "ranges", "fine-tune epochs", "convert", "save source"}


def test_a_failing_converter_leaves_the_others_and_the_manifest_consistent(tiny_export, tmp_path):
    from export.exporter import export_run

    export_dir = tiny_export.export_dir
    good = export_dir / "model-dynamic.tflite"
    before = good.read_bytes()

    def broken(ctx, path):
        path.write_bytes(b"half a model")  # a partial file must never land
        raise RuntimeError("converter exploded")

    table = [dataclasses.replace(v, convert=broken) if v.name == "tflite-dynamic" else v
             for v in VARIANTS if v.name in ("tflite-dynamic", "tflite-fp32")]
    manifest, failed = export_run(tiny_export, resolve("export", {"smoke_images": 4}), variants=table)
    assert failed == ["tflite-dynamic"]
    assert good.read_bytes() == before, "the earlier good file survives a failed re-export"
    entry = manifest["variants"]["tflite-dynamic"]
    assert entry["status"] == "ok" and "converter exploded" in entry["last_error"]
    assert manifest["variants"]["tflite-fp32"]["status"] == "ok"
    on_disk = json.loads((export_dir / "manifest.json").read_text())
    assert on_disk["variants"]["tflite-dynamic"]["last_error"] == entry["last_error"]
    assert not list(export_dir.glob(".*tmp*")) and not list(export_dir.glob(".model-*"))


def test_a_variant_that_never_worked_is_marked_failed(tiny_run, tmp_path):
    import shutil
    from export.exporter import export_run
    from runlib.run_folder import Run

    run = Run(tmp_path / "copy")
    shutil.copytree(tiny_run.path, run.path, ignore=shutil.ignore_patterns("export", "checkpoints", "logs"))
    fp32 = next(v for v in VARIANTS if v.name == "tflite-fp32")

    def broken(change):
        """A converter that really writes a bad file: the run's model changed by `change`, converted."""
        def convert(ctx, path):
            import tensorflow as tf
            import tf_keras as keras

            model = keras.models.clone_model(ctx.model)
            model.set_weights(ctx.model.get_weights())
            with open(path, "wb") as f:
                f.write(tf.lite.TFLiteConverter.from_keras_model(change(model)).convert())
        return convert

    def nan_output(model):  # every probability NaN (a NaN *inside* softmax comes out as 1/classes)
        import tf_keras as keras

        return keras.Model(model.input, keras.layers.Rescaling(float("nan"))(model.output))

    def renamed_classes(model):  # every class's score moved to the next class
        head = model.get_layer("head_dense")
        w, b = head.get_weights()
        head.set_weights([np.roll(w, 1, axis=1), np.roll(b, 1)])
        return model

    nan, shuffled = broken(nan_output), broken(renamed_classes)
    for convert, message in ((nan, "NaN"), (shuffled, "agrees with the Keras model on only")):
        manifest, failed = export_run(run, resolve("export", {"smoke_images": 8}),
                                      [dataclasses.replace(fp32, convert=convert)])
        assert failed == ["tflite-fp32"]
        entry = manifest["variants"]["tflite-fp32"]
        assert entry["status"] == "failed" and message in entry["error"], entry
        assert not (run.export_dir / "model-fp32.tflite").exists()


def test_cli_errors_are_one_line(tmp_path, tiny_run):
    assert_one_line_error(run_cli("-m", "export", "--run", str(tmp_path / "nope")), "does not exist")
    assert_one_line_error(run_cli("-m", "export", "--run", str(tiny_run.path), "--variants", "tflite-int4"),
                          "unknown variant 'tflite-int4'")
    assert_one_line_error(run_cli("-m", "export", "--run", str(tiny_run.path), "--seed", "-1"), "--seed at least 0")
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    (incomplete / "config.json").write_text("{}")
    assert_one_line_error(run_cli("-m", "export", "--run", str(incomplete)), "incomplete")


@pytest.mark.slow
def test_resnet50_int8_is_at_most_three_tenths_of_float32(tmp_path):
    """Conversion only, random weights at 32 px: the size ratio does not depend on training."""
    import tensorflow as tf
    from train.model import build_model

    model = build_model({"backbone": "resnet50", "weights": "none", "image_size": [32, 32], "dropout": 0.0}, 10)
    fp32 = tf.lite.TFLiteConverter.from_keras_model(model).convert()

    class Ctx:
        calibration = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)

    from export.tflite_convert import _full_integer
    _full_integer(model, Ctx(), tmp_path / "int8.tflite")
    ratio = (tmp_path / "int8.tflite").stat().st_size / len(fp32)
    assert ratio <= 0.3, ratio


def test_a_uint8_input_cast_changes_no_output(tiny_export, tmp_path):
    """onnx-int8 takes uint8 pixels through a Cast at its input: the same outputs as the float-input graph."""
    import onnx

    from export.onnx_convert import uint8_input

    src = tiny_export.export_dir / "model-fp32.onnx"
    cast = tmp_path / "cast.onnx"
    onnx.save(uint8_input(onnx.load(str(src))), str(cast))
    pixels = np.random.default_rng(0).integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    a = Classifier(src, settings={}, verify=False).probabilities(pixels)
    cls = Classifier(cast, settings={}, labels=["blue", "green", "red"], verify=False)
    assert cls.input.dtype == "uint8"
    assert np.array_equal(a, cls.probabilities(pixels))
    # the twin checks/cast_cost.py times it against: the Cast taken out again, float32 in, the same outputs
    from checks.cast_cost import without_cast

    twin = tmp_path / "twin.onnx"
    onnx.save(without_cast(onnx.load(str(cast))), str(twin))
    back = Classifier(twin, settings={}, labels=["blue", "green", "red"], verify=False)
    assert back.input.dtype == "float32" and np.array_equal(a, back.probabilities(pixels))


def test_the_model_built_from_the_runs_config_answers_as_the_saved_file(tiny_run):
    from train.model import load_keras, load_run_model

    _, _, pixels = tiny_run.test_set()
    pixels = pixels[:6].astype(np.float32)
    built, whole = load_run_model(tiny_run), load_keras(tiny_run.model)
    assert [w.shape for w in built.weights] == [w.shape for w in whole.weights]
    np.testing.assert_allclose(built.predict(pixels, verbose=0), whole.predict(pixels, verbose=0), atol=1e-6)


def test_a_background_conversion_that_fails_says_why_in_the_parent(tmp_path):
    """The QAT conversion runs in a process of its own: its error (here, a run that does not exist) reaches
    the parent as that variant's failure with the child's traceback, and its scratch is the parent's to remove."""
    from types import SimpleNamespace

    from export.background import Job
    from export.variants import BY_NAME
    from runlib.options import resolve

    ctx = SimpleNamespace(run=SimpleNamespace(path=tmp_path / "no-such-run"),
                          export_config=resolve("export", {}), scratch=[],
                          source_sha256="0" * 64, budget=SimpleNamespace(rule=None))
    job = Job(BY_NAME["tflite-qat-int8"], ctx)
    assert ctx.scratch == [job.dir]
    with pytest.raises(RuntimeError) as e:
        job.result(tmp_path / "out.tflite")
    assert "no-such-run" in str(e.value) and "Traceback" in e.value.details
    assert not (tmp_path / "out.tflite").exists()


def _biased_model(rng):
    """A 1x1 conv, its BatchNormalization, a pool and a dense layer: linear throughout, so the mean output of
    int8-rounded weights can be worked out exactly. One large weight per output channel sets the channel's
    scale and leaves the others coarsely rounded, as in a real network's depthwise layers."""
    import tf_keras as keras

    inp = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(4, 1, use_bias=False, name="conv")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    out = keras.layers.Dense(3, name="dense")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inp, out)
    w = rng.normal(0, 0.05, (1, 1, 3, 4))
    w[0, 0, 0] = 1.0
    model.get_layer("conv").set_weights([w])
    model.get_layer("bn").set_weights([rng.uniform(0.5, 2, 4), rng.normal(0, 1, 4), rng.normal(0, 1, 4),
                                       rng.uniform(0.5, 2, 4)])
    d = rng.normal(0, 0.05, (4, 3))
    d[0] = 1.0
    model.get_layer("dense").set_weights([d, rng.normal(0, 1, 3)])
    return model


def test_bias_correction_gives_int8_rounded_weights_the_float_models_mean_output():
    from export.bias_correction import correct, symmetric_int8

    rng = np.random.default_rng(0)
    model = _biased_model(rng)
    images = rng.uniform(0, 255, (20, 6, 6, 3)).astype(np.float32)
    before = [w.copy() for w in model.get_weights()]
    fixed, record = correct(model, images)
    assert record["layers"] == 2 and record["images"] == 20
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))  # a copy is corrected

    def deployed(m):
        """What an int8 converter computes: the BatchNormalization folded into the conv, each kernel rounded
        with one symmetric scale per output channel (the pool commutes with a 1x1 conv)."""
        bn = m.get_layer("bn")
        g, b, mu, var = bn.get_weights()
        s = g / np.sqrt(var + bn.epsilon)
        folded = m.get_layer("conv").get_weights()[0][0, 0] * s
        h = images.mean((1, 2)).astype(np.float64) @ symmetric_int8(folded, (0,)) + (b - mu * s)
        k, c = m.get_layer("dense").get_weights()
        return h @ symmetric_int8(k, (0,)) + c

    want = model.predict(images, verbose=0).mean(0)
    shift = np.abs(deployed(model).mean(0) - want)
    assert shift.max() > 0.05, shift  # rounding the weights moves the mean output...
    left = np.abs(deployed(fixed).mean(0) - want)
    assert left.max() < shift.max() / 100, (left, shift)  # ...and the corrected biases take the move out


def test_every_export_option_reaches_the_exporters_context(tiny_run, monkeypatch):
    """An option the API accepts but never hands on is silently ignored (--bias-correction once was)."""
    import export
    from export import exporter

    seen = {}

    def capture(run, config, variants=None):
        ctx = exporter.Context(run, config)
        seen.update(vars(ctx), budget=ctx.budget)
        return {"variants": {}}, []

    monkeypatch.setattr(exporter, "export_run", capture)
    given = {"bias_correction": "off", "ranges": "minmax", "qat_labels": 0.5, "qat_lr": 3e-5, "qat_epochs": 3,
             "seed": 4}
    export.export(tiny_run.path, calibration_images=7, smoke_images=5, max_drop=2.0, min_agreement=0.9, **given)
    assert {k: seen[k] for k in given} == given
    assert (seen["calibration_count"], seen["smoke_count"]) == (7, 5)
    assert (seen["budget"].max_drop, seen["budget"].min_agreement) == (2.0, 0.9)


def test_qat_auto_runs_only_when_the_post_training_file_misses_the_budget():
    from types import SimpleNamespace

    from export.exporter import skip_reason
    from export.variants import BY_NAME

    qat = BY_NAME["tflite-qat-int8"]

    def ctx(mode):
        return SimpleNamespace(export_config=SimpleNamespace(qat=mode), source_sha256="abc")

    def manifest(met, source="abc"):
        return {"variants": {"tflite-int8": {"status": "ok", "source_sha256": source,
                                             "fallback": {"met_budget": met, "kept_float": ["a"]}}}}

    assert "meets the parity budget" in skip_reason(qat, ctx("auto"), manifest(True))
    assert skip_reason(qat, ctx("auto"), manifest(False)) is None
    assert skip_reason(qat, ctx("auto"), manifest(True, source="old model")) is None  # another model's file
    assert skip_reason(qat, ctx("auto"), {"variants": {}}) is None
    assert skip_reason(qat, ctx("on"), manifest(True)) is None
    assert skip_reason(qat, ctx("off"), manifest(False)) == "--qat off"
    assert skip_reason(BY_NAME["tflite-int8"], ctx("off"), manifest(False)) is None
