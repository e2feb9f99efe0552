"""benchmark: hand-checked metrics, the parity gate, the report files, and bad input."""
import csv
import json
import shutil

import numpy as np
import pytest

from benchmark.evaluate import accuracy, gate
from edge_runtime.timing import summarize
from conftest import assert_one_line_error, run_cli
from runlib.metrics import agreement, classification_metrics, top_k_accuracy

FAST = ["--min-runs", "3", "--min-seconds", "0", "--warmup", "1", "--batch", "4"]


def test_metrics_match_hand_computed_values():
    # 3 classes; true 0,0,1,2 -> predicted 0,1,1,1
    y = [0, 0, 1, 2]
    probs = np.array([[0.7, 0.2, 0.1], [0.4, 0.5, 0.1], [0.1, 0.8, 0.1], [0.35, 0.6, 0.05]])
    m = classification_metrics(y, probs, ["a", "b", "c"])
    assert m["top1"] == 0.5
    assert m["top5"] is None  # fewer than five classes
    assert m["per_class_recall"] == {"a": 0.5, "b": 1.0, "c": 0.0}
    assert m["balanced_accuracy"] == pytest.approx(0.5)
    # F1: a = 2*1*.5/1.5 = 2/3, b = 2*(1/3)*1/(4/3) = 1/2, c = 0
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.5 + 0) / 3)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]
    assert top_k_accuracy(y, probs, 2) == 0.75  # only the 'c' image misses its top two


def test_agreement_and_change_against_the_reference():
    y = np.array([0, 1, 1, 0])
    ref = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.4, 0.6]])  # top-1 0.75 (last image wrong)
    var = np.array([[0.8, 0.2], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]])  # top-1 0.75: flips images 3 and 4
    a = agreement(var, ref)
    assert a["agreement"] == 0.5
    assert a["prob_max_abs_diff"] == pytest.approx(0.3)
    assert a["prob_mean_abs_diff"] == pytest.approx((0.1 + 0 + 0.2 + 0.3) * 2 / 8)
    row = accuracy(y, var, ref, ["x", "y"])
    assert row["top1_change_points"] == pytest.approx(0.0) and row["agreement"] == 0.5
    worse = accuracy(y, np.array([[0.1, 0.9]] * 4), ref, ["x", "y"])  # top-1 0.5: 25 points down
    assert worse["top1_change_points"] == pytest.approx(-25.0)


def _row(name, change, agree, status="ok"):
    return {"variant": name, "status": status, "top1_change_points": change, "agreement": agree, "error": "boom"}


def test_gate_fires_only_past_its_limits():
    rows = [_row("keras", 0.0, 1.0), _row("at-limits", -1.0, 0.98), _row("better", 2.0, 0.99),
            _row("dropped", -1.6, 0.99), _row("disagrees", 0.0, 0.97), _row("broken", None, None, status="error"),
            _row("qat-source", -5.0, 0.5)]
    failures = gate(rows, max_drop=1.0, min_agreement=0.98)
    assert sorted(failures) == ["broken", "disagrees", "dropped"]
    assert "top-1 -1.60 points" in failures["dropped"][0]
    assert "agreement 0.970" in failures["disagrees"][0]
    assert gate(rows[:3], 1.0, 0.98) == {}
    assert sorted(gate(rows, max_drop=2.0, min_agreement=0.9)) == ["broken"]


