"""Accuracy-aware fallback: a model made fragile on purpose misses the budget fully quantized,
and the fallback finds the ops to keep float and meets it. Also activation ranges, the float
softmax and the parity statistics."""
import types

import numpy as np
import pytest

from export.fallback import Budget
from runlib.metrics import mcnemar_p, paired_delta_interval, parity_misses, wilson_interval

SIZE = 8


def fragile_model():
    """Raw pixels -> 1x1 conv (three colour channels and one dead channel) -> mean -> dense softmax.

    The dense kernel holds a weight of 1000 on the dead channel for every class: it never
    contributes in float, but it sets every int8 weight scale so coarse that the real weights
    (3, under half of 1000/127) round to zero and the quantized head predicts from the bias alone.
    """
    import tf_keras as keras

    inp = keras.Input((SIZE, SIZE, 3), name="image")
    conv = keras.layers.Conv2D(4, 1, activation="relu", name="colours")
    x = conv(inp)
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    dense = keras.layers.Dense(3, activation="softmax", name="head_dense")
    out = dense(x)
    model = keras.Model(inp, out)
    k = np.zeros((1, 1, 3, 4), np.float32)
    k[0, 0, [0, 1, 2], [0, 1, 2]] = 1.0 / 255  # channel 3 stays dead (weights 0, bias 0, ReLU)
    conv.set_weights([k, np.zeros(4, np.float32)])
    w = np.zeros((4, 3), np.float32)
    w[[0, 1, 2], [0, 1, 2]] = 3.0
    w[3, :] = 1000.0
    dense.set_weights([w, np.array([0.3, 0.0, -0.3], np.float32)])
    return model


def colour_images(n, seed):
    """Plain images whose strongest channel beats the others clearly: the float model is sure of them."""
    rng = np.random.default_rng(seed)
    cls = rng.integers(0, 3, n)
    colours = rng.integers(0, 110, (n, 3))
    colours[np.arange(n), cls] = rng.integers(200, 256, n)
    return np.broadcast_to(colours[:, None, None, :], (n, SIZE, SIZE, 3)).astype(np.uint8).copy()


def context(model, budget, tmp_path):
    cal = colour_images(40, 1)
    val = colour_images(60, 2)
    probs = model.predict(val.astype(np.float32), verbose=0)
    ctx = types.SimpleNamespace(model=model, calibration=cal, budget=budget, log=print,
                                ranges="auto", bias_correction="off",  # the fallback on its own
                                class_names=["r", "g", "b"], validation=(val, probs.argmax(1), probs),
                                config={"image_size": [SIZE, SIZE], "preprocessing": {"input_size": [SIZE, SIZE]}})
    from export.exporter import save_traced
    from export.onnx_convert import convert_float

    ctx.saved_model = save_traced(model, (SIZE, SIZE), tmp_path / "saved_model")
    ctx.onnx_float = convert_float(model, (SIZE, SIZE)).SerializeToString()
    return ctx


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_fallback_keeps_the_fragile_op_float_and_meets_the_budget(fmt, tmp_path):
    from edge_runtime import Classifier
    from export import onnx_convert, tflite_convert

    convert = {"tflite": tflite_convert.int8, "onnx": onnx_convert.int8}[fmt]
    model = fragile_model()
    ctx = context(model, Budget(), tmp_path)
    out = tmp_path / f"model.{fmt}"
    record = convert(ctx, out)["fallback"]
    before, after = record["validation_before"], record["validation_after"]
    assert before["agreement"] < 0.9, before  # fully quantized, the head has lost its weights
    assert record["met_budget"] and after["agreement"] >= 0.98 and after["top1_change_points"] >= -1.0, record
    assert 1 <= len(record["kept_float"]) <= max(1, int(0.25 * record["candidate_ops"]))
    assert any("head_dense" in op or "MatMul" in op or "Gemm" in op for op in record["kept_float"]), record["kept_float"]
    if fmt == "tflite":  # int8 weights would round the head's real weights to 0 again: tried, not kept
        assert record["float_weights"]["ops"] == 1 and not record["float_weights"]["int8"]
    # the written file is the one that was measured
    val, labels, _ = ctx.validation
    probs = Classifier(out, verify=False).probabilities(val)
    assert np.mean(probs.argmax(1) == labels) >= 0.98

    # --no-fallback writes the fully quantized file and says it misses
    ctx.budget = Budget(enabled=False)
    record = convert(ctx, tmp_path / f"plain.{fmt}")["fallback"]
    assert record["kept_float"] == [] and not record["met_budget"]


