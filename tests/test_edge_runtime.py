"""edge_runtime: TensorFlow-free, the preprocessing contract, quantized I/O, bad input."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import COLOURS, REPO, assert_one_line_error, make_image, run_cli
from edge_runtime.backends import TensorSpec
from edge_runtime.classifier import Classifier


def test_imports_and_predicts_where_tensorflow_cannot_be_imported(tiny_export, tmp_path):
    img = tmp_path / "x.png"
    make_image((220, 40, 40), 50).save(img)
    blocker = tmp_path / "block"
    (blocker / "tensorflow").mkdir(parents=True)
    (blocker / "tensorflow" / "__init__.py").write_text("raise ImportError('tensorflow is not on this device')")
    model = tiny_export.export_dir / "model-int8.tflite"
    proc = run_cli("-c", "import sys; sys.path.insert(0, sys.argv[1]); import runpy; sys.argv = sys.argv[1:]; "
                   "sys.argv[0] = 'edge_runtime'; runpy.run_module('edge_runtime', run_name='__main__')",
                   str(blocker), "predict", str(model), str(img), "--json", "--top-k", "2",
                   env={"PYTHONPATH": f"{blocker}:{REPO}"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    expected = Classifier(model).predict(str(img), top_k=2)  # the same file with TensorFlow importable
    assert len(out) == 1 and [t["label"] for t in out[0]["top_k"]] == [l for l, _ in expected]
    assert len(out[0]["top_k"]) == 2


def test_input_types_agree_and_topk_is_ordered(tiny_export, tmp_path):
    clf = Classifier(tiny_export.export_dir / "model-fp32.tflite")
    img = make_image((40, 200, 60), 50)
    path = tmp_path / "g.png"
    img.save(path)
    results = clf.predict([str(path), path.read_bytes(), img, np.asarray(img)], top_k=3)
    assert all(r == results[0] for r in results)
    probs = [p for _, p in results[0]]
    assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-5
    assert clf.predict(str(path), top_k=1) == [results[0][0]]  # one image in, one result out


def test_quantize_and_dequantize_use_the_models_parameters():
    clf = Classifier.__new__(Classifier)
    clf.input = TensorSpec("in", [1, 2, 2, 3], "int8", scale=2.0, zero_point=-128)
    clf.output = TensorSpec("out", [1, 3], "uint8", scale=1 / 256, zero_point=0)
    q = clf.quantize(np.array([0, 100, 255], np.uint8))
    assert q.dtype == np.int8 and q.tolist() == [-128, -78, 0]
    clf.input = TensorSpec("in", [1, 2, 2, 3], "uint8", scale=1.0, zero_point=0)  # the full-int8 exports' input
    px = np.array([0, 100, 255], np.uint8)
    assert clf.quantize(px) is px
    p = clf.dequantize(np.array([[64, 128, 64]], np.uint8))
    assert np.allclose(p, [[0.25, 0.5, 0.25]])

    # float outputs: normalised; a row summing to 0 becomes uniform, a NaN row stays NaN, an empty batch is empty
    clf.output = TensorSpec("out", [1, 3], "float32")
    p = clf.dequantize(np.array([[1, 2, 1], [0, 0, 0], [np.nan, 1, 1]], np.float32))
    assert np.allclose(p[0], [0.25, 0.5, 0.25]) and np.allclose(p[1], 1 / 3) and np.isnan(p[2]).all()
    assert clf.dequantize(np.zeros((0, 3), np.float32)).shape == (0, 3)


@pytest.mark.parametrize("variant", ["tflite-fp32", "tflite-int8", "onnx-fp32", "onnx-int8"])
def test_one_classifier_shared_by_many_threads_gives_each_its_own_answer(tiny_export, variant):
    """Threads share one instance (its input buffer, the interpreter) and each gets the answer the same
    image gets alone: the float files' kept buffer is per thread, a TFLite interpreter runs one call at a time."""
    import threading

    manifest = json.loads((tiny_export.export_dir / "manifest.json").read_text())
    clf = Classifier(tiny_export.export_dir / manifest["variants"][variant]["file"], threads=1)
    # blends of the three class colours, so the answers spread over the probabilities rather than saturate
    a, b, c = (np.asarray(make_image(col, clf.size[0], seed=s), np.float32) for s, col in enumerate(COLOURS[:3]))
    w = np.random.default_rng(5).dirichlet((0.7, 0.7, 0.7), 96)
    blends = np.clip(w[:, 0, None, None, None] * a + w[:, 1, None, None, None] * b + w[:, 2, None, None, None] * c,
                     0, 255).astype(np.uint8)
    # 24 blends that each get an answer of their own (an int8 file's outputs come in steps, so many blends
    # share one): a mix-up between any two of them would show
    answers = {}
    for x in blends:
        answers.setdefault(clf.probabilities(x[None]).tobytes(), x)
    images = np.stack(list(answers.values())[:24])
    alone = [clf.probabilities(images[i : i + 1]) for i in range(len(images))]
    assert len({a.tobytes() for a in alone}) == len(images) >= 8
    wrong, barrier = [], threading.Barrier(8)

    def worker(seed):
        order = np.random.default_rng(seed).integers(0, len(images), 60)
        barrier.wait()
        for i in order:
            if not np.array_equal(clf.probabilities(images[i : i + 1]), alone[i]):
                wrong.append(int(i))

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == [], f"{len(wrong)} of 480 calls got another image's answer"


