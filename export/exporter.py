"""Export every selected variant of a run into runs/<name>/export/, then describe them in manifest.json.

Each file is converted to a temporary name, smoke-checked through edge_runtime against the
Keras model, and only then renamed into place; a failure leaves the previous good file and
its manifest entry alone. The manifest is rewritten (atomically) after every variant.
"""
import os
import time
import traceback
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path

import numpy as np

from edge_runtime.classifier import Classifier
from edge_runtime.errors import InputError
from edge_runtime.files import MANIFEST, atomic_path, read_manifest, sha256_file, write_json, write_text
from edge_runtime.preprocess import load_batch
from train.shared.progress import Progress, heartbeat, logger

from .variants import select

TOOLS = ("tensorflow", "tf-keras", "tensorflow-model-optimization", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert")
SMOKE_MIN_AGREEMENT = 0.5  # below this the variant "disagrees with the Keras model on most images"


log = logger("export")


class Context:
    """What converters need from the run, each loaded once and only when first asked for."""

    def __init__(self, run, budget=None, **options):
        """options: export's (train/shared/options.py), defaults for those not given."""
        from train.shared.options import defaults

        from .fallback import Budget

        self.run = run
        self.budget = budget or Budget()
        self.config = run.config()
        o = {**defaults("export", bool(self.config.get("demo"))), **options}
        self.ranges = o["ranges"]  # activation ranges of the int8 files: export/ranges.py
        self.class_names = run.class_names()
        self.data_root = run.data_root()
        self.samples = run.split()
        self.calibration_count, self.smoke_count = o["calibration_images"], o["smoke_images"]
        self.qat_epochs, self.qat_lr, self.seed = o["qat_epochs"], o["qat_lr"], o["seed"]
        self.qat_labels = o["qat_labels"]
        self.size = tuple(self.config["image_size"])
        self.log = log
        self.timings = {}  # seconds of the shared stages (model load, trace, tf2onnx), for the manifest

    @cached_property
    def work(self):
        """A scratch folder for what several converters share; removed by close()."""
        import tempfile

        from train.shared.scratch import prefix

        return Path(tempfile.mkdtemp(prefix=prefix("export")))

    def close(self):
        import shutil

        if "work" in self.__dict__:
            shutil.rmtree(self.work, ignore_errors=True)

    @cached_property
    def saved_model(self):
        """The Keras model traced once into a SavedModel (input "image", any batch size) that every
        float-source TFLite converter reads, instead of each tracing and saving the model again."""
        model = self.model
        t0 = time.time()
        with heartbeat("export", "tracing the model into a SavedModel"):
            path = save_traced(model, self.size, self.work / "saved_model")
        self.timings["trace and save"] = round(time.time() - t0, 1)
        return path

    @cached_property
    def onnx_float(self):
        """The float ONNX graph (serialized), converted once for onnx-fp32 and onnx-int8."""
        from .onnx_convert import convert_float

        model = self.model
        t0 = time.time()
        with heartbeat("export", "tf2onnx conversion"):
            data = convert_float(model, self.size).SerializeToString()
        self.timings["tf2onnx"] = round(time.time() - t0, 1)
        return data

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
        from train.shared.tf_setup import import_tensorflow

        import_tensorflow()
        from train.model import load_keras

        t0 = time.time()
        with heartbeat("export", f"loading {self.run.model}"):
            model = load_keras(self.run.model)
        self.timings["load model"] = round(time.time() - t0, 1)
        return model

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

    @cached_property
    def smoke(self):
        """A few validation images and the Keras model's probabilities on them."""
        pool = sorted(self.subset("val") or self.subset("test") or self.subset("train"), key=lambda s: s.path)
        step = max(1, len(pool) // self.smoke_count)
        pixels = self._pixels(pool[::step][: self.smoke_count])
        return pixels, self.model.predict(pixels.astype(np.float32), verbose=0)


def _tflite_metadata(path, ctx, variant, manifest):
    from .tflite_metadata import LABELS_FILE, PARSER_VERSION, add_metadata

    name = f"{ctx.run.path.name} {variant.name}"
    version = manifest["source_model"]["sha256"][:12]  # the trained model this file comes from
    description = (f"Image classifier, {len(ctx.class_names)} classes, {ctx.config['backbone']} fine-tuned; "
                   f"{variant.precision}")
    add_metadata(path, ctx.class_names, ctx.size, name, description, version)  # input text names the resize
    return {"name": name, "version": version, "labels_file": LABELS_FILE, "normalization": {"mean": [0.0], "std": [1.0]},
            "parser_version": PARSER_VERSION}


def save_traced(model, size, path):
    """The Keras model as a SavedModel with one signature: input "image", float32 raw pixels, any batch."""
    from train.shared.tf_setup import import_tensorflow

    tf = import_tensorflow()
    h, w = size
    fn = tf.function(lambda image: model(image, training=False),
                     input_signature=[tf.TensorSpec((None, h, w, 3), tf.float32, name="image")])
    tf.saved_model.save(model, str(path), signatures=fn.get_concrete_function())
    return str(path)


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


def previous_manifest(export_dir):
    """The manifest so far, so unselected variants keep their entries; an unreadable one is rebuilt
    (the files it described are converted and checked again when exported)."""
    try:
        return read_manifest(export_dir, missing_ok=True)
    except InputError as e:
        log(f"{e}; writing a new one")
        return {}


# A variant's new file replaces its old one in three steps, old file kept until the manifest describes the new:
# (1) old file -> .<file>.prev, (2) new file renamed into place, (3) manifest written, then .prev removed. A
# kill at any instant leaves, after recover(), the old file with the old manifest or the new with the new.
PREVIOUS = ".{}.prev"


def keep_previous(final):
    if final.exists():
        os.replace(final, final.parent / PREVIOUS.format(final.name))


def drop_previous(out):
    for p in out.glob(PREVIOUS.format("*")):
        p.unlink()


def recover(out, manifest=None):
    """Put back a previous file whose replacement the manifest does not describe yet (a killed or failed export)."""
    manifest = manifest if manifest is not None else previous_manifest(out)
    by_file = {e.get("file"): e for e in manifest.get("variants", {}).values()}
    restored = 0
    for prev in out.glob(PREVIOUS.format("*")):
        name = prev.name[1:-len(".prev")]
        entry = by_file.get(name)
        if entry and entry.get("sha256") == sha256_file(prev):  # the manifest still describes the old file
            os.replace(prev, out / name)
            restored += 1
        else:
            prev.unlink()
    return restored


def export_run(run, variant_names=None, variants=None, **ctx_options):
    """Export; returns (manifest, names of failed variants). The caller holds the run's lock."""
    from train.shared.scratch import tidy

    chosen = variants if variants is not None else select(variant_names)
    out = run.export_dir
    out.mkdir(parents=True, exist_ok=True)
    tidy(run, log)
    if recover(out):
        log("put back the previous file(s) of an export that was stopped before its manifest was written")
    ctx = Context(run, **ctx_options)
    write_text(out / "labels.txt", "\n".join(ctx.class_names) + "\n")
    manifest = previous_manifest(out)
    from train.shared.versions import package_versions

    manifest.update({
        "run": run.path.name,  # the run's name: the manifest travels to devices, the builder's paths do not
        "classes": ctx.class_names,
        "preprocessing": ctx.config["preprocessing"],
        "source_model": {"file": "../" + run.model.name, "sha256": sha256_file(run.model)},
        "split_sha256": run.config().get("split_sha256"),  # the hash chain: images -> split -> model -> files
        "tool_versions": package_versions(TOOLS),
    })
    manifest.setdefault("variants", {})
    failed = []
    try:
        _export_each(chosen, ctx, out, manifest, failed)
    finally:
        ctx.close()
    return manifest, failed


def _export_each(chosen, ctx, out, manifest, failed):
    progress = Progress("export", len(chosen), "variants")
    for i, v in enumerate(chosen, 1):
        log(f"[{i}/{len(chosen)}] {v.name} ({v.format}, {v.precision})")
        t0 = time.time()
        final = out / v.filename
        try:
            with atomic_path(final, suffix=final.suffix) as tmp:
                extra = v.convert(ctx, tmp) or {}
                if v.format == "tflite":  # mobile-ready: labels and input description for MediaPipe and co.
                    extra["metadata"] = _tflite_metadata(tmp, ctx, v, manifest)
                info, smoke = smoke_check(tmp, ctx, extra.pop("smoke_reference", None))
                size, digest = tmp.stat().st_size, sha256_file(tmp)  # of the very bytes renamed into place
                keep_previous(final)
            entry = {
                "file": v.filename, "format": v.format, "precision": v.precision, "status": "ok",
                "bytes": size, "sha256": digest,
                "inputs": [info["input"]], "outputs": [info["output"]],
                "calibration_images": extra.pop("calibration_images", 0),
                **({"calibration_seed": ctx.seed} if v.calibrated else {}),
                "seconds": round(time.time() - t0, 1), "smoke_check": smoke,
                "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "source_sha256": manifest["source_model"]["sha256"], **extra,
            }
            manifest["variants"][v.name] = entry
            log(f"    ok: {entry['bytes'] / 1e6:.2f} MB in {entry['seconds']} s, "
                f"smoke agreement {smoke['agreement']:.0%} on {smoke['images']} images")
        except InputError:
            recover(out, manifest)
            raise  # bad input (missing data, unloadable model) stops everything with one clear line
        except Exception as e:
            error = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
            recover(out, manifest)
            failed.append(v.name)
            previous = manifest["variants"].get(v.name)
            if previous and previous.get("status") == "ok" and final.exists():
                previous["last_error"] = error  # the earlier good file stays, as does its entry
            else:
                manifest["variants"][v.name] = {"file": v.filename, "format": v.format, "precision": v.precision,
                                                "status": "failed", "error": error,
                                                "seconds": round(time.time() - t0, 1)}
            log(f"    FAILED: {error}")
            (out / f"{v.name}.error.log").write_text(traceback.format_exc(), encoding="utf-8")
        progress.update(i, v.name)
        manifest["updated_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        # shared stages are paid by the first variant that needs them; their cost is listed apart
        manifest["shared_stage_seconds"] = dict(ctx.timings)
        write_json(out / MANIFEST, manifest)
        drop_previous(out)  # the manifest now describes the new file: the previous one can go
