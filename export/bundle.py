"""python -m export.bundle --run runs/<name> --variant tflite-int8

Packs one exported variant into dist/<run>-<variant>.tar.gz: everything a Raspberry Pi (or any
Python 3.11+ machine without TensorFlow) needs to classify images with it, and nothing else.
"""
import argparse
import io
import json
import sys
import tarfile
from pathlib import Path

from edge_runtime.classifier import LABELS
from edge_runtime.files import MANIFEST
from edge_runtime.errors import InputError, exit_code
from edge_runtime.files import atomic_path, sha256_file

REPO = Path(__file__).resolve().parent.parent
RUNTIME = REPO / "edge_runtime"
DEFAULT_VARIANT = "tflite-int8"
# What each model format needs on the device, beyond numpy and Pillow.
RUNTIME_PACKAGE = {"tflite": "ai-edge-litert", "onnx": "onnxruntime"}


def log(msg):
    print(f"[bundle] {msg}", flush=True)


def pinned(names, requirements=REPO / "requirements.txt"):
    """'name==version' lines for the given packages, as the project pins them."""
    pins = {}
    for line in Path(requirements).read_text().splitlines():
        name, sep, version = line.split("#")[0].strip().partition("==")
        if sep:
            pins[name.lower()] = f"{name}=={version}"
    return [pins.get(n.lower(), n) for n in names]


def runtime_files():
    """The edge_runtime sources (no caches), as (path inside the bundle, file)."""
    return [(f"edge_runtime/{p.name}", p) for p in sorted(RUNTIME.glob("*.py"))]


def readme(name, variant, entry, manifest):
    h, w = manifest["preprocessing"]["input_size"]
    model = entry["file"]
    classes = manifest["classes"]
    return f"""# {name}

An image classifier exported from training run `{Path(manifest.get('run', '?')).name}` as variant
**{variant}** ({entry['format']}, {entry['precision']}): {entry['bytes'] / 1e6:.1f} MB, {len(classes)} classes,
input {h}x{w} RGB. It needs Python 3.11 or newer and no TensorFlow.

## Install (Raspberry Pi OS 64-bit, or any Linux, macOS or Windows machine)

    tar xzf {name}.tar.gz && cd {name}
    python3 -m venv .venv
    .venv/bin/pip install -r requirements.txt

## Classify

    .venv/bin/python -m edge_runtime predict {model} photo.jpg [more.jpg ...] --top-k 3
    .venv/bin/python -m edge_runtime predict {model} photo.jpg --json --threads 4
    .venv/bin/python -m edge_runtime info {model}

Any image Pillow reads works (JPEG, PNG, ...; grayscale, RGBA and EXIF-rotated photos included):
it is resized to {h}x{w} exactly as in training (the whole image stretched, Pillow's bilinear, which
antialiases when it shrinks), and the model does its own normalisation. Using the file in an app with its own
resize (MediaPipe, Android, iOS: plain bilinear, no antialiasing) shifts probabilities a little; resize the
same way as here where you can.
`--threads` defaults to the runtime's choice; a Pi 4 or 5 has 4 cores.

From Python:

    from edge_runtime import Classifier
    clf = Classifier("{model}")           # reads labels.txt and manifest.json beside it
    clf.predict("photo.jpg", top_k=3)     # [(label, probability), ...]
    clf.predict([img1, img2])             # paths, bytes, PIL images or HxWx3 uint8 arrays

The model's SHA-256 is checked against `manifest.json` when it loads; a changed or truncated
file is refused with a one-line error.

## Contents

- `{model}`: the model (sha256 `{entry['sha256']}`)
- `labels.txt`: one class per line, in output order
- `manifest.json`: the variant's description and the preprocessing contract
- `edge_runtime/`: the runtime (Pillow and numpy, plus `{RUNTIME_PACKAGE[entry['format']]}`)
- `requirements.txt`: exactly those packages, pinned
"""


