import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
LEEDS = SHARED / "datasets" / "leeds-butterfly" / "images"
MOBILENET_WEIGHTS = SHARED / "weights" / "mobilenet_2_5_224_tf_no_top.h5"

# Strongly separable colours, so a tiny network learns them in a few epochs.
COLOURS = [(220, 40, 40), (40, 200, 60), (50, 70, 230), (230, 210, 40)]


def make_image(colour, size=40, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(colour)[None, None] + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
    # a bright square at a random spot gives a little structure
    x, y = rng.integers(0, size // 2, 2)
    arr[y : y + size // 4, x : x + size // 4] = 255
    img = Image.fromarray(arr)
    return img.convert(mode) if mode != "RGB" else img


def make_tree(root, counts, size=40, ext="png"):
    """root/<class_i>/<n>.png for counts = {class name: count}; returns root."""
    root = Path(root)
    for ci, (name, n) in enumerate(counts.items()):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            make_image(COLOURS[ci % len(COLOURS)], size, seed=ci * 1000 + i).save(d / f"{i:03d}.{ext}")
    return root


def run_cli(*args, cwd=REPO, env=None, timeout=900):
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


# The real ImageNet MobileNet from ../shared: the tiny run then also proves transfer learning works.
TINY = {"backbone": "mobilenet", "alpha": 0.25, "weights": str(MOBILENET_WEIGHTS), "image_size": "64", "epochs_head": 3,
        "epochs_finetune": 2, "lr": 0.01, "lr_finetune": 0.0001, "batch_size": 8, "augment": 0.2}
TINY_ARGS = [a for k, v in TINY.items() for a in ("--" + k.replace("_", "-"), str(v))]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    # 108 images: with 54 the validation split held 7, too few for the exporter to see an int8 file's flips
    # (one session's tiny model flipped 3 of 54 images whose 7 validation images all agreed)
    return make_tree(tmp_path_factory.mktemp("tiny") / "images", {"red": 48, "green": 36, "blue": 24}, size=40)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_data):
    """A finished training run of a small MobileNet at 64 px, trained through the Python API: the model later
    tests export and serve."""
    import train

    result = train.train(data=str(tiny_data), run=str(tmp_path_factory.mktemp("runs") / "tiny"), **TINY)
    assert result.run.finished and result.metrics["test"]["top1"] > 0
    return result.run


@pytest.fixture(scope="session")
def tiny_export(tiny_run):
    """Every export variant of the tiny run, exported through the Python API."""
    import export

    result = export.export(tiny_run.path, calibration_images=20, qat="on", qat_epochs=1, smoke_images=8)
    assert result.ok, result.manifest
    return tiny_run


# What needs ../shared: the tiny run fine-tunes its real ImageNet MobileNet; the Leeds tests need its photos.
NEEDS_WEIGHTS = {"tiny_data", "tiny_run", "tiny_export"}
SHARED_NAMES = ("TINY_ARGS", "MOBILENET_WEIGHTS", "LEEDS", "TINY")


def _needs_shared(item):
    import inspect
    import re

    if NEEDS_WEIGHTS & set(getattr(item, "fixturenames", ())):
        return True
    try:
        source = inspect.getsource(item.function)
    except (OSError, TypeError):
        return False
    return any(re.search(rf"\b{name}\b", source) for name in SHARED_NAMES)


def pytest_collection_modifyitems(config, items):
    """Tests that need every variant exported (QAT's fine-tuning included: minutes) are slow, whether or
    not they say so, so `make test-fast` stays fast. Without ../shared beside the repository (a user's fresh
    clone), the tests that need its weights or photos skip and say why; the others run."""
    missing = not MOBILENET_WEIGHTS.is_file()
    for item in items:
        if "tiny_export" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
        if missing and _needs_shared(item):
            item.add_marker(pytest.mark.skip(reason=f"needs {MOBILENET_WEIGHTS} (../shared beside the repository: the "
                                                    "ImageNet MobileNet the tiny run fine-tunes, the Leeds photos)"))