def test_a_model_within_budget_is_left_fully_quantized(tmp_path):
    from export import tflite_convert

    model = fragile_model()
    w, b = model.get_layer("head_dense").get_weights()
    w[3, :] = 0.0  # no outlier: int8 keeps the head
    model.get_layer("head_dense").set_weights([w, b])
    record = tflite_convert.int8(context(model, Budget(), tmp_path), tmp_path / "m.tflite")["fallback"]
    assert record["met_budget"] and record["kept_float"] == [] and record["validation_before"]["agreement"] >= 0.98


def outlier_model():
    """Raw pixels -> 1x1 conv + ReLU -> mean -> dense softmax, where conv channel 3 fires only on a pure
    white pixel (about 1000 there, 0 on any colour_images pixel) and the head ignores it. Calibrated on
    images one of which has a single white pixel, the conv's per-tensor int8 range becomes 0..1000, a
    step of 4 where the colour channels span 0..1: they all round to 0."""
    import tf_keras as keras

    inp = keras.Input((SIZE, SIZE, 3), name="image")
    conv = keras.layers.Conv2D(4, 1, activation="relu", name="colours")
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(conv(inp))
    dense = keras.layers.Dense(3, activation="softmax", name="head_dense")
    model = keras.Model(inp, dense(x))
    k = np.zeros((1, 1, 3, 4), np.float32)
    k[0, 0, [0, 1, 2], [0, 1, 2]] = 1.0 / 255
    k[0, 0, :, 3] = 8.0
    conv.set_weights([k, np.array([0, 0, 0, -5100], np.float32)])  # white: 8 * 765 - 5100 = 1020
    w = np.zeros((4, 3), np.float32)
    w[[0, 1, 2], [0, 1, 2]] = 12.0
    dense.set_weights([w, np.zeros(3, np.float32)])
    return model


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_percentile_ranges_rescue_a_tensor_whose_range_one_outlier_set(fmt, tmp_path):
    from export import onnx_convert, tflite_convert

    convert = {"tflite": tflite_convert.int8, "onnx": onnx_convert.int8}[fmt]
    model = outlier_model()
    ctx = context(model, Budget(enabled=False), tmp_path)  # no fallback: the ranges alone must do it
    cal = ctx.calibration.copy()
    cal[0, 3, 3] = 255  # one white pixel in one calibration image
    ctx.calibration = cal
    record = convert(ctx, tmp_path / f"m.{fmt}")
    ranges = {t["method"]: t for t in record["activation_ranges"]["tried"]}
    assert ranges["minmax"]["agreement"] < 0.7, ranges  # the outlier's range crushed the colour channels
    assert record["activation_ranges"]["method"] in ("p99.9", "p99.99")
    assert ranges[record["activation_ranges"]["method"]]["agreement"] >= 0.98
    assert record["fallback"]["validation_before"]["agreement"] >= 0.98 and record["fallback"]["met_budget"]

    ctx.ranges = "minmax"  # the option keeps the calibrator's ranges
    record = convert(ctx, tmp_path / f"plain.{fmt}")
    assert record["activation_ranges"]["method"] == "minmax" and record["activation_ranges"]["chosen_by"] == "option"
    assert record["fallback"]["validation_before"]["agreement"] < 0.7

    ctx.ranges = "p99.9@0.5"  # percentiles only from the middle on: the conv (the first op) keeps 0..1020
    record = convert(ctx, tmp_path / f"late.{fmt}")
    assert record["fallback"]["validation_before"]["agreement"] < 0.7


