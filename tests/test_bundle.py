"""make bundle: one variant, the runtime and pinned requirements, runnable where TensorFlow is not installed."""
import json
import subprocess
import sys
import tarfile

import pytest

from conftest import REPO, assert_one_line_error, make_image, run_cli
from edge_runtime.classifier import Classifier
from export.bundle import build


def test_bundle_holds_the_model_the_runtime_wheel_references_and_only_its_requirements(tiny_export, tmp_path):
    import shutil
    import zipfile

    from runlib.run_folder import Run

    run = Run(tmp_path / tiny_export.path.name)  # without whatever benchmark another test ran
    shutil.copytree(tiny_export.path, run.path, ignore=shutil.ignore_patterns("benchmark"))
    out = build(run, "onnx-int8", tmp_path / "dist")
    assert out.name == f"{tiny_export.path.name}-onnx-int8.tar.gz"
    with tarfile.open(out) as tar:
        names = tar.getnames()
        top = f"{tiny_export.path.name}-onnx-int8/"
        assert all(n.startswith(top) for n in names)
        files = {n[len(top):] for n in names}
        wheel = next(f for f in files if f.startswith("wheels/"))
        assert {"model-int8.onnx", "labels.txt", "manifest.json", "requirements.txt", "README.md", "edgeclf.service",
                "reference/reference.json", "reference/pixels.npy", "reference/probabilities.npz"} <= files
        assert not any("__pycache__" in n or n.endswith(".tflite") or n.startswith("edge_runtime/") for n in files)
        reqs = [l for l in tar.extractfile(top + "requirements.txt").read().decode().splitlines() if not l.startswith("#")]
        manifest = json.loads(tar.extractfile(top + "manifest.json").read())
        with zipfile.ZipFile(tar.extractfile(top + wheel)) as z:
            packed = set(z.namelist())
            meta = z.read(next(n for n in packed if n.endswith("METADATA"))).decode()
    assert reqs[0] == f"./{wheel}" and all("==" in r for r in reqs[1:])
    pinned = {r.split("==")[0].lower() for r in reqs[1:]}
    assert {"onnxruntime", "numpy", "pillow", "starlette", "uvicorn", "prometheus_client"} <= pinned
    assert "ai-edge-litert" not in pinned and "tensorflow" not in pinned  # only what this file and the service need
    assert "edge_runtime/classifier.py" in packed and "edge_runtime/serve.py" in packed
    assert "Name: edgeclf-runtime" in meta and 'Requires-Dist: onnxruntime>=1.17; extra == "onnx"' in meta
    assert list(manifest["variants"]) == ["onnx-int8"] and "runtime_settings" not in manifest
    assert manifest["bundle"]["gate_status"] == {"onnx-int8": "not measured by the benchmark"}
    assert not list((tmp_path / "dist").glob(".*"))  # no temp file left behind


def test_runtime_wheel_is_reproducible(tmp_path):
    from export.runtime_wheel import build as wheel

    a, b = wheel(tmp_path / "a"), wheel(tmp_path / "b")
    assert a.name == b.name and a.read_bytes() == b.read_bytes()


def test_default_candidates_are_the_measured_files_that_passed(tmp_path):
    from edge_runtime.errors import InputError
    from export.bundle import default_candidates

    class R:
        path = tmp_path

    manifest = {"variants": {v: {"status": "ok", "sha256": v} for v in
                             ("tflite-fp32", "tflite-fp16", "tflite-dynamic", "tflite-int8", "onnx-int8", "onnx-fp32")}}
    measured = {v: {"passed": True, "sha256": v, "why": ""} for v in manifest["variants"]}
    measured["onnx-int8"]["passed"] = False
    assert default_candidates(R, manifest, measured) == ["tflite-int8", "tflite-fp16"]
    measured["tflite-fp16"]["passed"] = False
    assert default_candidates(R, manifest, measured) == ["tflite-int8", "tflite-fp32"]
    measured["tflite-int8"]["sha256"] = "another file"  # re-exported after the benchmark measured it
    with pytest.raises(InputError, match="tflite-int8: re-exported since the benchmark measured it"):
        default_candidates(R, manifest, measured)
    with pytest.raises(InputError, match="no benchmark report"):
        default_candidates(R, manifest, {})


