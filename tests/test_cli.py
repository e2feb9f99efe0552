"""One command, one source for every option and default, recipes, and the Python API."""
import inspect
import json
import re
import subprocess

import pytest

from conftest import REPO, assert_one_line_error, run_cli
from runlib.options import COMMANDS, NOTSET, defaults


def help_text(*command, module="edgeclf.cli"):
    proc = run_cli("-m", module, *command, "--help")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def entry(text, flag):
    """The help of one option, whitespace normalised: its lines from the flag up to the next option."""
    lines = text.splitlines()
    start = next(i for i, l in enumerate(lines) if re.match(rf"\s+(-\w, )?{re.escape(flag)}\b", l))
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"\s+-", lines[i]) or not lines[i].strip()), len(lines))
    return re.sub(r"\s+", " ", " ".join(lines[start:end]))


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_states_the_defaults_the_code_uses(command):
    """Each option's --help default is its definition's, and the code reads that same definition."""
    text = help_text(command)
    for o in COMMANDS[command]:
        if o.hidden:
            continue
        part = entry(text, o.flags[0])
        said = o.default_text()
        if said:  # this flag's help states exactly the default the code uses
            assert f"({said})" in part, (command, o.flags[0], part)
    assert "examples:" in text and f"edgeclf {command}" in text.split("examples:")[1]


def test_the_code_reads_its_defaults_from_the_definitions():
    from edge_runtime.timing import DEFAULTS as TIMING
    from export.fallback import Budget
    from train import config
    from runlib.metrics import PARITY

    export, bench = defaults("export"), defaults("benchmark")
    b = Budget()
    assert (b.max_drop, b.min_agreement, b.cap, b.enabled, b.seconds) == (
        export["max_drop"], export["min_agreement"], export["fallback_cap"], export["fallback"], export["fallback_seconds"])
    assert export["max_drop"] == bench["max_drop"] == PARITY["max_drop"]
    assert export["min_agreement"] == bench["min_agreement"] == PARITY["min_agreement"]
    assert {k: bench[k] for k in ("warmup", "min_runs", "min_seconds", "ci", "max_seconds")} == {
        k: TIMING[k] for k in ("warmup", "min_runs", "min_seconds", "ci", "max_seconds")}
    assert defaults("export", demo=True)["qat_epochs"] == 1 and export["qat_epochs"] == 2
    demo = config.resolve({}, demo=True)
    for o in COMMANDS["train"]:
        if o.demo is not NOTSET:
            expected = config.parse_size(o.demo) if o.name == "image_size" else o.demo
            assert demo[o.name if o.name != "epochs" else "epochs_head"] == expected, o.name


def test_device_help_states_the_defaults_the_code_uses():
    from edge_runtime.serve import Limits
    from edge_runtime.timing import DEFAULTS

    serve = help_text("serve", module="edge_runtime")
    d = Limits()
    for flag, value in (("--queue", d.queue), ("--max-bytes", d.max_bytes), ("--timeout", d.timeout),
                        ("--workers", d.workers), ("--threads", d.threads), ("--top-k", d.top_k)):
        part = entry(serve, flag)
        assert f"default {value}" in part or f"{value} here" in part, (flag, part)
    select = help_text("select", module="edge_runtime")
    assert f"(default {DEFAULTS['max_seconds']}" in entry(select, "--max-seconds")
    assert f"(default {DEFAULTS['min_runs']})" in entry(select, "--min-runs")