def test_onnx_ranges_only_narrow_and_give_each_relu_range_to_the_op_before_it(tmp_path):
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from export import onnx_ranges
    from export.onnx_convert import _Reader, convert_float

    model = outlier_model()
    images = colour_images(20, 3)
    images[0, 0, 0] = 255
    float_path, qdq_path = tmp_path / "float.onnx", tmp_path / "qdq.onnx"
    onnx.save(convert_float(model, (SIZE, SIZE)), str(float_path))
    quantize_static(str(float_path), str(qdq_path), _Reader("image", images), quant_format=QuantFormat.QDQ,
                    per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                    calibrate_method=CalibrationMethod.MinMax, extra_options={"QDQKeepRemovableActivations": True})
    float_model, qdq = onnx.load(str(float_path)), onnx.load(str(qdq_path))
    samples = onnx_ranges.observe(float_model, qdq, images)

    def ranges_of(m):
        inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
        out = {}
        for t, (s, z) in onnx_ranges.activations(m).items():
            scale, zp = float(inits[s]), float(inits[z])
            out[t] = ((0 - zp) * scale, (255 - zp) * scale)
        return out

    # our one pass gives ONNX Runtime's own min/max ranges, even onto a model it calibrated on one image
    one = tmp_path / "one.onnx"
    quantize_static(str(float_path), str(one), _Reader("image", images[:1]), quant_format=QuantFormat.QDQ,
                    per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                    calibrate_method=CalibrationMethod.MinMax, extra_options={"QDQKeepRemovableActivations": True})
    ours = ranges_of(onnx_ranges.with_ranges(onnx.load(str(one)), float_model, samples, "minmax"))
    theirs = ranges_of(qdq)
    assert ours.keys() == theirs.keys()
    for t in theirs:
        assert ours[t] == pytest.approx(theirs[t], rel=1e-4, abs=1e-5), t

    before, after = ranges_of(qdq), ranges_of(onnx_ranges.with_ranges(qdq, float_model, samples, "p99.9"))
    conv = next(n for n in float_model.graph.node if n.op_type == "Conv").output[0]
    relu = next(n for n in float_model.graph.node if n.op_type == "Relu").output[0]
    assert before[relu][1] > 900  # the white pixel's 1020
    assert after[relu][1] < 10 and after[conv] == pytest.approx(after[relu])  # clipped; the conv gets the Relu's
    assert before[conv] == pytest.approx(before[relu])  # ONNX Runtime's quantizer gives them one range; so must we
    for t in after:
        assert before[t][0] - 1e-6 <= after[t][0] <= 1e-6 and -1e-6 <= after[t][1] <= before[t][1] + 1e-6, t

    # every int32 bias is requantized at the new input scale x weight scale (the fused kernels read it so)
    edited = onnx_ranges.with_ranges(qdq, float_model, samples, "p99.9")
    inits = {i.name: numpy_helper.to_array(i) for i in edited.graph.initializer}
    producer = {o: n for n in edited.graph.node for o in n.output}
    bias_before = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    changed = 0
    for node in (n for n in edited.graph.node if n.op_type in ("Gemm", "Conv") and len(n.input) == 3):
        x, w, b = (producer[t] for t in node.input)
        assert np.allclose(inits[b.input[1]], float(inits[x.input[1]]) * inits[w.input[1]], rtol=1e-6)
        old = bias_before[b.input[0]] * bias_before[b.input[1]]
        assert np.allclose(inits[b.input[0]] * inits[b.input[1]], old, atol=np.max(inits[b.input[1]]))  # same float bias
        changed += not np.allclose(inits[b.input[1]], bias_before[b.input[1]])
    assert changed >= 1  # the dense layer reads the clipped pooled features


def test_the_int8_softmax_computes_in_float_from_the_logits(tmp_path):
    """int8 softmax would read logits rounded to the int8 step of their whole range; float costs nothing."""
    from edge_runtime.backends import _tflite_interpreter_class
    from export import tflite_convert

    model = fragile_model()
    out = tmp_path / "m.tflite"
    tflite_convert.int8(context(model, Budget(enabled=False), tmp_path), out)
    interp = _tflite_interpreter_class()(model_path=str(out))
    kinds = {d["index"]: d["dtype"] for d in interp.get_tensor_details()}
    ops = {op["op_name"]: kinds[op["outputs"][0]] for op in interp._get_ops_details()}  # noqa: SLF001  no public op list
    assert ops["SOFTMAX"] == np.float32 and ops["CONV_2D"] == np.int8, ops
    assert interp.get_output_details()[0]["dtype"] == np.uint8  # the file's interface stays integer


