"""Parity where it is hard: per-class parity, flips, corruptions, distilled QAT, and the model card."""
import json
import re
import shutil

import numpy as np

from conftest import run_cli
from runlib.run_folder import Run


def one_hot(labels, classes, confidence=0.9):
    p = np.full((len(labels), classes), (1 - confidence) / (classes - 1))
    p[np.arange(len(labels)), labels] = confidence
    return p


def test_a_variant_that_drops_one_class_fails_the_per_class_gate_while_passing_overall():
    """300 test images in 10 classes: the variant loses 3 of class 0's 15 images (Keras right, it wrong) and
    gains 2 elsewhere: agreement 0.983 and top-1 -0.3 points pass the overall budget; class 0's recall falls
    20 points with 3 images lost net, past the per-class budget (10 points and 2 images)."""
    from benchmark.evaluate import gate
    from runlib.metrics import agreement, class_parity

    rng = np.random.default_rng(0)
    y = np.concatenate([np.zeros(15, int), rng.integers(1, 10, 285)])
    keras_pred = y.copy()
    wrong_for_keras = np.nonzero(y != 0)[0][:2]
    keras_pred[wrong_for_keras] = (y[wrong_for_keras] + 1) % 10
    variant_pred = keras_pred.copy()
    variant_pred[:3] = 5  # three class-0 images lost
    variant_pred[wrong_for_keras] = y[wrong_for_keras]  # two gained elsewhere
    keras, variant = one_hot(keras_pred, 10), one_hot(variant_pred, 10)
    names = [f"c{i}" for i in range(10)]
    row = {"variant": "v", "status": "ok",
           "top1_change_points": 100 * (np.mean(variant_pred == y) - np.mean(keras_pred == y)),
           **agreement(variant, keras), "class_parity": class_parity(y, variant, keras, names)}
    assert row["agreement"] >= 0.98 and row["top1_change_points"] > -1.0
    failures = gate([row])
    assert list(failures) == ["v"] and len(failures["v"]) == 1 and failures["v"][0].startswith("class c0: recall 0.800")
    assert gate([row], max_class_drop=25.0) == {}  # a looser per-class budget lets it through
    assert gate([row], class_images=3) == {}  # so does tolerating 3 images net
    p = row["class_parity"]["c0"]
    assert (p["n"], p["lost"], p["gained"], round(p["change_points"], 1)) == (15, 3, 0, -20.0) and p["p"] == 0.25


def test_the_fallback_applies_the_per_class_budget_on_validation():
    from export.fallback import Budget, val_metrics

    y = np.repeat(np.arange(4), 40)
    ref = one_hot(y, 4)
    worse = ref.copy()
    worse[:4] = one_hot(np.full(4, 2), 4)  # class 0 loses 4 of 40: 10 points exactly, then one more
    worse[4] = one_hot(np.array([2]), 4)[0]
    m = val_metrics(worse, ref, y)
    assert m["agreement"] >= 0.968 and "0" in m["classes_lost"]
    loose = {"min_agreement": 0.9, "max_drop": 5.0}  # the overall budget holds; only the class's does not
    assert Budget(**loose).misses(m) == [
        "class 0: recall 0.875 against 1.000 (-12.5 points, 5 of 40 images lost net; budget 10 points and 2 images)"]
    assert Budget(**loose, max_class_drop=15).misses(m) == []


