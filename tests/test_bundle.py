"""make bundle: one variant, the runtime and pinned requirements, runnable where TensorFlow is not installed."""
import json
import subprocess
import sys
import tarfile

import pytest

from conftest import assert_one_line_error, make_image, run_cli
from edge_runtime.classifier import Classifier
from export.bundle import build


def test_bundle_holds_the_model_runtime_and_only_its_requirements(tiny_export, tmp_path):
    out = build(tiny_export, "onnx-int8", tmp_path / "dist")
    assert out.name == f"{tiny_export.path.name}-onnx-int8.tar.gz"
    with tarfile.open(out) as tar:
        names = tar.getnames()
        top = f"{tiny_export.path.name}-onnx-int8/"
        assert all(n.startswith(top) for n in names)
        files = {n[len(top):] for n in names}
        assert {"model-int8.onnx", "labels.txt", "manifest.json", "requirements.txt", "README.md",
                "edge_runtime/classifier.py", "edge_runtime/__main__.py"} <= files
        assert not any("__pycache__" in n or n.endswith(".tflite") for n in files)
        reqs = tar.extractfile(top + "requirements.txt").read().decode().split()
        manifest = json.loads(tar.extractfile(top + "manifest.json").read())
    assert [r.split("==")[0] for r in reqs] == ["onnxruntime", "numpy", "Pillow"] and all("==" in r for r in reqs)
    assert list(manifest["variants"]) == ["onnx-int8"]
    assert not list((tmp_path / "dist").glob(".*"))  # no temp file left behind


def test_bundle_errors_are_one_line(tiny_export, tmp_path):
    proc = run_cli("-m", "export.bundle", "--run", str(tiny_export.path), "--variant", "tflite-int4", "--dist", str(tmp_path))
    assert_one_line_error(proc, "tflite-int4", "was not exported")
    proc = run_cli("-m", "export.bundle", "--run", str(tmp_path / "nope"), "--dist", str(tmp_path))
    assert_one_line_error(proc, "does not exist")


@pytest.mark.slow
def test_bundle_runs_in_a_fresh_venv_without_tensorflow(tiny_export, tmp_path):
    out = build(tiny_export, "tflite-int8", tmp_path / "dist")
    device = tmp_path / "device"
    with tarfile.open(out) as tar:
        tar.extractall(device, filter="data")
    bundle = device / f"{tiny_export.path.name}-tflite-int8"
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    pip = subprocess.run([py, "-m", "pip", "install", "--quiet", "-r", "requirements.txt"], cwd=bundle,
                         capture_output=True, text=True, timeout=900)
    assert pip.returncode == 0, pip.stderr[-3000:]
    probe = subprocess.run([py, "-c", "import importlib.util as u; print(u.find_spec('tensorflow') is None)"],
                           capture_output=True, text=True)
    assert probe.stdout.strip() == "True"
    make_image((50, 70, 230), 60, seed=7).save(bundle / "photo.jpg")
    proc = subprocess.run([py, "-m", "edge_runtime", "predict", "model-int8.tflite", "photo.jpg", "--json", "--top-k", "3"],
                          cwd=bundle, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    top = json.loads(proc.stdout)[0]["top_k"]
    # the same answer as the same file gives in the development environment
    expected = Classifier(tiny_export.export_dir / "model-int8.tflite").predict(str(bundle / "photo.jpg"), top_k=3)
    assert [t["label"] for t in top] == [l for l, _ in expected]
    assert [t["probability"] for t in top] == pytest.approx([p for _, p in expected], abs=1e-6)
    info = subprocess.run([py, "-m", "edge_runtime", "info", "model-int8.tflite"], cwd=bundle, capture_output=True, text=True)
    assert info.returncode == 0 and json.loads(info.stdout)["checksum_verified"] is True


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["tflite-int8", "onnx-int8"])
def test_bundle_classifies_like_the_host_on_an_emulated_raspberry_pi(tiny_export, tmp_path, variant):
    """make pi-check: the bundle's own requirements installed for aarch64 and run under qemu. Where this
    machine cannot (not root, no apt-get, no Debian mirror) it says why on one line and the test skips."""
    proc = run_cli("-m", "benchmark.pi_check", "--run", str(tiny_export.path), "--variant", variant, "--images", "6",
                   "--dist", str(tmp_path), timeout=3600)
    if proc.returncode == 3:
        pytest.skip(proc.stderr.strip().splitlines()[-1])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tiny_export.path / "pi_check" / f"{variant}.json").read_text())
    assert result["guest"]["machine"] == "aarch64" and result["guest"]["python"].startswith("3.11")
    assert result["passed"] and result["same_top1"] == result["images"] == 6
    runtime = {"tflite-int8": "ai-edge-litert", "onnx-int8": "onnxruntime"}[variant]
    assert runtime in result["guest"]["versions"]  # installed from the bundle's own requirements.txt
    assert "aarch64" in proc.stdout and "| image | host | Pi (emulated) |" in proc.stdout


def test_pi_check_says_in_one_line_why_this_machine_cannot_run_it(monkeypatch):
    import benchmark.pi_check as pc

    monkeypatch.setattr(pc.shutil, "which", lambda name: "/usr/bin/apt-get" if name == "apt-get" else None)
    monkeypatch.setattr(pc.os, "geteuid", lambda: 1000)
    with pytest.raises(pc.Unavailable, match="needs root"):
        pc.ensure_tools()
    monkeypatch.setattr(pc.shutil, "which", lambda name: None)
    with pytest.raises(pc.Unavailable, match="no apt-get"):
        pc.ensure_tools()