def test_tflite_ranges_match_the_calibrator_only_narrow_and_always_hold_zero():
    from tensorflow.lite.python import schema_py_generated as schema

    from export import tflite_ranges
    from runlib.tf_setup import import_tensorflow

    tf = import_tensorflow()
    model = outlier_model()
    c = tf.lite.TFLiteConverter.from_keras_model(model)
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    imgs = colour_images(20, 3)
    imgs[0, 0, 0] = 255
    c.representative_dataset = lambda: ([img[None].astype(np.float32)] for img in imgs)
    c._experimental_calibrate_only = True  # noqa: SLF001  the calibrate-only converter mode has no public switch
    by_tflite = c.convert()
    calibrated, samples = tflite_ranges.observe(by_tflite, imgs)
    before = schema.ModelT.InitFromPackedBuf(bytearray(calibrated), 0)
    theirs = schema.ModelT.InitFromPackedBuf(bytearray(by_tflite), 0)
    for i in tflite_ranges.stat_tensors(theirs):  # our one pass gives the calibrator's own min/max
        t, o = theirs.subgraphs[0].tensors[i].quantization, before.subgraphs[0].tensors[i].quantization
        assert (o.min[0], o.max[0]) == pytest.approx((t.min[0], t.max[0]), rel=1e-5, abs=1e-6), i
    after = schema.ModelT.InitFromPackedBuf(bytearray(tflite_ranges.with_ranges(calibrated, samples, "p99.9")), 0)
    narrowed = 0
    for i in tflite_ranges.stat_tensors(before):
        b, a = before.subgraphs[0].tensors[i].quantization, after.subgraphs[0].tensors[i].quantization
        assert min(b.min[0], 0.0) <= a.min[0] <= 0.0 <= a.max[0] <= max(b.max[0], 0.0)  # int8 ranges hold 0 anyway
        narrowed += a.max[0] < b.max[0] / 10
    assert narrowed >= 1  # the conv output: 0..1020 became about 0..1
    assert tflite_ranges.with_ranges(calibrated, samples, "minmax") is calibrated


def test_tflite_ranges_of_a_residual_branch_are_its_own_not_the_sums():
    """TFLite's calibrator logs an op's inputs again after the op runs; an ADD writes its output into
    its input's memory, so the branch gets the sum's max (tensorflow/tensorflow#127842). On the
    README's ResNet-50 that widened conv4_block5_3's range from 98.8 to 329.9. observe() reads each
    tensor after the op that makes it, so its ranges are the Keras model's."""
    import tf_keras as keras
    from tensorflow.lite.python import schema_py_generated as schema

    from export import tflite_ranges
    from runlib.tf_setup import import_tensorflow

    tf = import_tensorflow()
    inp = keras.Input((SIZE, SIZE, 3), name="image")
    small = keras.layers.Conv2D(2, 1, name="branch")(inp)
    big = keras.layers.Conv2D(2, 1, name="shortcut")(inp)
    out = keras.layers.ReLU(name="sum_relu")(keras.layers.Add(name="sum")([small, big]))
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax", name="head_dense")(
        keras.layers.GlobalAveragePooling2D(name="head_pool")(out)))
    ones = np.ones((1, 1, 3, 2), np.float32) / 255
    model.get_layer("branch").set_weights([ones, np.zeros(2, np.float32)])  # 0..3
    model.get_layer("shortcut").set_weights([ones * 30, np.zeros(2, np.float32)])  # 0..90
    images = colour_images(16, 4)
    branch_max = float(keras.Model(inp, small).predict(images.astype(np.float32), verbose=0).max())

    c = tf.lite.TFLiteConverter.from_keras_model(model)
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    c.representative_dataset = lambda: ([img[None].astype(np.float32)] for img in images[:1])
    c._experimental_calibrate_only = True  # noqa: SLF001  the calibrate-only converter mode has no public switch
    calibrated, _ = tflite_ranges.observe(c.convert(), images)
    m = schema.ModelT.InitFromPackedBuf(bytearray(calibrated), 0)
    branch = [t.quantization.max[0] for i, t in enumerate(m.subgraphs[0].tensors)
              if b"branch" in t.name and i in tflite_ranges.stat_tensors(m)]
    assert branch and branch[0] == pytest.approx(branch_max, rel=1e-4), (branch, branch_max)


