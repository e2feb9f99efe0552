"""`edgeclf bundle --run runs/<name> [--variant V | --variants a,b]`

Packs a run for a device (a Raspberry Pi, or any Python 3.11+ machine without TensorFlow):
dist/<run>.tar.gz, or dist/<run>-<variant>.tar.gz for a single file.

By default the bundle carries every file that passed the benchmark's parity gate and can be the
fastest on some CPU, and the device picks among them by its own measurement (`select`): the
full-integer files (int8 is the fast path on ARM cores and on x86 with VNNI; ONNX Runtime's int8
also gains on AVX2 alone) and one float file (float16 weights when they passed: half the download,
float32 arithmetic where the CPU has no float16, which is the file to fall back on where no integer
kernel is fast). The dynamic-range file is left out: its hybrid kernels are not the fastest on any CPU
measured. Each candidate must be the very file the benchmark measured (same SHA-256).

With the candidates go: a few of the run's test images, their pixels and each candidate's
probabilities computed here (what `selfcheck` compares the device against), edge_runtime as a wheel,
requirements.txt pinning it and everything it needs, a systemd unit for `serve`, and a README.
"""
import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.classifier import LABELS, Classifier
from edge_runtime.errors import InputError
from edge_runtime.files import MANIFEST, atomic_path, plain_name, sha256_file, write_text
from edge_runtime.machine import runtime_versions, signature
from runlib.progress import logger

from . import runtime_wheel
from . import variants as table

REFERENCE_IMAGES = 8
SERVICE = "edgeclf.service"
# The bundle's README.md (readme() fills it in).
README = """# {name}

An image classifier from training run `{run_name}`: {n_classes} classes, input {h}x{w} RGB. It needs
Python 3.11 or newer and no TensorFlow. {choose}

| variant | file | precision | MB | parity gate on the build machine |
|---|---|---|---|---|
{rows}

Parity gate: {gate_line}.

## 1. Install (Raspberry Pi OS 64-bit, or any Linux, macOS or Windows machine)

    tar xzf {name}.tar.gz && cd {name}
    python3 -m venv .venv
    .venv/bin/pip install -r requirements.txt

`requirements.txt` installs edge_runtime from `wheels/` and pins everything it needs to the versions the
bundle was checked with.

## 2. Check this machine first

    .venv/bin/python -m edge_runtime selfcheck --expect SHA256

SHA256 is the manifest's checksum `make bundle` printed where the bundle was built (bring it by another channel
than the bundle). It first checks every file here against the checksums in `manifest.json`, and the manifest
against SHA256: an altered bundle fails and nothing in it is run. Then it runs every file on the reference
images in `reference/` and compares the probabilities with those recorded where the bundle was built,
within the stated tolerances (a float32 rounding, or one or a few output quantization steps for integer
files). One line per file; exit 1 means this machine does
not compute what was tested: do not deploy until that is understood.

## 3. Let the device choose its file

    .venv/bin/python -m edge_runtime select

It times each file that passed the self-check here (batch 1, at 1 thread and at all cores, calls
interleaved, until each median is known to within 2%) and writes the fastest to `selection.json`.

## 4. Classify

    .venv/bin/python -m edge_runtime predict photo.jpg photos/ 'trap/*.jpg'      # one line per image
    .venv/bin/python -m edge_runtime predict photos/ --json > results.jsonl     # JSON lines, as it goes
    .venv/bin/python -m edge_runtime watch /srv/camera-trap                     # each new image, once
    .venv/bin/python -m edge_runtime info

A bad image gets its own error line and the rest go on (exit 2 at the end if any failed). Any image
Pillow reads works (JPEG, PNG, WebP, ...; grayscale, RGBA and EXIF-rotated photos included); it is
resized to {h}x{w} exactly as in training (the whole image stretched, Pillow's antialiased bilinear).
Apps that resize their own way (MediaPipe, Android, iOS: bilinear without antialiasing) shift the
probabilities a little.

From Python:

    from edge_runtime import Classifier
    clf = Classifier("{first_file}")   # labels.txt and manifest.json beside it are used
    p = clf.predict("photo.jpg", top_k=3)            # [(label, probability), ...], calibrated
    p.label, p.confidence, p.review                  # a class, or "unknown" under the manifest's decision rule

One Classifier may be shared by many threads.

## 5. Run it as a service

    .venv/bin/python -m edge_runtime serve --port 8080          # 127.0.0.1 only; --host 0.0.0.0 for the network
    curl -s -H 'Content-Type: image/jpeg' --data-binary @photo.jpg localhost:8080/v1/classify
    curl -s -F image=@photo.jpg 'localhost:8080/v1/classify?top_k=3'

`GET /v1/model` describes the model, `GET /health` says it is up, `GET /metrics` is for Prometheus. Bad
requests get a JSON error with their status (413 too large, 415 wrong type, 422 not an image, 503 when
the queue is full, 504 on timeout) and the service goes on. With systemd, from this folder:

    sed -e "s#@BUNDLE@#$PWD#g" -e "s#@USER@#$USER#g" {service} | sudo tee /etc/systemd/system/{unit}.service
    sudo systemctl daemon-reload && sudo systemctl enable --now {unit}
    journalctl -u {unit} -f

## Contents

- the model files above, `labels.txt` (one class per line, in output order), `manifest.json`
  (checksums, the preprocessing contract, how the bundle was made)
- `reference/`: {images} test images, their pixels, and each file's probabilities on them
- `wheels/`: edge_runtime; `requirements.txt`; `{service}`; `MODEL_CARD.md` when the run has one
"""