def test_float_input_buffer_is_reused_but_never_leaks(tiny_export):
    """probabilities() casts float inputs into one kept buffer; results of earlier calls stay as they were."""
    clf = Classifier(tiny_export.export_dir / "model-fp32.tflite")
    a, b = (np.full((1, *clf.size, 3), v, np.uint8) for v in (20, 230))
    pa = clf.probabilities(a)
    first = pa.copy()
    pb = clf.probabilities(b)
    assert np.array_equal(pa, first) and not np.allclose(pa, pb)
    assert np.array_equal(clf.probabilities(a), first)  # the same answer again through the reused buffer
    assert clf.quantize(a) is not clf.quantize(a)  # the public quantize() still returns its own array


def _cli(*args):
    return run_cli("-m", "edge_runtime", *args)


def _assert_error(proc, fragment):
    assert_one_line_error(proc, fragment)  # the runtime's own C++ INFO lines may precede it


def test_bad_inputs_give_one_line_and_exit_2(tiny_export, tmp_path):
    export_dir = tiny_export.export_dir
    img = tmp_path / "ok.png"
    make_image((50, 70, 230), 30).save(img)
    model = export_dir / "model-fp32.tflite"
    _assert_error(_cli("predict", str(tmp_path / "missing.tflite"), str(img)), "no such model file")
    (tmp_path / "m.pt").write_bytes(b"x")
    _assert_error(_cli("predict", "--model", str(tmp_path / "m.pt"), str(img)), "unknown model type")
    truncated = tmp_path / "model-fp32.tflite"
    truncated.write_bytes(model.read_bytes()[:5000])
    _assert_error(_cli("predict", str(truncated), str(img)), "not a valid TFLite model")
    bad_onnx = tmp_path / "bad.onnx"
    bad_onnx.write_bytes((export_dir / "model-fp32.onnx").read_bytes()[:3000])
    _assert_error(_cli("info", str(bad_onnx)), "not a valid ONNX model")
    (tmp_path / "notes.txt").write_text("hello")
    _assert_error(_cli("predict", str(model), str(tmp_path / "notes.txt")), "not an image")
    (tmp_path / "cut.jpg").write_bytes(Image.new("RGB", (64, 64)).tobytes()[:10])
    _assert_error(_cli("predict", str(model), str(tmp_path / "cut.jpg")), "cut.jpg")
    (tmp_path / "labels4.txt").write_text("a\nb\nc\nd\n")
    _assert_error(_cli("predict", str(model), str(img), "--labels", str(tmp_path / "labels4.txt")), "4 classes")


def test_checksum_mismatch_is_refused(tiny_export, tmp_path):
    copy = tmp_path / "export"
    shutil.copytree(tiny_export.export_dir, copy)
    with open(copy / "model-fp16.tflite", "ab") as f:
        f.write(b"\0")
    _assert_error(_cli("info", str(copy / "model-fp16.tflite")), "checksum mismatch")


def test_info_describes_the_model(tiny_export):
    proc = _cli("info", str(tiny_export.export_dir / "model-int8.tflite"))
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["format"] == "tflite" and info["variant"] == "tflite-int8" and info["checksum_verified"]
    assert info["input"]["dtype"] == "uint8" and "quantization" in info["input"]
    assert info["labels"] == ["blue", "green", "red"]


@pytest.fixture(scope="module")
def keras_model(tiny_export):
    import tf_keras as keras

    return keras.models.load_model(str(tiny_export.model), compile=False)