@pytest.mark.parametrize("needed", [1, 5, 7, 10, 11])
def test_search_finds_the_shortest_float_tail_by_bisection(needed, tmp_path, monkeypatch):
    """The search logic alone, on fake files: a file agrees with Keras exactly when its last `needed`
    ops are float (the cap is 10 of 40 ops)."""
    import json

    from export import fallback

    rng = np.random.default_rng(0)
    ref = rng.dirichlet(np.ones(3), 50)
    labels = ref.argmax(1)
    ops = [f"op{i:02d}" for i in range(40)]

    class FakeClassifier:
        def __init__(self, path, **_):
            self.excluded = json.loads(open(path).read())

        def probabilities(self, pixels):
            tail_float = all(op in self.excluded for op in ops[len(ops) - needed:])
            return ref if tail_float else np.roll(ref, 1, axis=1)

    def quantize(excluded, path):
        open(path, "w").write(json.dumps(sorted(excluded)))

    def compact(src, dst):  # int8 weights in the float ops: here the same predictions, so it is kept
        open(dst, "w").write(open(src).read())
        return 3

    monkeypatch.setattr(fallback, "Classifier", FakeClassifier)
    monkeypatch.setattr(fallback, "_p50_ms", lambda *a: 1.0)
    fmt = types.SimpleNamespace(quantize=quantize, suffix=".json", compact=compact)
    path, record = fallback.Search(fmt, ops, (np.zeros((50, 1)), labels, ref), Budget(), tmp_path, print).run()
    if needed <= 10:
        assert record["met_budget"] and record["kept_float"] == ops[40 - needed:]
        assert json.loads(open(path).read()) == ops[40 - needed:]  # the written file is the one measured
        assert record["float_weights"]["int8"] and record["float_weights"]["ops"] == 3
        assert len(record["tail_tried"]) <= 1 + 4 and record["strategy"] == "tail"  # the cap, then bisection of 10
    else:  # even the cap misses, and no single op helps: marked, nothing stays float
        assert not record["met_budget"] and record["kept_float"] == [] and len(record["tail_tried"]) == 1
        assert record["single_ops"]["stopped_in_vain"]


def test_single_ops_when_no_tail_within_the_cap_helps(tmp_path, monkeypatch):
    """The search logic alone, on fake files: only op07 and op09 (early ops no tail of 10 reaches)
    lower the error; the single-op search keeps exactly them and stops after PATIENCE useless ops."""
    import json

    from export import fallback

    helpful = {"op07": 0.02, "op09": 0.01}
    rng = np.random.default_rng(0)
    ref = rng.dirichlet(np.ones(3), 50)
    labels = ref.argmax(1)

    class FakeClassifier:
        def __init__(self, path, **_):
            self.excluded = json.loads(open(path).read())

        def probabilities(self, pixels):
            error = 0.1 - sum(helpful.get(op, 0.0) for op in self.excluded)
            out = ref[: len(pixels)] + error * np.roll(np.eye(3), 1, axis=1)[labels[: len(pixels)]]
            return out / out.sum(1, keepdims=True)

    def quantize(excluded, path):
        open(path, "w").write(json.dumps(sorted(excluded)))

    monkeypatch.setattr(fallback, "Classifier", FakeClassifier)
    monkeypatch.setattr(fallback, "_p50_ms", lambda *a: 1.0)
    ops = [f"op{i:02d}" for i in range(40)]  # cap 10
    fmt = types.SimpleNamespace(quantize=quantize, suffix=".json", compact=None)
    path, record = fallback.Search(fmt, ops, (np.zeros((50, 1)), labels, ref), Budget(), tmp_path, print).run()
    assert set(record["kept_float"]) == {"op07", "op09"} and record["strategy"] == "single ops"
    assert record["single_ops"]["tried"] == 2 + fallback.PATIENCE and record["single_ops"]["stopped_in_vain"]
    assert json.loads(open(path).read()) == ["op07", "op09"] and not record["met_budget"]

    # when ranking would take too long, it is skipped and said so
    path, record = fallback.Search(fmt, ops, (np.zeros((50, 1)), labels, ref), Budget(seconds=0.0), tmp_path,
                                   print).run()
    assert "skipped" in record["single_ops"] and record["strategy"] == "tail"


def test_int8_weights_for_float_ops_shrink_the_file_and_keep_its_outputs(tmp_path):
    """A float conv + dense model: tflite_hybrid writes their weights as per-channel int8 (what the
    dynamic-range converter writes), the file shrinks about 4x, and TFLite's hybrid kernels give
    nearly the float outputs."""
    import tensorflow as tf
    import tf_keras as keras

    from edge_runtime import Classifier
    from export.tflite_hybrid import int8_weights
    from tensorflow.lite.python import schema_py_generated as schema

    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inp)
    x = keras.layers.Conv2D(64, 3, activation="relu")(x)
    x = keras.layers.Conv2D(64, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(5, activation="softmax")(x))
    flat = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    hybrid, ops = int8_weights(flat)
    assert ops == 3 and len(hybrid) < 0.4 * len(flat)
    m = schema.ModelT.InitFromPackedBuf(bytearray(hybrid), 0)
    int8 = [t for t in m.subgraphs[0].tensors if t.type == schema.TensorType.INT8]
    assert len(int8) == 3 and all(len(t.quantization.scale) == t.shape[0] for t in int8)  # per output channel
    (tmp_path / "f.tflite").write_bytes(flat)
    (tmp_path / "h.tflite").write_bytes(hybrid)
    pixels = np.random.default_rng(0).integers(0, 256, (20, 16, 16, 3)).astype(np.uint8)
    ref = Classifier(tmp_path / "f.tflite", verify=False).probabilities(pixels)
    out = Classifier(tmp_path / "h.tflite", verify=False).probabilities(pixels)
    assert np.abs(out - ref).max() < 0.01 and not np.array_equal(out, ref)
    assert int8_weights(hybrid) == (hybrid, 0)  # nothing float left to change