def test_bundle_errors_are_one_line(tiny_export, tmp_path):
    proc = run_cli("-m", "edgeclf", "bundle", "--run", str(tiny_export.path), "--variant", "tflite-int4",
                   "--dist", str(tmp_path))
    assert_one_line_error(proc, "tflite-int4", "unknown variant")
    proc = run_cli("-m", "edgeclf", "bundle", "--run", str(tmp_path / "nope"), "--dist", str(tmp_path))
    assert_one_line_error(proc, "does not exist")
    import shutil

    unmeasured = tmp_path / "unmeasured"  # the tiny run without whatever benchmark another test ran
    shutil.copytree(tiny_export.path, unmeasured, ignore=shutil.ignore_patterns("benchmark"))
    proc = run_cli("-m", "edgeclf", "bundle", "--run", str(unmeasured), "--dist", str(tmp_path))
    assert_one_line_error(proc, "no benchmark report", "VARIANT=")


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
    for command in ("selfcheck", "select --max-seconds 2"):
        proc = subprocess.run([py, "-m", "edge_runtime", *command.split()], cwd=bundle, capture_output=True, text=True,
                              env={"PATH": "/usr/bin:/bin"})
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    proc = subprocess.run([str(venv / "bin" / "edgeclf-runtime"), "predict", "photo.jpg", "--json", "--top-k", "3"],
                          cwd=bundle, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    top = json.loads(proc.stdout)["top_k"]
    # the same answer as the same file gives in the development environment
    expected = Classifier(tiny_export.export_dir / "model-int8.tflite").predict(str(bundle / "photo.jpg"), top_k=3)
    assert [t["label"] for t in top] == [l for l, _ in expected]
    assert [t["probability"] for t in top] == pytest.approx([p for _, p in expected], abs=1e-6)
    info = subprocess.run([py, "-m", "edge_runtime", "info", "model-int8.tflite"],
                          cwd=bundle, capture_output=True, text=True)
    assert info.returncode == 0 and json.loads(info.stdout)["checksum_verified"] is True


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["tflite-int8", "onnx-int8"])
def test_bundle_checks_itself_selects_and_serves_on_an_emulated_raspberry_pi(tiny_export, tmp_path, variant):
    """make pi-check: the bundle's own requirements installed for aarch64, then selfcheck, select and serve
    run under qemu. Where this machine cannot run the emulation at all (not root, no apt-get, no Debian
    mirror) it says why on one line and the test skips."""
    proc = run_cli("-m", "edgeclf", "pi-check", "--run", str(tiny_export.path), "--variant", variant,
                   "--dist", str(tmp_path), "--cache", str(REPO / ".pi"), timeout=3600)
    if proc.returncode == 3:
        pytest.skip(proc.stderr.strip().splitlines()[-1])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tiny_export.path / "pi_check" / f"{tiny_export.path.name}-{variant}.json").read_text())
    assert result["guest"]["machine"] == "aarch64" and result["guest"]["python"].startswith("3.11")
    assert result["passed"] and result["selfcheck"]["result"]["passed"]
    assert result["select"]["selection"]["machine"]["arch"] == "aarch64"
    assert result["serve"]["answer"][0] == 200 and result["serve"]["exit_code"] == 0
    runtime = {"tflite-int8": "ai-edge-litert", "onnx-int8": "onnxruntime"}[variant]
    assert runtime in result["guest"]["versions"] and "edgeclf-runtime" in result["guest"]["versions"]
    assert f"ok    {variant}:" in proc.stdout and "selected:" in proc.stdout


def test_pi_check_says_in_one_line_why_this_machine_cannot_run_it(monkeypatch):
    import checks.pi_check as pc

    monkeypatch.setattr(pc.shutil, "which", lambda name: "/usr/bin/apt-get" if name == "apt-get" else None)
    monkeypatch.setattr(pc.os, "geteuid", lambda: 1000)
    with pytest.raises(pc.Unavailable, match="needs root"):
        pc.ensure_tools()
    monkeypatch.setattr(pc.shutil, "which", lambda name: None)
    with pytest.raises(pc.Unavailable, match="no apt-get"):
        pc.ensure_tools()


def test_pi_check_fails_naming_a_requirement_with_no_aarch64_wheel(tmp_path):
    """Not installing for aarch64 is a failure of the bundle (exit 1), not an unavailable check (exit 3)."""
    import checks.pi_check as pc

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "requirements.txt").write_text("no-such-package-edgeclf-test==1.0\n")
    with pytest.raises(pc.Failed, match=r"requirement no-such-package-edgeclf-test==1.0 has no wheel for aarch64"):
        pc.ensure_packages(bundle, tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("site-*"))  # nothing half-installed is kept