log = logger("bundle")


# ---------------------------------------------------------------- which files, and are they the measured ones

def gate_record(run):
    """{variant: {"passed", "sha256", "why"}} from the run's benchmark report, with its thresholds; {} without one."""
    report_file = run.benchmark_dir / "report.json"
    if not report_file.is_file():
        return {}, None
    try:
        report = json.loads(report_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{report_file}: unreadable benchmark report ({e}); re-run `make benchmark`") from None
    failures = report["gate"]["failures"]
    judged = not report["gate"].get("inconclusive") or report["gate"].get("inconclusive_accepted")
    rows = {r["variant"]: {"passed": r["status"] == "ok" and r["variant"] not in failures and judged,
                           "sha256": r.get("sha256"),
                           "why": "; ".join(failures.get(r["variant"], [])) or r.get("error", "")
                           or ("" if judged else "the gate could not judge on so few test images")}
            for r in report["rows"] if table.get(r["variant"]) and table.get(r["variant"]).deployable}
    gate = {k: report["gate"][k] for k in ("max_drop", "min_agreement", "enforced")}
    gate.update(report=str(report_file.relative_to(run.path)), report_sha256=sha256_file(report_file),
                measured_at=report.get("created_at"))
    return rows, gate


def provenance(variant, entry, measured):
    """'passed' when the benchmark measured this very file and it passed the gate; otherwise what is true of it."""
    m = measured.get(variant)
    if m is None:
        return "not measured by the benchmark"
    if not m["sha256"]:
        return "measured by a benchmark that did not record checksums: re-run `make benchmark`"
    if m["sha256"] != entry["sha256"]:
        return "re-exported since the benchmark measured it: run `make benchmark` again"
    return "passed" if m["passed"] else f"failed the parity gate ({m['why']})"


def default_candidates(run, manifest, measured):
    """The gate-passing, benchmark-measured files worth timing on a device, in order of preference."""
    if not measured:
        raise InputError(f"{run.path} has no benchmark report: run `make benchmark RUN={run.path}` first (the bundle "
                         "ships only files that passed the parity gate), or pass VARIANT=<name> to pack one file unmeasured")
    ok = {v: provenance(v, e, measured) for v, e in manifest.get("variants", {}).items() if e.get("status") == "ok"}
    passing = [v for v, status in ok.items() if status == "passed"]
    stale = [v for v, status in ok.items() if "re-exported" in status or "checksums" in status]
    if stale:
        raise InputError(f"{', '.join(stale)}: {ok[stale[0]]}")
    integer = [v.name for v in table.from_names(None) if v.calibrated and v.deployable and v.name in passing]
    floats = [name for name in table.float_candidates() if name in passing][:1]
    if not integer + floats:
        raise InputError(f"no exported variant of {run.path} passed the parity gate; pass VARIANT=<name> to pack one anyway")
    return integer + floats


# ---------------------------------------------------------------- what goes in

def pinned_closure(names):
    """'name==version' for the named packages and everything they need (markers as on this machine, no
    extras), at the versions installed here: the versions the bundle was checked with."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen, order, todo = set(), [], list(names)
    while todo:
        name = todo.pop(0)
        key = canonicalize_name(name)
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise InputError(f"{name} is not installed here, so its version cannot be pinned: pip install {name}") from None
        order.append(f"{dist.metadata['Name']}=={dist.version}")
        for req in map(Requirement, dist.requires or []):
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return order


def reference_images(run, count):
    """`count` test images spread over the classes: (file names, true labels, uint8 pixels, source paths)."""
    paths, labels, pixels = run.test_set("test")  # present and unchanged since training, or an error
    order = sorted(range(len(paths)), key=lambda i: (labels[i], str(paths[i])))
    picked = order[:: max(1, len(order) // count)][:count]
    classes = run.class_names()
    names = [f"{k:02d}-{Path(paths[i]).name}" for k, i in enumerate(picked)]
    return names, [classes[labels[i]] for i in picked], pixels[picked], [paths[i] for i in picked]


def service_unit(name):
    return f"""[Unit]
Description=edgeclf image classifier ({name})
After=network-online.target
Wants=network-online.target

[Service]
Type=exec
User=@USER@
WorkingDirectory=@BUNDLE@
ExecStart=@BUNDLE@/.venv/bin/python -m edge_runtime serve --bundle @BUNDLE@ --host 127.0.0.1 --port 8080
# To serve the network: --host 0.0.0.0, and a token in a file only root reads (EDGECLF_TOKEN=...), e.g.
# EnvironmentFile=/etc/edgeclf/token
# SIGTERM: stop accepting, finish the requests in flight, exit
KillSignal=SIGTERM
TimeoutStopSec=45
Restart=on-failure
RestartSec=2
NoNewPrivileges=true
ProtectSystem=strict
ProtectHome=read-only
PrivateTmp=true

[Install]
WantedBy=multi-user.target
"""


def readme(name, run_name, candidates, manifest, gate, single):
    h, w = manifest["preprocessing"]["input_size"]
    rows = "\n".join(f"| `{v}` | `{e['file']}` | {e['precision']} | {e['bytes'] / 1e6:.2f} | {status} |"
                     for v, e, status in candidates)
    gate_line = (f"thresholds: top-1 at most {gate['max_drop']:g} points below the Keras model, agreement at least "
                 f"{gate['min_agreement']:g}; {gate['report']}, {gate['measured_at']}" if gate else "no benchmark report")
    choose = ("One file: `predict`, `serve` and `watch` run it." if single else
              "Several candidate files: which is fastest depends on the CPU, so the device measures them itself "
              "(`select`) and `predict`, `serve` and `watch` then run its choice. Until `select` has run they "
              f"run the first candidate, `{candidates[0][0]}`.")
    return README.format(name=name, run_name=run_name, n_classes=len(manifest["classes"]), h=h, w=w, choose=choose,
                         rows=rows, gate_line=gate_line, first_file=candidates[0][1]["file"], service=SERVICE,
                         unit=f"edgeclf-{name}", images=REFERENCE_IMAGES)


@dataclass(frozen=True)
class Plan:
    """What one bundle packs: the run, its candidate variants, the export manifest, the benchmark's verdicts
    (gate_record()), the bundle's name and how many reference images."""
    run: object
    variants: list
    manifest: dict
    measured: dict
    gate: dict
    name: str
    count: int


def members(plan, work):
    """(name inside the bundle, bytes) of everything the bundle holds, and its requirements lines."""
    run, manifest, measured, gate, name = plan.run, plan.manifest, plan.measured, plan.gate, plan.name
    entries = {v: manifest["variants"][v] for v in plan.variants}
    names, labels, pixels, sources = reference_images(run, plan.count)
    probs = {}
    for v, e in entries.items():
        model = run.export_dir / e["file"]
        # library-default settings at 1 thread: what selfcheck runs on the device
        probs[v] = Classifier(model, settings={}, threads=1).probabilities(pixels).astype(np.float32)
    npz, npy = io.BytesIO(), io.BytesIO()
    np.savez(npz, **probs)
    np.save(npy, pixels)
    reference = {"images": [{"file": f"images/{n}", "label": l} for n, l in zip(names, labels)],
                 "pixels": "pixels.npy", "probabilities": "probabilities.npz", "settings": "library defaults",
                 "threads": 1, "recorded_on": dict(signature(), versions=runtime_versions())}
    statuses = {v: provenance(v, e, measured) for v, e in entries.items()}
    slim = {k: v for k, v in manifest.items() if k not in ("variants", "runtime_settings")}  # tuned for this host only
    if slim.get("decision"):  # the builder's paths stay with the builder
        slim["decision"] = {k: v for k, v in slim["decision"].items() if k != "unknown_folder"}
    slim.update(run=run.path.name, variants=entries,
                selfcheck={"kinds": {v: table.get(v).selfcheck_kind for v in entries}},
                # the export's time, not the build's: two builds of one export are byte for byte the same
                bundle={"name": name, "created_at": manifest.get("updated_at"),
                        "candidates": list(entries), "gate": gate, "gate_status": statuses,
                        "edge_runtime": runtime_wheel.version()})
    wheel = runtime_wheel.build(work)
    formats = sorted({e["format"] for e in entries.values()})
    extras = [runtime_wheel.EXTRA_OF_FORMAT[f] for f in formats] + ["serve"]
    pins = pinned_closure(["numpy", "Pillow"] + [r.split(">=")[0] for x in extras for r in runtime_wheel.EXTRAS[x]])
    requirements = ["# edge_runtime, and what it needs for these files and the service, pinned to the versions",
                    "# the bundle was checked with", f"./wheels/{wheel.name}", *pins]
    card = run.path / "MODEL_CARD.md"
    out = [(e["file"], (run.export_dir / e["file"]).read_bytes()) for e in entries.values()]
    out += [(LABELS, ("\n".join(manifest["classes"]) + "\n").encode()),
            (MANIFEST, (json.dumps(slim, indent=2) + "\n").encode()),
            ("requirements.txt", ("\n".join(requirements) + "\n").encode()),
            (f"wheels/{wheel.name}", wheel.read_bytes()), (SERVICE, service_unit(name).encode()),
            ("README.md", readme(name, run.path.name, [(v, entries[v], statuses[v]) for v in entries], manifest,
                                 gate, len(entries) == 1).encode()),
            ("reference/reference.json", (json.dumps(reference, indent=2) + "\n").encode()),
            ("reference/pixels.npy", npy.getvalue()), ("reference/probabilities.npz", npz.getvalue())]
    out += [(f"reference/images/{n}", Path(src).read_bytes()) for n, src in zip(names, sources)]
    if card.is_file():
        out.append(("MODEL_CARD.md", card.read_bytes()))
    # every other file the bundle holds, by checksum: selfcheck refuses one that is missing or changed
    slim["bundle"]["files"] = {arc: hashlib.sha256(data).hexdigest() for arc, data in out if arc != MANIFEST}
    out = [(arc, (json.dumps(slim, indent=2) + "\n").encode() if arc == MANIFEST else data) for arc, data in out]
    return out, requirements


def build(run, variants=None, dist=Path("dist"), count=REFERENCE_IMAGES):
    """Write the bundle atomically and return its path. variants: a list of names, one name, or None for
    the default candidates (gate-passing, measured files; see the module docstring)."""
    with run.lock("bundle"):
        return _build(run, variants, dist, count)


def _build(run, variants, dist, count):
    import tempfile

    from runlib import scratch

    scratch.tidy(run, log)
    manifest = run.manifest()
    measured, gate = gate_record(run)
    if variants is None:
        variants = default_candidates(run, manifest, measured)
    elif isinstance(variants, str):
        variants = [variants]
    exported = manifest.get("variants", {})
    for v in variants:
        entry = exported.get(v)
        if entry is None:
            raise InputError(f"variant {v!r} was not exported for {run.path}; exported: {', '.join(exported) or 'none'}")
        if entry.get("status") != "ok":
            raise InputError(f"variant {v!r} of {run.path} failed to export ({entry.get('error', 'no file')})")
        model = run.export_dir / plain_name(entry.get("file"), f"{run.export_manifest}, {v}")
        if not model.is_file():
            raise InputError(f"{model} is listed in the manifest but missing; re-run `make export RUN={run.path}`")
        if sha256_file(model) != entry["sha256"]:
            raise InputError(f"{model}: checksum mismatch with {run.export_manifest}; re-run `make export RUN={run.path}`")
    name = run.path.name if len(variants) > 1 else f"{run.path.name}-{variants[0]}"
    with tempfile.TemporaryDirectory(prefix=scratch.prefix("bundle")) as work:
        files, requirements = members(Plan(run, variants, manifest, measured, gate, name, count), work)
    out = Path(dist) / f"{name}.tar.gz"
    with atomic_path(out, suffix=".tar.gz") as tmp:
        # reproducible: no owner, no times, not even the gzip header's
        with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for arc, data in files:
                info = tarfile.TarInfo(f"{name}/{arc}")
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                tar.addfile(info, io.BytesIO(data))
    digest = sha256_file(out)
    write_text(out.with_name(out.name + ".sha256"), f"{digest}  {out.name}\n")  # `sha256sum -c` reads it
    manifest_sha = hashlib.sha256(dict(files)[MANIFEST]).hexdigest()
    log(f"{out}: {out.stat().st_size / 1e6:.1f} MB, candidates {', '.join(variants)}; "
        f"{len(requirements) - 3} pinned requirements")
    log(f"sha256 {digest} (also in {out.name}.sha256); its manifest.json: {manifest_sha} "
        f"(on the device: selfcheck --expect {manifest_sha})")
    return out


def run_command(o):
    """`edgeclf bundle`: options by name (runlib/options.py)."""
    from runlib.options import resolve
    from runlib.run_folder import resolve_run

    c = resolve("bundle", o)
    if c.variant and c.variants:
        raise InputError("give --variant (one file) or --variants (candidates), not both")
    names = [v.name for v in table.from_names(c.variants)] if c.variants else c.variant
    if c.variant:
        table.from_names(c.variant)
    build(resolve_run(c.run), names, Path(c.dist), c.images)
    return 0

