"""The house rules the linters do not state: a new variant or backbone is one row, functions stay short, and the
floors drawn in docs/architecture.md are the ones the import contract checks."""
import ast
import json
import re
import tarfile
import tomllib

import pytest

from conftest import REPO, make_tree, run_cli

PACKAGES = ("edge_runtime", "runlib", "train", "export", "benchmark", "checks", "edgeclf")
MAX_LINES = 50


def test_functions_are_short_or_say_why():
    """No function over 50 lines unless its def line says why (`# long: ...`)."""
    long = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            source = path.read_text(encoding="utf-8")
            lines = source.splitlines()
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = node.end_lineno - node.lineno + 1
                    if length > MAX_LINES and "# long:" not in lines[node.lineno - 1]:
                        long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, long


def test_the_floors_drawn_in_the_docs_are_the_contracts_floors():
    contract = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c for c in contract if c["type"] == "layers")["layers"]
    drawing = (REPO / "docs" / "architecture.md").read_text().split("```")[1]
    drawn = [m.group(1) for m in re.finditer(r"^([a-z_]+)/", drawing, re.M)]
    assert drawn == layers, (drawn, layers)
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert set(layers) <= set(packages)


def test_every_option_bound_is_checked_at_the_boundary():
    """Bounds live on the option rows; resolve() refuses a value outside them with one line naming the flag."""
    from edge_runtime.errors import InputError
    from runlib.options import COMMANDS, resolve

    checked = 0
    for command, table in COMMANDS.items():
        for o in table:
            if o.low is None or o.type not in (int, float):
                continue
            bad = o.low if o.above else o.low - 1
            with pytest.raises(InputError, match=re.escape(o.flags[0])):
                resolve(command, {o.name: o.type(bad)})
            checked += 1
    assert checked >= 30


@pytest.mark.slow
def test_a_new_backbone_and_a_new_variant_are_one_row_each(tmp_path, monkeypatch):
    """A backbone (a builder) and a variant (a converter) added here, one row each, go through train, export,
    benchmark, bundle and the device's selfcheck with nothing else changed."""
    import benchmark
    import export
    import train
    from export import tflite_convert, variants
    from export.bundle import build
    from runlib.backbones import BACKBONES, Backbone

    def tiny_builder(include_top=False, weights=None, input_shape=None, input_tensor=None):
        from runlib.tf_setup import import_keras

        keras = import_keras()
        x = input_tensor if input_tensor is not None else keras.Input(input_shape)
        inputs = keras.utils.get_source_inputs(x) if input_tensor is not None else x
        x = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="tiny_conv1")(x)
        x = keras.layers.Conv2D(16, 3, strides=2, activation="relu", name="tiny_conv2")(x)
        return keras.Model(inputs, x, name="tiny")

    monkeypatch.setitem(BACKBONES, "tiny_test", Backbone(tiny_builder, "tf", "tiny_conv2"))
    row = variants.Variant("tflite-fp32-again", "tflite", "float32", "model-fp32-again.tflite", tflite_convert.fp32,
                           float_preference=9)
    monkeypatch.setattr(variants, "VARIANTS", (*variants.VARIANTS, row))
    monkeypatch.setitem(variants.BY_NAME, row.name, row)

    data = make_tree(tmp_path / "images", {"red": 24, "green": 24, "blue": 24}, size=32)
    t = train.train(data=str(data), run=str(tmp_path / "run"), backbone="tiny_test", weights="none", image_size="32",
                    epochs_head=2, epochs_finetune=1, batch_size=8, augment=0.0)
    assert t.run.config()["backbone"] == "tiny_test" and t.metrics["test"]["top1"] > 0
    e = export.export(t.run.path, variants=f"tflite-fp32,{row.name}", smoke_images=4)
    assert e.ok and e.manifest["variants"][row.name]["status"] == "ok", e.manifest
    b = benchmark.benchmark(t.run.path, variants=f"tflite-fp32,{row.name}", tune=False, robustness=False,
                            warmup=1, min_runs=3, min_seconds=0.0, max_seconds=0.5, accept_inconclusive=True)
    assert b.rows[row.name]["status"] == "ok" and b.rows[row.name]["agreement"] >= 0.99, b.rows[row.name]
    tarball = build(t.run, row.name, dist=tmp_path / "dist")
    with tarfile.open(tarball) as tar:
        tar.extractall(tmp_path / "device", filter="data")
    bundle = next((tmp_path / "device").iterdir())
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert list(manifest["variants"]) == [row.name] and manifest["selfcheck"]["kinds"] == {row.name: "float"}
    proc = run_cli("-m", "edge_runtime", "selfcheck", "--bundle", str(bundle))
    assert proc.returncode == 0 and f"ok    {row.name}" in proc.stdout, proc.stdout + proc.stderr


def test_importing_the_packages_sets_nothing_and_loads_no_tensorflow():
    """TensorFlow is set up where it is imported (runlib.tf_setup), never as a side effect of importing a package."""
    import os
    import subprocess
    import sys

    code = ("import os, sys; before = dict(os.environ); "
            "import train, export, benchmark, checks, edgeclf.cli, train.fit, export.exporter, benchmark.evaluate; "
            "changed = sorted(k for k in set(os.environ) | set(before) if os.environ.get(k) != before.get(k)); "
            "print(changed, 'tensorflow' in sys.modules)")
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_USE_LEGACY_KERAS", "TF_CPP_MIN_LOG_LEVEL", "CUDA_VISIBLE_DEVICES")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[] False", proc.stdout