@pytest.mark.parametrize("variant", ["tflite-fp16", "tflite-dynamic", "tflite-qat-int8", "onnx-fp32", "onnx-int8"])
def test_every_exported_format_classifies_through_the_runtime(tiny_export, keras_model, variant):
    manifest = json.loads((tiny_export.export_dir / "manifest.json").read_text())
    clf = Classifier(tiny_export.export_dir / manifest["variants"][variant]["file"], threads=1)
    assert clf.variant == variant and clf.labels == ["blue", "green", "red"]
    images = [make_image(c, 48, seed=900 + i) for i, c in enumerate([(220, 40, 40), (40, 200, 60), (50, 70, 230)] * 2)]
    results = clf.predict(images, top_k=3)
    for r in results:
        probs = [p for _, p in r]
        assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-4
    # The reference is the Keras model the file came from, not the colours: the tiny model is trained afresh
    # each session and need not get every made-up image right. Float files must agree with it everywhere;
    # int8 rounding may flip one uncertain image.
    reference = keras_model.predict(clf.preprocess(images).astype(np.float32), verbose=0)
    expected = [clf.labels[i] for i in reference.argmax(1)]
    agree = sum(r[0][0] == e for r, e in zip(results, expected))
    assert agree == len(images) or (variant != "onnx-fp32" and variant != "tflite-fp16" and agree >= len(images) - 1), \
        (results, expected)
    assert clf.probabilities(clf.preprocess(images)).shape == (len(images), 3)


def test_runtime_settings_keep_predictions_and_bad_ones_are_one_line(tiny_export, tmp_path):
    from edge_runtime.classifier import Classifier
    from export import onnx_convert, tflite_convert
    from export.fallback import Budget
    from test_fallback import colour_images, context, outlier_model

    # The integer files come from a model with fixed weights, calibrated on fixed images, so the
    # comparison is the same on every run (the tiny run's training is not bit-reproducible across
    # machines and thread schedules, and its int8 outputs moved with it). XNNPACK's int8 kernels and
    # TFLite's built-in ones round requantization differently; the differences add up layer by layer.
    ctx = context(outlier_model(), Budget(enabled=False), tmp_path)
    tflite_convert.int8(ctx, tmp_path / "int8.tflite")
    onnx_convert.int8(ctx, tmp_path / "int8.onnx")
    colours = colour_images(30, 7)
    px = np.stack([make_image(c, 64, seed=i) for i, c in enumerate(COLOURS[:3])]).astype(np.uint8)
    for path, settings, step, images in ((tmp_path / "int8.tflite", {"xnnpack": False}, 0.1, colours),
                                         (tiny_export.export_dir / "model-fp32.tflite", {"xnnpack": False}, 1e-4, px),
                                         (tmp_path / "int8.onnx", {"graph_optimization": "basic"}, 0.05, colours)):
        a = Classifier(path, settings={}, labels=["r", "g", "b"] if path.parent == tmp_path else None).probabilities(images)
        other = Classifier(path, settings=settings, labels=["r", "g", "b"] if path.parent == tmp_path else None)
        assert other.settings == settings and other.info()["runtime_settings"] == settings
        b = other.probabilities(images)
        assert np.abs(a - b).max() <= step, path.name
        assert (a.argmax(1) == b.argmax(1)).all(), path.name
    model = str(tiny_export.export_dir / "model-int8.tflite")
    img = tmp_path / "x.png"
    make_image(COLOURS[0], 40).save(img)
    assert_one_line_error(run_cli("-m", "edge_runtime", "predict", model, str(img), "--setting", "xnnpack=maybe"),
                          "xnnpack='maybe'", "on, off")
    assert_one_line_error(run_cli("-m", "edge_runtime", "predict", model, str(img), "--setting", "threads"), "KEY=VALUE")
    assert_one_line_error(run_cli("-m", "edge_runtime", "predict", model, str(img), "--setting", "graph_optimization=all"),
                          "unknown tflite runtime setting")
    proc = run_cli("-m", "edge_runtime", "predict", model, str(img), "--setting", "xnnpack=off")
    assert proc.returncode == 0, proc.stderr


def test_tuned_settings_apply_only_on_the_same_kind_of_cpu():
    from edge_runtime.classifier import tuned_settings
    from edge_runtime.machine import signature

    here = {"runtime_settings": {"v": {"settings": {"xnnpack": False}, "machine": signature()}}}
    assert tuned_settings("v", here) == ({"xnnpack": False}, "fastest measured on this kind of CPU")
    elsewhere = {"runtime_settings": {"v": {"settings": {"xnnpack": False},
                                                       "machine": {"arch": "aarch64", "cpu_flags": ["asimd"]}}}}
    assert tuned_settings("v", elsewhere)[0] == {}
    assert tuned_settings("w", here)[0] == {} and tuned_settings(None, None)[0] == {}