def test_corruptions_are_the_same_for_the_same_seed():
    from runlib.corruptions import CORRUPTIONS, corrupt, corrupted_set, pick

    pixels = np.random.default_rng(1).integers(0, 256, (4, 48, 48, 3), dtype=np.uint8)
    names, a = corrupted_set(pixels, seed=3)
    _, b = corrupted_set(pixels, seed=3)
    assert len(names) == 3 * len(CORRUPTIONS) == 24 and a.shape == (96, 48, 48, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(corrupt(pixels, "gaussian_noise", 2, seed=3), corrupt(pixels, "gaussian_noise", 2, seed=4))
    for name in CORRUPTIONS:  # each changes the image, more at a higher severity
        d = [np.abs(corrupt(pixels, name, s).astype(int) - pixels).mean() for s in (1, 2, 3)]
        assert 0 < d[0] <= d[2], (name, d)
    idx = pick(np.repeat(np.arange(5), 10), 12)
    assert len(idx) == 12 and np.bincount(np.repeat(np.arange(5), 10)[idx]).min() >= 2


def test_flip_gallery_and_table_state_the_full_count_when_capped(tmp_path):
    from benchmark.parity_report import flips_section, plot_flips

    flips = [{"index": i % 3, "image": f"{i}.jpg", "true": "a", "predicted": "b", "probability": 0.6,
              "reference_predicted": "a", "reference_probability": 0.55} for i in range(30)]
    row = {"variant": "tflite-int8", "status": "ok", "agreement_reference": "keras", "class_parity": {"a": {}},
           "flips": flips}
    text = "\n".join(flips_section([row], shown=24))
    assert "| tflite-int8 | 30 | ![flips](flips_tflite-int8.png) |" in text and "the first 24 shown" in text
    assert text.count("| 23.jpg |") == 1 and "| 24.jpg |" not in text
    plot_flips(row, np.zeros((3, 32, 32, 3), np.uint8), tmp_path / "g.png", shown=24)
    assert (tmp_path / "g.png").stat().st_size > 1000


def test_distilled_qat_is_gated_against_keras(tiny_export):
    manifest = json.loads(tiny_export.export_manifest.read_text())
    entry = manifest["variants"]["tflite-qat-int8"]
    assert entry["qat_labels"] == 0.0 and entry["gate_reference"] == "keras"
    assert "agreement" in entry["qat_history"] and entry["reference_model_sha256"]
    from benchmark.evaluate import targets

    chosen, _ = targets(tiny_export, "tflite-qat-int8")
    assert [(t.name, t.agree_ref) for t in chosen] == [("keras", None), ("qat-source", None), ("tflite-qat-int8", "keras")]


def test_the_model_card_states_what_the_runs_json_says(tiny_export, tmp_path):
    """Generated from the JSON only: its figures are the JSON's."""
    from runlib.model_card import CARD

    run = Run(tmp_path / "card")
    shutil.copytree(tiny_export.path, run.path, ignore=shutil.ignore_patterns("benchmark", "MODEL_CARD.md"))
    proc = run_cli("-m", "edgeclf.cli", "benchmark", "--run", str(run.path), "--variants", "tflite-int8,onnx-int8",
                   "--no-gate", "--max-seconds", "1")  # the card is written whatever the gate says
    assert proc.returncode == 0, proc.stderr[-2000:]
    card = (run.path / CARD).read_text()
    metrics = json.loads(run.metrics.read_text())
    report = json.loads((run.benchmark_dir / "report.json").read_text())
    manifest = json.loads(run.export_manifest.read_text())
    test = metrics["test"]
    assert f"| test | {test['n']} | {test['top1']:.3f} [" in card
    for c, r in test["per_class_recall"].items():
        assert re.search(rf"\| {c} \| \d+ \| {r:.3f} \|", card), c
    for row in report["rows"]:
        if row["status"] == "ok" and row["variant"] != "keras":
            assert (f"| `{row['variant']}` | {row['size_mb']:.2f} | {row['p50_ms_1thread']:.2f} / {row['p50_ms']:.2f} | "
                    f"{row['top1']:.3f} | {row['agreement']:.3f} [") in card
    for e in manifest["variants"].values():
        assert f"`{e['file']}`: `{e['sha256']}`" in card
    assert run.config()["split_sha256"] in card and manifest["source_model"]["sha256"] in card
    data = json.loads(run.data_report.read_text())
    assert f"{data['files_listed']} files listed, {data['images_used']} used" in card
