"""Answers you can trust beyond the test split: the decision rule (calibration, "unknown"), its fitting, decision
parity, field folders and the versioned preprocessing contract.

The model here is an ONNX graph whose answers are known in advance: the softmax of each channel's mean brightness
times 12, so a red image is "red" with confidence about 1, and a grey one gives every class 1/3 and must be
answered "unknown". It needs no TensorFlow and no ../shared."""
import http.client
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, assert_one_line_error

LABELS = ["red", "green", "blue"]
RULE = {"temperature": 1.0, "threshold": 0.6, "review_below": 0.8, "version": 1}


def colour_model(path, gain=12.0):
    """uint8 [N, 32, 32, 3] -> softmax(gain * mean(channel) / 255)."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["f"], ["m"], axes=[1, 2], keepdims=0),
             helper.make_node("Mul", ["m", "k"], ["z"]),
             helper.make_node("Softmax", ["z"], ["probabilities"], axis=-1)]
    graph = helper.make_graph(nodes, "colour",
                              [helper.make_tensor_value_info("image", TensorProto.UINT8, [None, 32, 32, 3])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 3])],
                              [helper.make_tensor("k", TensorProto.FLOAT, [], [gain / 255.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)


@pytest.fixture()
def bundle(tmp_path):
    """A folder the runtime treats as a bundle: the colour model, labels, manifest with a decision rule."""
    from edge_runtime.files import sha256_file, write_json
    from edge_runtime.preprocess import contract

    folder = tmp_path / "bundle"
    folder.mkdir()
    colour_model(folder / "model.onnx")
    (folder / "labels.txt").write_text("\n".join(LABELS) + "\n")
    write_json(folder / "manifest.json", {
        "classes": LABELS, "preprocessing": contract(32, 32), "decision": RULE,
        "variants": {"onnx-fp32": {"file": "model.onnx", "format": "onnx", "precision": "float32", "status": "ok",
                                   "sha256": sha256_file(folder / "model.onnx")}}})
    return folder


def solid(path, colour, size=(40, 40)):
    Image.new("RGB", size, colour).save(path)
    return path


# ---------------------------------------------------------------- the rule itself
def test_the_rule_calibrates_the_top_label_and_abstains_below_its_threshold():
    from edge_runtime.decision import Rule

    z = np.array([[2.0, 0.5, -1.0], [0.2, 0.1, 0.0], [3.0, -2.0, -2.0]])
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    for t in (0.5, 2.0, 3.0):
        cal = Rule(t).calibrate(p)
        top = p.max(1)
        want = 1 / (1 + np.exp(-np.log(top / (1 - top)) / t))  # the top label's odds to the power 1/T
        free = (t >= 1) | (top >= 0.5)  # (T < 1 on a top under 1/2: floored where the runner-up would overtake it)
        np.testing.assert_allclose(cal.max(1)[free], want[free], rtol=1e-5)
        np.testing.assert_allclose(cal.sum(1), 1.0, rtol=1e-5)
        assert (cal.argmax(1) == p.argmax(1)).all()  # the ranking never changes
        np.testing.assert_allclose(cal[0, 1] / cal[0, 2], p[0, 1] / p[0, 2], rtol=1e-4)  # the rest in proportion
    np.testing.assert_array_equal(Rule().calibrate(p), p.astype(np.float32))
    labels, conf = Rule(1.0, 0.5).decide(p)
    assert labels.tolist() == [0, -1, 0] and conf[0] > 0.5 > conf[1]
    assert Rule(1.0, 0.0).decide(p)[0].tolist() == [0, 0, 0]  # threshold 0 never abstains
    # the decision reads the top probability alone: answered exactly when it reaches raw_threshold()
    rule = Rule(2.5, 0.7)
    tops = np.linspace(0.34, 0.999, 500)
    rows = np.stack([tops, (1 - tops) * 0.7, (1 - tops) * 0.3], 1)
    assert ((rule.decide(rows)[0] >= 0) == (tops >= rule.raw_threshold() - 1e-9)).all()
    q = np.array([[1.0, 0.0, 0.0]], np.float32)  # an int8 softmax's exact zeros and ones stay finite
    assert np.isfinite(Rule(3.0).calibrate(q)).all() and Rule(3.0).calibrate(q).sum() == pytest.approx(1.0)


def test_the_decision_does_not_move_with_the_tail_an_integer_file_rounds_away():
    """A file that keeps the top probability and rounds the small ones to zero (as a uint8 softmax does) keeps
    the confidence and the decision."""
    from edge_runtime.decision import Rule

    keras = np.array([[0.93, 0.03, 0.02, 0.01, 0.005, 0.005]], np.float32)
    rounded = np.array([[0.93, 0.03, 0.02, 0.0, 0.0, 0.0]], np.float32)
    rule = Rule(2.0, 0.75)
    assert rule.decide(keras)[1][0] == pytest.approx(rule.decide(rounded)[1][0])
    assert rule.decide(keras)[0][0] == rule.decide(rounded)[0][0] == 0


def test_a_rule_the_runtime_does_not_know_is_refused():
    from edge_runtime.decision import Rule
    from edge_runtime.errors import InputError

    assert Rule.from_record(None) == Rule()
    for bad in ({"version": 9, "temperature": 1, "threshold": 0.5}, {"version": 1, "temperature": -1, "threshold": 0.5},
                {"version": 1, "threshold": 0.5}, "x"):
        with pytest.raises(InputError):
            Rule.from_record(bad)


def test_temperature_scaling_recovers_the_temperature_of_an_overconfident_model():
    from export.abstention import fit_temperature

    rng = np.random.default_rng(0)
    top = rng.uniform(0.4, 0.9999, 4000)
    right_rate = 1 / (1 + np.exp(-np.log(top / (1 - top)) / 3))  # it is right less often than it says: T = 3
    probs = np.stack([top, (1 - top) / 2, (1 - top) / 2], 1)
    y = np.where(rng.random(len(top)) < right_rate, 0, 1)
    t, before, after = fit_temperature(y, probs)
    assert 2.6 < t < 3.4 and after < before


class Config:
    abstain, coverage, unknown_named, min_coverage, review_share = True, 0.95, 0.10, 0.90, 0.10


def test_the_threshold_answers_the_stated_share_of_validation_and_rises_for_unknown_examples():
    from export.abstention import fit_rule

    rng = np.random.default_rng(1)
    n = 400

    def rows(conf):
        return np.stack([conf, (1 - conf) / 2, (1 - conf) / 2], 1)

    conf = rng.uniform(0.8, 1.0, n)
    probs = rows(conf)
    y = np.where(rng.random(n) < conf, 0, 1)  # right as often as it says: calibration leaves it near T=1
    rule, record = fit_rule(y, probs, Config)
    answered = np.mean(rule.decide(probs)[0] >= 0)
    assert 0.95 <= answered < 0.96 and record["validation_coverage"] == answered
    assert rule.review_below >= rule.threshold

    def named(r, p):
        return np.mean(r.decide(p)[0] >= 0)

    # unknown images about as confident as the least confident tenth of validation: the threshold rises until
    # at most 10% of them are named, still answering at least 90% of validation
    unknown = rows(rng.uniform(0.80, 0.82, 100))
    assert named(rule, unknown) > 0.10
    rule2, record2 = fit_rule(y, probs, Config, unknown)
    assert named(rule2, unknown) <= 0.10 and named(rule2, probs) >= 0.90 and rule2.threshold > rule.threshold
    assert record2["unknown_images"]["named_at_threshold"] <= 0.10
    # but never past the coverage floor: unknown images as confident as any known one cannot all be refused
    rule3, record3 = fit_rule(y, probs, Config, rows(np.full(100, 0.999)))
    assert named(rule3, probs) >= 0.90 and "no threshold" in record3["threshold_rule"]
    # and without abstention: calibration only
    no = type("NoAbstain", (Config,), {"abstain": False})
    assert fit_rule(y, probs, no)[0].threshold == 0.0


# ---------------------------------------------------------------- "unknown" through every way in
def test_predict_answers_unknown_with_the_scores_behind_it(bundle, tmp_path):
    from edge_runtime import Classifier

    red, grey = solid(tmp_path / "red.png", (230, 20, 20)), solid(tmp_path / "grey.png", (128, 128, 128))
    clf = Classifier(bundle / "model.onnx")
    a, b = clf.predict([red, grey], top_k=3)
    assert a.label == "red" and not a.unknown and a.confidence > 0.9 and a[0][0] == "red"
    assert b.label == "unknown" and b.unknown and b.review and abs(b.confidence - 1 / 3) < 0.01 and len(b) == 3

    proc = subprocess.run([sys.executable, "-m", "edge_runtime", "predict", "--model", str(bundle / "model.onnx"),
                           str(red), str(grey), "--json"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(l) for l in proc.stdout.splitlines()]
    assert [r["label"] for r in rows] == ["red", "unknown"] and rows[1]["unknown"] is True
    assert rows[1]["top_k"][0]["probability"] == pytest.approx(1 / 3, abs=0.01)
    text = subprocess.run([sys.executable, "-m", "edge_runtime", "predict", "--model", str(bundle / "model.onnx"),
                           str(grey)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "unknown (confidence 0.33" in text.stdout


def test_the_service_answers_unknown_and_counts_it(bundle, tmp_path):
    import io

    from checks.serve_check import ServiceProcess

    svc = ServiceProcess(bundle, "--model", str(bundle / "model.onnx"), "--workers", "1")
    try:
        answers = []
        for colour in ((230, 20, 20), (128, 128, 128), (120, 125, 130)):
            buf = io.BytesIO()
            Image.new("RGB", (40, 40), colour).save(buf, "PNG")
            c = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=10)
            c.request("POST", "/v1/classify", body=buf.getvalue(), headers={"Content-Type": "image/png"})
            r = c.getresponse()
            assert r.status == 200
            answers.append(json.loads(r.read()))
            c.close()
        assert [a["label"] for a in answers] == ["red", "unknown", "unknown"]
        assert answers[1]["confidence"] < 0.6 and answers[1]["top_k"]
        c = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=10)
        c.request("GET", "/metrics")
        metrics = c.getresponse().read().decode()
        c.close()
        assert "edgeclf_unknown_answers_total 2.0" in metrics and "edgeclf_classifications_total 3.0" in metrics
    finally:
        svc.stop()


def test_watch_lists_unknown_and_unsure_answers_for_review(bundle, tmp_path):
    from edge_runtime import Classifier
    from edge_runtime.watch import Watcher

    folder = tmp_path / "trap"
    folder.mkdir()
    solid(folder / "a-red.png", (230, 20, 20))
    solid(folder / "b-grey.png", (128, 128, 128))
    solid(folder / "c-unsure.png", (150, 110, 110))  # red, but answered with under review_below's confidence
    w = Watcher(Classifier(bundle / "model.onnx"), folder, settle=0.0, log=lambda m: None)
    assert w.scan_once() == 3
    rows = {json.loads(l)["image"]: json.loads(l) for l in (folder / "classifications.jsonl").read_text().splitlines()}
    assert rows["a-red.png"]["label"] == "red" and rows["b-grey.png"]["label"] == "unknown"
    assert rows["c-unsure.png"]["label"] == "red" and rows["c-unsure.png"]["review"] is True
    review = [json.loads(l) for l in (folder / "review.jsonl").read_text().splitlines()]
    assert sorted(r["image"].rsplit("/", 1)[1] for r in review) == ["b-grey.png", "c-unsure.png"]
    assert w.scan_once() == 0  # nothing classified or listed twice


# ---------------------------------------------------------------- decision parity
def test_decision_parity_fails_a_file_that_abstains_differently_even_when_its_top1_agrees():
    from benchmark.decisions import figures, gate_decisions
    from edge_runtime.decision import Rule

    rng = np.random.default_rng(0)
    n = 200
    y = rng.integers(0, 3, n)
    conf = rng.uniform(0.7, 1.0, n)
    keras = np.full((n, 3), 0.0)
    keras[np.arange(n), y] = conf
    keras[np.arange(n), (y + 1) % 3] = 1 - conf
    softer = keras.copy()  # the same top class everywhere, but less sure on a tenth of the images
    low = np.arange(n) % 10 == 0
    softer[low, y[low]], softer[low, (y[low] + 1) % 3] = 0.55, 0.45
    rule = Rule(1.0, 0.6)
    rows = [{"variant": "keras", "status": "ok", "decisions": figures(rule, y, keras, None)},
            {"variant": "same", "status": "ok", "decisions": figures(rule, y, keras.copy(), keras)},
            {"variant": "softer", "status": "ok", "decisions": figures(rule, y, softer, keras)}]
    assert (softer.argmax(1) == keras.argmax(1)).all()  # top-1 parity alone would pass it
    failures = gate_decisions(rows, {}, 0.98, 0.5)
    assert list(failures) == ["softer"] and "decision agreement 0.900 on test" in failures["softer"][0]
    lo, hi = rows[2]["decisions"]["test"]["agreement_ci"]
    assert lo < 0.9 < hi
    # and a file whose calibration error grows past the bound fails on that alone
    assert any("ECE" in r for r in gate_decisions(rows, {}, 0.5, 0.0)["softer"])


# ---------------------------------------------------------------- field folders
def test_a_field_folder_counts_class_folders_as_their_class_and_others_as_unknown(tmp_path):
    from benchmark.decisions import figures
    from edge_runtime.decision import Rule
    from runlib.field import UNKNOWN, half, read_field

    root = tmp_path / "field"
    for name, n in (("red", 6), ("blue", 4), ("moth", 5), ("empty", 0)):
        (root / name).mkdir(parents=True)
        for i in range(n):
            solid(root / name / f"{i}.jpg", (200, 10, 10))
    photos = read_field(root, LABELS)
    assert photos.known_folders == ["blue", "red"] and photos.unknown_folders == ["moth"]
    assert sorted(photos.labels) == [UNKNOWN] * 5 + [0] * 6 + [2] * 4
    assert {half(photos, p) for p in photos.paths} <= {"dev", "holdout"}
    assert [half(photos, p) for p in photos.paths] == [half(read_field(root, LABELS), p) for p in photos.paths]

    # figures: the unknown species' photos named, the known ones' coverage and accuracy, the separation
    from benchmark.decisions import Outside

    y = np.array(photos.labels)
    probs = np.where(y[:, None] >= 0, np.eye(3)[np.maximum(y, 0)] * 0.9 + 0.1 / 3, 1 / 3)
    outside = Outside(np.zeros((len(y), 1)), y, np.array(["field"] * len(y)), np.array(["holdout"] * len(y)), {})
    f = figures(Rule(1.0, 0.5), np.array([0]), np.array([[1.0, 0, 0]]), None, outside, (probs, None))["field"]
    assert f["top1"] == 1.0 and f["coverage"] == 1.0 and f["unknown_named"] == 0.0 and f["auroc"] == 1.0


def test_a_wrong_field_folder_is_one_line(tmp_path):
    from edge_runtime.errors import InputError
    from runlib.field import read_field, read_unknown

    with pytest.raises(InputError, match="no such field folder"):
        read_field(tmp_path / "nope", LABELS)
    (tmp_path / "flat").mkdir()
    with pytest.raises(InputError, match="one folder per species"):
        read_field(tmp_path / "flat", LABELS)
    with pytest.raises(InputError, match="no images"):
        read_unknown(tmp_path / "flat")


# ---------------------------------------------------------------- the contract
def test_a_contract_the_runtime_does_not_know_is_refused_in_one_line(bundle, tmp_path):
    from edge_runtime.files import read_manifest, write_json

    manifest = read_manifest(bundle)
    manifest["preprocessing"]["version"] = 99
    write_json(bundle / "manifest.json", manifest)
    red = solid(tmp_path / "red.png", (230, 20, 20))
    proc = subprocess.run([sys.executable, "-m", "edge_runtime", "predict", "--model", str(bundle / "model.onnx"),
                           str(red)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert_one_line_error(proc, "preprocessing contract version 99", "update edgeclf-runtime")
    manifest["preprocessing"].update(version=2, fit="letterbox")
    write_json(bundle / "manifest.json", manifest)
    proc = subprocess.run([sys.executable, "-m", "edge_runtime", "predict", "--model", str(bundle / "model.onnx"),
                           str(red)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert_one_line_error(proc, "unknown image fit 'letterbox'")


def test_version_1_contracts_still_load_and_mean_squash():
    from edge_runtime.preprocess import check_contract

    assert check_contract({"version": 1, "input_size": [48, 64]}) == ((48, 64), "squash")
    assert check_contract({"version": 2, "input_size": [48, 64], "fit": "crop"}) == ((48, 64), "crop")


def test_crop_keeps_the_centre_and_its_shapes_where_squash_stretches():
    from edge_runtime.preprocess import load_pixels

    arr = np.zeros((40, 120, 3), np.uint8)  # a wide photo: blue borders, a red centre square 40 px wide
    arr[:, :40] = arr[:, 80:] = (0, 0, 255)
    arr[:, 40:80] = (255, 0, 0)
    crop, squash = load_pixels(arr, (20, 20), "crop"), load_pixels(arr, (20, 20), "squash")
    assert (crop[..., 0] > 250).all() and (crop[..., 2] < 5).all()  # only the centre square
    assert (squash[:, :5, 2] > 250).all() and (squash[:, 8:12, 0] > 250).all()  # the whole width, squeezed
    tall = np.zeros((90, 30, 3), np.uint8)
    tall[30:60] = 200
    assert (load_pixels(tall, (10, 10), "crop") == 200).all()
    square = np.full((30, 30, 3), 77, np.uint8)  # nothing to crop: the same pixels either way
    np.testing.assert_array_equal(load_pixels(square, (16, 16), "crop"), load_pixels(square, (16, 16), "squash"))