def test_make_passes_the_parity_budget_to_export_and_benchmark():
    """MAX_DROP=2 reaches both the fallback (export) and the gate (benchmark)."""
    proc = subprocess.run(["make", "-n", "export", "benchmark", "MAX_DROP=2", "MIN_AGREEMENT=0.9", "RUN=runs/x"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = [l for l in proc.stdout.splitlines() if "edgeclf export" in l or "edgeclf benchmark" in l]
    assert len(lines) == 2, proc.stdout
    assert all("--max-drop 2" in l and "--min-agreement 0.9" in l for l in lines), lines


def test_every_make_variable_the_definitions_name_is_in_the_makefile():
    makefile = (REPO / "Makefile").read_text()
    for command, options in COMMANDS.items():
        for o in options:
            if o.make:
                assert re.search(rf"\$\(call (opt|flag),{re.escape(o.flags[0])},\$\({o.make}\)\)", makefile), (
                    command, o.make)


def test_recipes_are_read_and_flags_override_them(tmp_path):
    from edge_runtime.errors import InputError
    from runlib.options import collect

    recipe = tmp_path / "recipe.toml"
    recipe.write_text('backbone = "mobilenet"\nalpha = 0.25\nimage_size = 96\n[export]\ncalibration_images = 50\n')
    assert collect("train", {"alpha": 0.5}, recipe) == {"backbone": "mobilenet", "alpha": 0.5, "image_size": 96}
    assert collect("export", {}, recipe) == {"calibration_images": 50}
    (tmp_path / "typo.toml").write_text("backbon = 'mobilenet'\n")
    with pytest.raises(InputError, match="'backbon' is not an option of train"):
        collect("train", {}, tmp_path / "typo.toml")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        collect("train", {}, tmp_path / "bad.json")
    with pytest.raises(InputError, match="unknown option 'epoch'"):
        collect("train", {"epoch": 3})


def test_a_runs_config_is_a_recipe_that_reproduces_it(tiny_run, tmp_path):
    """train --config runs/x/config.json --run runs/y: the same options, so the same config (bar run-specific
    records), and a flag given beside it wins."""
    from runlib.options import read_config
    from train import config

    recorded = tiny_run.config()
    recipe = read_config(tiny_run.config_file, "train")
    assert recipe["data"] == recorded["data_root"] and "run" not in recipe
    again = config.resolve(recipe, demo=False)
    for key in ("backbone", "alpha", "image_size", "epochs_head", "epochs_finetune", "lr", "lr_finetune", "batch_size",
                "augment", "seed", "weights", "train_bn", "schedule", "warmup_epochs", "clip_norm"):
        assert again[key] == recorded[key], key
    proc = run_cli("-m", "edgeclf.cli", "train", "--config", str(tiny_run.config_file), "--run", str(tiny_run.path))
    assert_one_line_error(proc, "already finished")  # the recipe names no run: --run decides, and it is taken
    assert config.resolve({**recipe, "seed": 7}, demo=False)["seed"] == 7


def test_the_api_takes_keywords_and_returns_results(tiny_export):
    """The tiny run itself was trained and exported through train.train() and export.export() (conftest);
    here: their results, and bad keywords refused in one line."""
    import benchmark
    import export
    import train
    from edge_runtime.errors import InputError
    from runlib.results import ExportResult

    for fn in (train.train, export.export, benchmark.benchmark):
        assert "edgeclf" in inspect.getdoc(fn)
    with pytest.raises(InputError, match="unknown option 'calibration'"):
        export.export(tiny_export.path, calibration=5)
    with pytest.raises(InputError, match="--calibration-images"):
        export.export(tiny_export.path, calibration_images=0)
    r = ExportResult(tiny_export, json.loads(tiny_export.export_manifest.read_text()), [])
    assert r.ok and r.file("tflite-int8").is_file()


def test_console_command_runs_from_any_directory(tmp_path):
    import shutil
    import sys
    from pathlib import Path

    edgeclf = shutil.which("edgeclf", path=str(Path(sys.executable).parent))
    if edgeclf is None:
        pytest.skip("the project is not installed in this environment (make setup installs it)")
    proc = subprocess.run([edgeclf, "benchmark", "--run", str(tmp_path / "none")], cwd=tmp_path, capture_output=True,
                          text=True)
    assert_one_line_error(proc, "does not exist")
    proc = subprocess.run([edgeclf, "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0 and "selfcheck" in proc.stdout and "serve-check" in proc.stdout


def test_pyproject_pins_agree_with_the_lock():
    import tomllib

    from packaging.utils import canonicalize_name

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lock = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            lock[canonicalize_name(name)] = version.strip()
    pins = project["dependencies"] + project["optional-dependencies"]["test"]
    for pin in pins:
        name, version = pin.split("==")
        assert lock.get(canonicalize_name(name)) == version, pin
    assert "version" in project["dynamic"]  # one version: edge_runtime.__version__