def test_percentiles():
    s = summarize([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert s["runs"] == 100 and s["p50_ms"] == pytest.approx(50.5) and s["p90_ms"] == pytest.approx(90.1)
    assert s["p99_ms"] == pytest.approx(99.01) and s["min_ms"] == pytest.approx(1.0)


def test_benchmark_reports_every_variant(tiny_export, tmp_path):
    from conftest import COLOURS, make_image

    field = tmp_path / "field"  # photos "from elsewhere": two known classes, larger, and a species it never saw
    for name, colour in (("red", COLOURS[0]), ("blue", COLOURS[2]), ("yellow_moth", COLOURS[3])):
        (field / name).mkdir(parents=True)
        for i in range(6):
            make_image(colour, 90, seed=500 + i).save(field / name / f"{i}.jpg")
    proc = run_cli("-m", "benchmark", "--run", str(tiny_export.path), "--no-gate", "--field", str(field), *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tiny_export.benchmark_dir
    report = json.loads((out / "report.json").read_text())
    rows = {r["variant"]: r for r in report["rows"]}
    assert list(rows) == ["keras", "tflite-fp32", "tflite-fp16", "tflite-dynamic", "tflite-int8", "qat-source",
                          "tflite-qat-int8", "onnx-fp32", "onnx-int8"]
    # QAT is distilled from the float model by default, so every file is gated against Keras; its float
    # source is still measured as a row of its own. Each agreement has an interval.
    assert rows["tflite-qat-int8"]["agreement_reference"] == "keras"
    assert rows["tflite-int8"]["agreement_reference"] == "keras"
    for name in ("tflite-int8", "onnx-int8", "tflite-qat-int8"):
        lo, hi = rows[name]["agreement_ci"]
        assert lo <= rows[name]["agreement"] <= hi and rows[name]["n"] == report["context"]["test_images"]
        lo, hi = rows[name]["top1_change_ci"]
        assert lo - 1e-9 <= rows[name]["top1_change_points"] <= hi + 1e-9
    assert all(r["status"] == "ok" for r in rows.values())
    # the Keras figures are the training run's own test evaluation: same split, same model
    trained = json.loads(tiny_export.metrics.read_text())["test"]
    assert rows["keras"]["top1"] == pytest.approx(trained["top1"])
    assert rows["keras"]["confusion_matrix"] == trained["confusion_matrix"]
    n = report["context"]["test_images"]
    assert n == trained["n"] and sum(map(sum, rows["tflite-int8"]["confusion_matrix"])) == n
    assert rows["tflite-fp32"]["agreement"] == 1.0 and rows["tflite-fp32"]["prob_max_abs_diff"] < 1e-3
    for r in rows.values():
        assert r["top1_change_points"] == pytest.approx(100 * (r["top1"] - rows["keras"]["top1"]))
        assert 0.0 <= r["mobile_resize_agreement"] <= 1.0 and 0.0 <= r["mobile_resize_top1"] <= 1.0
        assert r["peak_rss_mb"] > 0 and r["size_mb"] > 0
        if r["variant"] == "qat-source":  # an accuracy reference, never deployed: not timed
            assert r["p50_ms"] is None and r.get("speedup_vs_keras") is None
            continue
        assert r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] and r["latency_runs"] >= 3
        assert r["throughput_images_per_s"] > 0 and 0 <= r["p50_ci_relative"]
    assert report["context"]["threads"][0] == 1 and report["machine"]["cores"] >= 1
    assert report["versions"]["onnxruntime"] and report["gate"]["enforced"] is False
    # each exported variant measured with this machine's fastest runtime settings, recorded for edge_runtime
    from edge_runtime.backends import setting_choices
    from edge_runtime.machine import signature

    tuned = json.loads(tiny_export.export_manifest.read_text())["runtime_settings"]
    assert set(tuned) == set(rows) - {"keras", "qat-source"}
    for name, t in tuned.items():
        assert t["machine"] == signature() and rows[name]["runtime_settings"] == t["settings"]
        choices = setting_choices(rows[name]["format"])
        assert [c["settings"] for c in t["candidates"]] == choices and t["settings"] in choices
        assert next(c for c in t["candidates"] if c["settings"] == t["settings"])["same_predictions"]
    with open(out / "report.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["variant"] for r in table] == list(rows)
    assert float(table[4]["top1"]) == pytest.approx(rows["tflite-int8"]["top1"], abs=1e-5)
    md = (out / "report.md").read_text()
    assert "| variant | format | precision | size MB | top-1 | Δ top-1 (pts) | 95% CI | agreement | 95% CI (Wilson) |" in md
    assert all(f"| {name} |" in md for name in rows) and "## Per-class recall" in md
    assert "## Which file to deploy on this machine" in md and "same class, mobile resize" in md
    assert "| runtime settings |" in md and "xnnpack=" in md and "graph_optimization=" in md
    for png in ("accuracy_vs_latency.png", "confusion_float_vs_int8.png", "reliability.png", "risk_coverage.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the decision rule from the export manifest, applied to every file; the field folder's classes and strangers
    rule = json.loads(tiny_export.export_manifest.read_text())["decision"]
    assert report["context"]["decision_rule"]["threshold"] == rule["threshold"]
    assert report["context"]["outside"]["field"]["known_folders"] == ["blue", "red"]
    assert report["context"]["outside"]["field"]["unknown_folders"] == ["yellow_moth"]
    for name, r in rows.items():
        f = r["decisions"]["field"]
        assert f["known_images"] == 12 and f["unknown_images"] == 6 and 0 <= f["unknown_named"] <= 1
        assert 0 <= f["coverage"] <= 1 and 0 <= f["auroc"] <= 1 and r["decisions"]["calibration"]["ece"] >= 0
        assert (name == "keras") == (f.get("agreement") is None)
    assert rows["tflite-fp32"]["decisions"]["test"]["agreement"] == 1.0
    assert "## The field check" in md and "yellow_moth" in md and "## Decisions" in md
    assert "## In the field" in (tiny_export.path / "MODEL_CARD.md").read_text()


@pytest.fixture
def run_copy(tiny_export, tmp_path):
    """A copy of the tiny run with its own copy of the images, safe to break."""
    from runlib.run_folder import Run

    dst = Run(tmp_path / "run")
    shutil.copytree(tiny_export.path, dst.path)
    data = tmp_path / "images"
    shutil.copytree(tiny_export.data_root(), data)
    cfg = dst.config()
    cfg["data_root"] = str(data)
    dst.config_file.write_text(json.dumps(cfg))
    return dst


def test_gate_failure_names_the_variant_and_exits_1(run_copy):
    # a corrupted int8 file: the runtime refuses it, so that variant cannot prove parity
    with open(run_copy.export_dir / "model-int8.tflite", "ab") as f:
        f.write(b"\0")
    args = ["-m", "benchmark", "--run", str(run_copy.path), "--variants", "tflite-fp32,tflite-int8", *FAST]
    proc = run_cli(*args)
    assert proc.returncode == 1, proc.stderr[-2000:]
    err = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert (len(err) == 1 and "tflite-int8" in err[0] and "checksum mismatch" in err[0]
            and "tflite-fp32" not in err[0].split("(")[0])
    assert run_cli(*args, "--no-gate").returncode == 0


def test_a_missing_variant_fails_the_gate(run_copy):
    # the manifest lists tflite-fp16 but its file is gone: it cannot prove parity, so the gate fails
    (run_copy.export_dir / "model-fp16.tflite").unlink()
    proc = run_cli("-m", "benchmark", "--run", str(run_copy.path), "--variants", "tflite-fp32,tflite-fp16", *FAST)
    assert proc.returncode == 1, proc.stderr[-2000:]
    err = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(err) == 1 and "tflite-fp16" in err[0] and "no export" in err[0]
    report = json.loads((run_copy.benchmark_dir / "report.json").read_text())
    assert {r["variant"]: r["status"] for r in report["rows"]}["tflite-fp16"] == "missing"
    assert "tflite-fp16" in report["gate"]["failures"]


def test_changed_or_missing_test_images_are_refused(run_copy):
    root = run_copy.data_root()
    test = [s for s in run_copy.split() if s.subset == "test"]
    (root / test[0].path).write_bytes((root / test[1].path).read_bytes())
    assert_one_line_error(run_cli("-m", "benchmark", "--run", str(run_copy.path), *FAST),
                          "no longer matches", "1 changed", test[0].path)
    (root / test[0].path).unlink()
    assert_one_line_error(run_cli("-m", "benchmark", "--run", str(run_copy.path), *FAST), "1 missing")


def test_no_export_and_bad_options_are_refused(run_copy):
    shutil.rmtree(run_copy.export_dir)
    assert_one_line_error(run_cli("-m", "benchmark", "--run", str(run_copy.path)), "no export yet", "make export")
    assert_one_line_error(run_cli("-m", "benchmark", "--run", str(run_copy.path), "--variants", "tflite-int3"),
                          "tflite-int3")
    assert_one_line_error(run_cli("-m", "benchmark", "--run", str(run_copy.path), "--min-agreement", "2"), "--min-agreement")


def test_latency_interleaves_and_stops_at_min_runs():
    from edge_runtime.timing import latency

    calls = []
    a, b = latency(lambda i: calls.append(("a", i)), lambda i: calls.append(("b", i)),
                   warmup=2, min_runs=4, min_seconds=0, ci=None, max_runs=100)
    assert a["runs"] == b["runs"] == 4
    assert calls == [("a", 0), ("b", 0), ("a", 1), ("b", 1)] + [(x, i) for i in range(4) for x in "ab"]


def _fake_clock(monkeypatch, durations):
    """perf_counter advancing by durations[k] on the k-th timed call (cycling), so timing is deterministic."""
    import itertools

    import edge_runtime.timing as timing

    state = {"now": 0.0, "step": itertools.cycle(durations)}

    def fn(i):
        state["now"] += next(state["step"])

    monkeypatch.setattr(timing.time, "perf_counter", lambda: state["now"])
    return fn


def test_latency_stops_once_the_median_is_known(monkeypatch):
    from edge_runtime.timing import latency

    steady = latency(_fake_clock(monkeypatch, [0.010]), warmup=0, min_runs=20, min_seconds=0, ci=0.02, max_runs=500)
    assert steady["runs"] == 20 and steady["p50_ci_relative"] < 1e-9  # constant time: known at once
    noisy = latency(_fake_clock(monkeypatch, [0.010, 0.030]), warmup=0, min_runs=20, min_seconds=0, ci=0.02,
                    max_runs=500)
    assert noisy["runs"] == 500 and noisy["p50_ci_relative"] > 0.02  # the median straddles two values: never tight


def test_median_interval_brackets_the_median():
    from edge_runtime.timing import median_ci

    x = list(range(1, 101))
    lo, hi = median_ci(x)
    assert lo < 50.5 < hi and hi - lo <= 22  # n=100: ranks 50 -/+ 9.8


def _measured(name, p50, top1, size, fmt="tflite", agreement=1.0):
    precision = "int8" if "int8" in name else "float16 weights" if "fp16" in name else "float32"
    return {"variant": name, "status": "ok", "format": fmt, "precision": precision, "p50_ms": p50,
            "p50_ms_1thread": 2 * p50, "top1": top1, "size_mb": size, "top1_change_points": 0.0,
            "agreement": agreement}


def test_point_labels_never_overlap():
    from benchmark.report import _place_labels, _text_box
    from runlib.plots import plt

    rows = [_measured(f"variant-{i}", 4.0 + 0.01 * i, 0.95, 90.0) for i in range(7)]  # seven points on one spot
    fig, ax = plt.subplots(figsize=(8, 5.5))
    ax.scatter([r["p50_ms"] for r in rows], [100 * r["top1"] for r in rows])
    ax.set_xscale("log")
    ax.set_ylim(90, 100)
    _place_labels(fig, ax, rows)
    renderer = fig.canvas.get_renderer()
    boxes = [_text_box(t, renderer) for t in ax.texts]
    assert len(boxes) == 7
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    plt.close(fig)


def test_recommendation_picks_among_passing_variants_only():
    from benchmark.evaluate import recommend

    rows = [_measured("keras", 1.0, 0.99, 95, "keras"), _measured("qat-source", 1.0, 0.99, 95, "keras"),
            _measured("tflite-fp32", 4.0, 0.95, 94), _measured("tflite-int8", 1.5, 0.95, 24, agreement=0.99),
            _measured("onnx-int8", 0.5, 0.90, 24, "onnx", agreement=0.9), _measured("tflite-fp16", 4.5, 0.96, 47)]
    rec = recommend(rows, failures={"onnx-int8": ["agreement 0.900 < 0.98"]})
    assert rec["fastest"]["variant"] == "tflite-int8"  # onnx-int8 is faster but fails the gate; keras is no export
    assert rec["smallest"]["variant"] == "tflite-int8"
    assert rec["most_accurate"]["variant"] == "tflite-fp16"
    assert recommend(rows[:2], failures={}) == {}


def test_the_integer_pick_names_the_cheapest_passing_integer_file_and_its_cost_against_float():
    from benchmark.evaluate import recommend

    rows = [_measured("keras", 1.0, 0.99, 95, "keras"), _measured("tflite-fp32", 4.0, 0.95, 94),
            _measured("tflite-fp16", 3.0, 0.95, 47), _measured("tflite-int8", 1.0, 0.95, 24, agreement=0.95),
            {**_measured("tflite-qat-int8", 1.6, 0.95, 24, agreement=0.99), "float_ops": 3},
            _measured("onnx-fp32", 3.0, 0.95, 94, "onnx"), _measured("onnx-int8", 1.2, 0.95, 24, "onnx")]
    failures = {"tflite-int8": ["agreement 0.950 < 0.98"]}
    pick = recommend(rows, failures)["integer"]
    # onnx-int8 is the fastest passing integer file at 1 thread; its float is onnx-fp32 (6.0 / 2.4 ms)
    assert pick["variant"] == "onnx-int8" and pick["float_variant"] == "onnx-fp32"
    assert pick["speedup_vs_float"] == pytest.approx(2.5)
    assert pick["failing_integer"] == ["tflite-int8"]
    # with onnx-int8 failing too, the passing QAT file is named with the ops it keeps float
    pick = recommend(rows, {**failures, "onnx-int8": ["class x"]})["integer"]
    assert pick["variant"] == "tflite-qat-int8" and pick["ops_kept_float"] == 3
    assert pick["speedup_vs_float"] == pytest.approx(4.0 / 1.6)
    # no integer file passes: none is named, the closest is
    none = recommend(rows, {**failures, "onnx-int8": ["x"], "tflite-qat-int8": ["x"]})
    assert none["integer"]["variant"] is None and none["integer"]["closest"] in ("onnx-int8", "tflite-qat-int8")
    assert none["fastest"]["variant"] == "tflite-fp16"
    from benchmark.report import integer_lines

    assert "no integer file passes the gate" in "\n".join(integer_lines({"recommendation": none}))
    assert "runs 2.50× its speed" in "\n".join(integer_lines({"recommendation": recommend(rows, failures)}))


def test_mobile_resize_is_plain_bilinear_without_antialiasing():
    import tensorflow as tf

    from benchmark.evaluate import mobile_resize

    img = np.random.default_rng(0).integers(0, 256, (97, 131, 3)).astype(np.uint8)
    for size in ((32, 32), (64, 48), (200, 150)):
        want = tf.image.resize(img[None].astype(np.float32), size, method="bilinear", antialias=False)[0].numpy()
        got = mobile_resize(img, size)
        assert got.shape == (*size, 3) and np.abs(got.astype(np.float32) - want).max() <= 0.5 + 1e-3  # rounding only
    assert np.array_equal(mobile_resize(img, img.shape[:2]), img)


def test_settings_change_only_when_clearly_faster_with_the_same_predictions():
    from benchmark.evaluate import choose_settings

    def c(x, ms, same=True):
        return {"settings": {"xnnpack": x}, "p50_ms": ms, "same_predictions": same}

    assert choose_settings([c(True, 10.0), c(False, 9.9)]) == {"xnnpack": True}  # 1%: noise, keep the defaults
    assert choose_settings([c(True, 10.0), c(False, 9.0)]) == {"xnnpack": False}
    assert choose_settings([c(True, 10.0), c(False, 5.0, same=False)]) == {"xnnpack": True}
    assert choose_settings([c(True, 10.0), c(False, 12.0)]) == {"xnnpack": True}


def test_the_report_names_every_op_the_fallback_kept_float_and_its_cost():
    from benchmark.evaluate import fallback_summary
    from benchmark.report import fallback_section

    manifest_record = {  # as export/fallback.py writes it, per-op lists included
        "candidate_ops": 72, "validation_before": {"top1_change_points": 1.6, "agreement": 0.88},
        "validation_after": {"top1_change_points": -0.8, "agreement": 0.984}, "kept_float_layers": ["conv5_a", "head_dense"],
        "float_from": "conv5_a", "met_budget": True, "float_weights": {"int8": True, "ops": 2},
        "single_ops": {"sensitivity": [{"op": "x"}]},
        "cost": {"bytes_full_int8": 24e6, "bytes": 69e6, "p50_ms_1thread_full_int8": 9.6, "p50_ms_1thread": 26.1}}
    row = {"variant": "tflite-int8", "activation_ranges": "p99.9@0.5", "fallback": fallback_summary(manifest_record)}
    assert "single_ops" not in row["fallback"]
    text = "\n".join(fallback_section([row, {"variant": "tflite-fp32"}]))
    assert "2 of 72, from `conv5_a` to the output (int8 weights in 2 of them)" in text
    assert "24.0 → 69.0" in text and "9.6 → 26.1" in text
    assert "`conv5_a`, `head_dense`" in text and "tflite-fp32" not in text
    assert fallback_section([{"variant": "tflite-fp32"}]) == []
    # what bias correction did (export/int8.py's record) is said beside the fallback, kept or not
    row["bias_correction"] = {"tried": True, "kept": True, "layers": 27, "images": 200,
                              "validation_plain": {"top1_change_points": 0.8, "agreement": 0.96,
                                                   "mean_abs_prob_diff": 0.0053},
                              "validation_corrected": {"top1_change_points": 0.0, "agreement": 0.984,
                                                       "mean_abs_prob_diff": 0.0016}}
    text = "\n".join(fallback_section([row]))
    assert ("`tflite-int8`: bias correction kept (27 layers from 200 calibration images): validation agreement "
            "0.960 → 0.984, mean |Δp| 0.0053 → 0.0016, Δ top-1 +0.8 → +0.0 pts") in text
    row["bias_correction"] = {"tried": False, "why": "the plain file meets the budget"}
    assert "bias correction not tried (the plain file meets the budget)" in "\n".join(fallback_section([row]))


def test_a_variant_export_skipped_on_purpose_is_neither_measured_nor_failed(run_copy):
    from edge_runtime.files import read_manifest, write_json

    manifest = read_manifest(run_copy.export_dir)
    manifest["variants"]["tflite-qat-int8"] = {"file": "model-qat-int8.tflite", "format": "tflite", "status": "skipped",
                                              "precision": "int8", "why": "--qat auto: tflite-int8 already meets it"}
    write_json(run_copy.export_dir / "manifest.json", manifest)
    proc = run_cli("-m", "benchmark", "--run", str(run_copy.path), "--variants", "tflite-fp32,tflite-qat-int8",
                   "--accept-inconclusive", *FAST)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((run_copy.benchmark_dir / "report.json").read_text())
    assert [r["variant"] for r in report["rows"]] == ["keras", "tflite-fp32"]
    assert report["context"]["skipped"] == {"tflite-qat-int8": "--qat auto: tflite-int8 already meets it"}
    assert "Not exported on purpose" in (run_copy.benchmark_dir / "report.md").read_text()