def test_parity_budget_and_intervals():
    assert parity_misses(-1.0, 0.98) == []
    assert parity_misses(-1.2, 0.99)[0].startswith("top-1 -1.20")
    assert parity_misses(0.0, 0.979)[0].startswith("agreement 0.979")
    lo, hi = wilson_interval(123, 125)
    assert lo == pytest.approx(0.9434, abs=2e-3) and hi == pytest.approx(0.9956, abs=2e-3)
    assert wilson_interval(125, 125)[1] == 1.0 and wilson_interval(125, 125)[0] < 1.0
    same = np.array([True] * 90 + [False] * 10)
    assert paired_delta_interval(same, same) == (0.0, 0.0)
    worse = same.copy()
    worse[:5] = False
    lo, hi = paired_delta_interval(worse, same)
    assert lo < -5.0 < hi <= 0.0
    assert mcnemar_p(worse, same) == pytest.approx(2 / 32)  # 5 lost, 0 gained: 2 * 0.5**5
    assert mcnemar_p(same, same) == 1.0


def test_onnx_ops_kept_float_stay_float_when_onnx_runtime_loads_them(tmp_path):
    """nodes_to_exclude alone leaves a float depthwise conv between a DQ and a Q, and ONNX Runtime's
    WeightBiasQuantization then quantizes its weights per tensor at load time. A depthwise kernel whose
    channels differ 1000-fold in scale loses its small channel to that; float_nodes keeps it float."""
    import onnx
    import onnxruntime as ort
    import tf_keras as keras
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from export.onnx_convert import _Reader, convert_float
    from export.onnx_graph import float_nodes

    inp = keras.Input((SIZE, SIZE, 3), name="image")
    dw = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")
    model = keras.Model(inp, keras.layers.ReLU(6.0, name="relu6")(dw(inp)))
    k = np.random.default_rng(0).uniform(0.5, 1.0, (3, 3, 3, 1)).astype(np.float32) / 255 * 0.6
    k[..., 1, 0] *= 1e-3  # channel 1 is 1000x smaller: per-tensor int8 rounds it to zero
    dw.set_weights([k, np.zeros(3, np.float32)])
    images = colour_images(60, 3)
    ref = model.predict(images.astype(np.float32), verbose=0)

    float_path, qdq_path, kept = tmp_path / "float.onnx", tmp_path / "qdq.onnx", tmp_path / "kept.onnx"
    onnx.save(convert_float(model, (SIZE, SIZE)), str(float_path))
    quantize_static(str(float_path), str(qdq_path), _Reader("image", images[:40]), quant_format=QuantFormat.QDQ,
                    per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                    calibrate_method=CalibrationMethod.MinMax, extra_options={"QDQKeepRemovableActivations": True},
                    op_types_to_quantize=["Conv", "Clip"])  # the output (a Transpose) stays float to be compared
    fmodel = onnx.load(str(float_path))
    conv = next(n.name for n in fmodel.graph.node if n.op_type == "Conv")
    onnx.save(float_nodes(onnx.load(str(qdq_path)), fmodel, [conv]), str(kept))
    session = ort.InferenceSession(str(kept), providers=["CPUExecutionProvider"])  # all optimizations on
    out = session.run(None, {session.get_inputs()[0].name: images.astype(np.float32)})[0]
    assert ref[..., 1].max() > 0
    # the small channel computed in float (within the input's 8-bit rounding, about 1%);
    # per-tensor int8 weights would have zeroed it
    assert np.allclose(out[..., 1], ref[..., 1], rtol=0.05, atol=1e-6)
