"""Slow: transfer learning on the real Leeds butterflies with the real ImageNet MobileNet."""
import json

import pytest

from conftest import LEEDS, MOBILENET_WEIGHTS, run_cli
from train.rundir import Run


@pytest.mark.slow
def test_mobilenet_on_leeds_butterflies_reaches_90_percent(tmp_path):
    if not (LEEDS.is_dir() and MOBILENET_WEIGHTS.is_file()):
        pytest.skip("../shared datasets or weights not present")
    run = tmp_path / "leeds"
    proc = run_cli("-m", "train", "--data", str(LEEDS), "--run", str(run), "--backbone", "mobilenet", "--alpha", "0.25",
                   "--weights", str(MOBILENET_WEIGHTS), "--image-size", "224", "--epochs-head", "8",
                   "--epochs-finetune", "4", "--lr", "0.003", "--lr-finetune", "0.0003", timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(Run(run).metrics.read_text())
    print("Leeds test metrics:", {k: metrics["test"][k] for k in ("top1", "macro_f1", "balanced_accuracy")})
    assert metrics["test"]["top1"] >= 0.90, metrics["test"]
