"""Export every selected variant of a run into runs/<name>/export/, then describe them in manifest.json.

Each file is converted to a temporary name, smoke-checked through edge_runtime against the
Keras model, and only then renamed into place; a failure leaves the previous good file and
its manifest entry alone. The manifest is rewritten (atomically) after every variant.
"""
import json
import time
import traceback
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path

import numpy as np

from edge_runtime.classifier import MANIFEST, Classifier
from edge_runtime.errors import InputError
from edge_runtime.files import atomic_path, sha256_file, write_json, write_text
from edge_runtime.preprocess import load_batch

from .variants import select

TOOLS = ("tensorflow", "tf-keras", "tensorflow-model-optimization", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert")
SMOKE_MIN_AGREEMENT = 0.5  # below this the variant "disagrees with the Keras model on most images"


def log(msg):
    print(f"[export] {msg}", flush=True)


class Context:
    """What converters need from the run, each loaded once and only when first asked for."""

    def __init__(self, run, calibration_images=300, qat_epochs=2, qat_lr=1e-5, smoke_images=16, seed=0,
                 budget=None, onnx_calibration="minmax"):
        from .fallback import Budget

        self.run = run
        self.budget = budget or Budget()
        self.onnx_calibration = onnx_calibration
        self.config = run.config()
        self.class_names = run.class_names()
        self.data_root = run.data_root()
        self.samples = run.split()
        self.calibration_count, self.smoke_count = calibration_images, smoke_images
        self.qat_epochs, self.qat_lr, self.seed = qat_epochs, qat_lr, seed
        self.size = tuple(self.config["image_size"])
        self.log = log

    def subset(self, name):
        return [s for s in self.samples if s.subset == name]

    def _pixels(self, samples):
        missing = [s.path for s in samples if not (self.data_root / s.path).is_file()]
        if missing:
            raise InputError(f"{self.data_root / missing[0]} from the run's split is missing ({len(missing)} file(s)); "
                             f"is the dataset still at {self.data_root}?")
        return load_batch([self.data_root / s.path for s in samples], self.size)

    @cached_property
    def model(self):
        from train import import_tensorflow

        import_tensorflow()
        import tf_keras as keras

        try:
            return keras.models.load_model(str(self.run.model), compile=False)
        except Exception as e:
            raise InputError(f"{self.run.model}: cannot load the trained model ({str(e).splitlines()[0][:200]})") from None

    @cached_property
    def calibration(self):
        """uint8 images from the training split, drawn evenly across classes (round robin), seeded."""
        train = sorted(self.subset("train"), key=lambda s: s.path)
        rng = np.random.default_rng(self.seed)
        by_class = {}
        for s in train:
            by_class.setdefault(s.label, []).append(s)
        queues = [[group[i] for i in rng.permutation(len(group))] for _, group in sorted(by_class.items())]
        pick = []
        while len(pick) < min(self.calibration_count, len(train)):
            for q in queues:
                if q and len(pick) < self.calibration_count:
                    pick.append(q.pop())
        log(f"loading {len(pick)} calibration images from the training split ({len(queues)} classes, evenly drawn)")
        return self._pixels(sorted(pick, key=lambda s: s.path))

    @cached_property
    def validation(self):
        """(uint8 pixels, labels, Keras probabilities) of the whole validation split: what the fallback decides on."""
        pool = sorted(self.subset("val") or self.subset("train"), key=lambda s: s.path)
        index = {c: i for i, c in enumerate(self.class_names)}
        pixels = self._pixels(pool)
        return pixels, np.array([index[s.label] for s in pool]), self.model.predict(pixels.astype(np.float32), verbose=0)

    def representative_dataset(self):
        for img in self.calibration:
            yield [img[None].astype(np.float32)]

    @cached_property
    def smoke(self):
        """A few validation images and the Keras model's probabilities on them."""
        pool = sorted(self.subset("val") or self.subset("test") or self.subset("train"), key=lambda s: s.path)
        step = max(1, len(pool) // self.smoke_count)
        pixels = self._pixels(pool[::step][: self.smoke_count])
        return pixels, self.model.predict(pixels.astype(np.float32), verbose=0)


def smoke_check(path, ctx, reference_model=None):
    """Run the new file through edge_runtime; raise if it yields NaN or mostly disagrees with Keras.

    reference_model: the Keras model the file was converted from, when not the run's own (QAT).
    """
    pixels, reference = ctx.smoke
    if reference_model is not None:
        reference = reference_model.predict(pixels.astype(np.float32), verbose=0)
    clf = Classifier(path, labels=ctx.class_names, verify=False)
    probs = clf.probabilities(pixels)
    if probs.shape != reference.shape:
        raise RuntimeError(f"output shape {probs.shape} differs from the Keras model's {reference.shape}")
    if not np.all(np.isfinite(probs)):
        raise RuntimeError("output contains NaN or infinity")
    agree = float(np.mean(probs.argmax(1) == reference.argmax(1)))
    if agree < SMOKE_MIN_AGREEMENT:
        raise RuntimeError(f"agrees with the Keras model on only {agree:.0%} of {len(pixels)} validation images")
    return clf.info(), {"images": len(pixels), "agreement": agree,
                        "max_abs_prob_diff": float(np.abs(probs - reference).max())}


def read_manifest(export_dir):
    path = Path(export_dir) / MANIFEST
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}  # a manifest we cannot read is rebuilt; the files it described are re-checked on export


def export_run(run, variant_names=None, variants=None, **ctx_options):
    """Export; returns (manifest, names of failed variants)."""
    chosen = variants if variants is not None else select(variant_names)
    ctx = Context(run, **ctx_options)
    out = run.export_dir
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "labels.txt", "\n".join(ctx.class_names) + "\n")
    manifest = read_manifest(out)
    from train.fit import package_versions

    manifest.update({
        "run": str(run.path),
        "classes": ctx.class_names,
        "preprocessing": ctx.config["preprocessing"],
        "source_model": {"file": "../" + run.model.name, "sha256": sha256_file(run.model)},
        "tool_versions": package_versions(TOOLS),
    })
    manifest.setdefault("variants", {})
    failed = []
    for i, v in enumerate(chosen, 1):
        log(f"[{i}/{len(chosen)}] {v.name} ({v.format}, {v.precision})")
        t0 = time.time()
        final = out / v.filename
        try:
            with atomic_path(final, suffix=final.suffix) as tmp:
                extra = v.convert(ctx, tmp) or {}
                info, smoke = smoke_check(tmp, ctx, extra.pop("smoke_reference", None))
            entry = {
                "file": v.filename, "format": v.format, "precision": v.precision, "status": "ok",
                "bytes": final.stat().st_size, "sha256": sha256_file(final),
                "inputs": [info["input"]], "outputs": [info["output"]],
                "calibration_images": extra.pop("calibration_images", 0),
                "seconds": round(time.time() - t0, 1), "smoke_check": smoke,
                "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "source_sha256": manifest["source_model"]["sha256"], **extra,
            }
            manifest["variants"][v.name] = entry
            log(f"    ok: {entry['bytes'] / 1e6:.2f} MB in {entry['seconds']} s, "
                f"smoke agreement {smoke['agreement']:.0%} on {smoke['images']} images")
        except InputError:
            raise  # bad input (missing data, unloadable model) stops everything with one clear line
        except Exception as e:
            error = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
            failed.append(v.name)
            previous = manifest["variants"].get(v.name)
            if previous and previous.get("status") == "ok" and final.exists():
                previous["last_error"] = error  # the earlier good file stays, as does its entry
            else:
                manifest["variants"][v.name] = {"file": v.filename, "format": v.format, "precision": v.precision,
                                                "status": "failed", "error": error,
                                                "seconds": round(time.time() - t0, 1)}
            log(f"    FAILED: {error}")
            (out / f"{v.name}.error.log").write_text(traceback.format_exc())
        manifest["updated_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        write_json(out / MANIFEST, manifest)
    return manifest, failed