def build(run, variant=DEFAULT_VARIANT, dist=Path("dist")):
    """Write dist/<run>-<variant>.tar.gz atomically and return its path."""
    export_dir = run.export_dir
    manifest = run.manifest()
    entry = manifest.get("variants", {}).get(variant)
    if entry is None:
        raise InputError(f"variant {variant!r} was not exported for {run.path}; exported: "
                         f"{', '.join(manifest.get('variants', {})) or 'none'}")
    if entry.get("status") != "ok":
        raise InputError(f"variant {variant!r} of {run.path} failed to export ({entry.get('error', 'no file')})")
    model = export_dir / entry["file"]
    if not model.is_file():
        raise InputError(f"{model} is listed in the manifest but missing; re-run `make export RUN={run.path}`")
    if sha256_file(model) != entry["sha256"]:
        raise InputError(f"{model}: checksum mismatch with {run.export_manifest}; re-run `make export RUN={run.path}`")

    name = f"{run.path.name}-{variant}"
    slim = {k: v for k, v in manifest.items() if k != "variants"}
    slim["run"] = run.path.name  # manifests written before the name replaced the path carry the path
    slim["variants"] = {variant: entry}  # only what ships, so the runtime finds exactly this model
    requirements = pinned([RUNTIME_PACKAGE[entry["format"]], "numpy", "Pillow"])
    members = [
        (entry["file"], model.read_bytes()),
        (LABELS, ("\n".join(manifest["classes"]) + "\n").encode()),
        (MANIFEST, (json.dumps(slim, indent=2) + "\n").encode()),
        ("requirements.txt", ("\n".join(requirements) + "\n").encode()),
        ("README.md", readme(name, variant, entry, manifest).encode()),
        *[(arc, p.read_bytes()) for arc, p in runtime_files()],
    ]
    out = Path(dist) / f"{name}.tar.gz"
    with atomic_path(out, suffix=".tar.gz") as tmp:
        with tarfile.open(tmp, "w:gz") as tar:
            for arc, data in members:
                info = tarfile.TarInfo(f"{name}/{arc}")
                info.size, info.mode, info.mtime = len(data), 0o644, 0  # reproducible: no owner, no time
                tar.addfile(info, io.BytesIO(data))
    log(f"{out}: {out.stat().st_size / 1e6:.1f} MB ({variant}, {len(members)} files; requirements: {', '.join(requirements)})")
    return out


def chosen_variant(run):
    """(variant, why) when none is named: the benchmark's fastest variant that passed the gate on this
    machine, or DEFAULT_VARIANT when there is no benchmark report to go by."""
    report = run.benchmark_dir / "report.json"
    if not report.is_file():
        return DEFAULT_VARIANT, f"no benchmark report in {run.benchmark_dir} yet, so the default"
    try:
        rec = json.loads(report.read_text()).get("recommendation") or {}
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{report}: unreadable benchmark report ({e}); re-run `make benchmark` or pass VARIANT") from None
    if not rec:
        raise InputError(f"no variant passed the parity gate in {report}; pass VARIANT=<name> to pack one anyway")
    return rec["fastest"]["variant"], f"the fastest variant that passed the gate on the benchmark machine: {rec['fastest']['why']}"


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m export.bundle", description="Pack one exported variant for a device.")
    p.add_argument("--run", help="run folder (default: the newest finished run in runs/)")
    p.add_argument("--variant", help="exported variant to pack (default: the benchmark's fastest variant passing the gate, "
                                     f"or {DEFAULT_VARIANT} before any benchmark)")
    p.add_argument("--dist", default="dist", help="output folder (default dist/)")
    a = p.parse_args(argv)
    from train.rundir import resolve_run

    def body():
        run = resolve_run(a.run)
        variant = a.variant
        if not variant:
            variant, why = chosen_variant(run)
            log(f"packing {variant}: {why}")
        build(run, variant, Path(a.dist))

    return exit_code(body)


if __name__ == "__main__":
    sys.exit(main())
