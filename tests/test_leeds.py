"""Slow: transfer learning on the real Leeds butterflies with the real ImageNet MobileNet, default recipe;
then its integer files on an emulated Raspberry Pi."""
import json

import pytest

from conftest import LEEDS, MOBILENET_WEIGHTS, REPO, run_cli
from runlib.run_folder import Run

# Measured with `python -m checks.ablation` (README): the default recipe at 224 px gives test top-1
# 0.987 ± 0.005 over seeds 0, 1, 2 (0.984, 0.984, 0.992; 125 test images each). The floor sits more than
# four of the earlier recipe's spreads (0.008) below the mean, so seed noise does not trip it, while a
# recipe that stopped converging (the old one: 0.912) does.
FLOOR_224 = 0.95


@pytest.mark.slow
def test_default_recipe_on_leeds_butterflies(tmp_path):
    if not (LEEDS.is_dir() and MOBILENET_WEIGHTS.is_file()):
        pytest.skip("../shared datasets or weights not present")
    run = tmp_path / "leeds"
    proc = run_cli("-m", "train", "--data", str(LEEDS), "--run", str(run), "--backbone", "mobilenet", "--alpha", "0.25",
                   "--weights", str(MOBILENET_WEIGHTS), "--image-size", "224", timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cuInit" not in proc.stderr and "training runs on" in proc.stdout
    metrics = json.loads(Run(run).metrics.read_text())
    print("Leeds test metrics:", {k: metrics["test"][k] for k in ("top1", "macro_f1", "balanced_accuracy")})
    assert metrics["test"]["top1"] >= FLOOR_224, metrics["test"]
    state = Run(run).state()
    probe = [h for h in state["history"] if h.get("C") is not None]
    assert probe and all(h["converged"] for h in probe), "phase 1 must solve the head to convergence"

    # where users deploy it: both integer files of this real model, on an emulated Raspberry Pi
    proc = run_cli("-m", "export", "--run", str(run), "--variants", "tflite-int8,onnx-int8", timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for variant in ("tflite-int8", "onnx-int8"):
        proc = run_cli("-m", "edgeclf", "pi-check", "--run", str(run), "--variant", variant,
                       "--dist", str(tmp_path / "dist"), "--cache", str(REPO / ".pi"), timeout=3600)
        if proc.returncode == 3:
            pytest.skip(proc.stderr.strip().splitlines()[-1])
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        result = json.loads((run / "pi_check" / f"{run.name}-{variant}.json").read_text())
        checked = result["selfcheck"]["result"]["results"]
        assert result["guest"]["machine"] == "aarch64" and result["passed"]
        assert [r["same_top1"] for r in checked[1:]] == [8] and result["serve"]["answer"][0] == 200
