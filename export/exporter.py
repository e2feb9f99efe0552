"""Export every selected variant of a run into runs/<name>/export/, then describe them in manifest.json.

Each file is converted to a temporary name, smoke-checked through edge_runtime against the
Keras model, and only then renamed into place; a failure leaves the previous good file and
its manifest entry alone. The manifest is rewritten (atomically) after every variant.
"""
import os
import shutil
import time
import traceback
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path

import numpy as np

from edge_runtime.classifier import Classifier
from edge_runtime.errors import InputError
from edge_runtime.files import (MANIFEST, TEMP_PREFIX, atomic_path, fsync_path, read_manifest, sha256_file, write_json,
                                write_text)
from edge_runtime.machine import cores
from edge_runtime.preprocess import fit_of, load_batch
from runlib.progress import Progress, heartbeat, logger

from .variants import from_names

TOOLS = ("tensorflow", "tf-keras", "tensorflow-model-optimization", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert")
SMOKE_MIN_AGREEMENT = 0.5  # below this the variant "disagrees with the Keras model on most images"


log = logger("export")


class Context:
    """What converters need from the run, each loaded once and only when first asked for.

    config: the export's ExportConfig (runlib/options.py), resolved once by export.export().
    log, work: where progress goes and the scratch folder (a temporary one, removed by close(), when None).
    model, images: a model and (calibration, validation, smoke) images to use instead of loading them
    (the bias-corrected view shares the original's images).
    """

    def __init__(self, run, config, log=None, work=None, model=None, images=None):
        from .fallback import Budget

        self.run, self.export_config = run, config
        self.budget = Budget.of(config)
        self.log = log or logger("export")
        self.config = run.config()  # the run's config.json
        self.scratch = []  # folders removed by close()
        self.source_sha256 = None
        self.ranges = config.ranges  # activation ranges of the int8 files: export/ranges.py
        self.class_names = run.class_names()
        self.data_root = run.data_root()
        self.samples = run.split()
        self.calibration_count, self.smoke_count = config.calibration_images, config.smoke_images
        self.qat_epochs, self.qat_lr, self.seed = config.qat_epochs, config.qat_lr, config.seed
        self.qat_labels = config.qat_labels
        self.bias_correction = config.bias_correction  # auto | on | off: export/int8.py
        self.size = tuple(self.config["image_size"])
        self.timings = {}  # seconds of the shared stages (model load, trace, tf2onnx), for the manifest
        self._work, self._own_work = work, work is None
        self._model = model
        self._images = dict(zip(("calibration", "validation", "smoke"), images)) if images else {}

    @property
    def work(self):
        """A scratch folder for what several converters share; a temporary one is removed by close()."""
        if self._work is None:
            import tempfile

            from runlib.scratch import prefix

            self._work = Path(tempfile.mkdtemp(prefix=prefix("export")))
        return self._work

    def close(self):
        for folder in self.scratch + ([self._work] if self._own_work and self._work else []):
            shutil.rmtree(folder, ignore_errors=True)

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

    @cached_property
    def bias_corrected(self):
        """A context of the model with its biases corrected for int8 weight rounding (export/bias_correction.py):
        its own trace and tf2onnx conversion, the same images, and the original model's probabilities as the
        reference. Built once, for every int8 format that tries it."""
        import tempfile

        from runlib.scratch import prefix

        from .bias_correction import correct

        images = self.calibration, self.validation, self.smoke  # computed once, from the original model
        field_like = self.field_like
        work = Path(tempfile.mkdtemp(prefix=prefix("export-bias-corrected")))
        self.scratch.append(work)
        with heartbeat("export", "correcting biases for int8 weights"):
            model, correction = correct(self.model, images[0])
        view = Context(self.run, self.export_config, log=self.log, work=work, model=model, images=images)
        view.budget.rule, view.budget.outside = self.budget.rule, self.budget.outside
        view._images["field_like"] = field_like
        view.correction = correction  # its own trace and tf2onnx seconds are reported with the correction
        return view

    def subset(self, name):
        return [s for s in self.samples if s.subset == name]

    def _pixels(self, samples):
        missing = [s.path for s in samples if not (self.data_root / s.path).is_file()]
        if missing:
            raise InputError(f"{self.data_root / missing[0]} from the run's split is missing ({len(missing)} file(s)); "
                             f"is the dataset still at {self.data_root}?")
        return load_batch([self.data_root / s.path for s in samples], self.size, fit_of(self.config))

    @property
    def model(self):
        if self._model is None:
            from train.model import load_run_model

            t0 = time.time()
            with heartbeat("export", f"loading {self.run.model}"):
                self._model = load_run_model(self.run)
            self.timings["load model"] = round(time.time() - t0, 1)
        return self._model

    def _cached(self, name, make):
        if name not in self._images:
            self._images[name] = make()
        return self._images[name]

    @property
    def calibration(self):
        return self._cached("calibration", self._calibration)

    @property
    def validation(self):
        return self._cached("validation", self._validation)

    @property
    def smoke(self):
        return self._cached("smoke", self._smoke)

    @property
    def field_like(self):
        """(uint8 pixels, Keras probabilities) of photos like a field's, on which the integer files must make the
        Keras model's decisions too: each validation image under one corruption (runlib/corruptions.py), and the
        --unknown images. The validation split alone is as clean as the training photos, where files rarely
        part; field photos are where the model is unsure, and where they do."""
        return self._cached("field_like", self._field_like)

    @cached_property
    def unknown_pixels(self):
        """uint8 pixels of --unknown's readable images, or None."""
        if not self.export_config.unknown:
            return None
        from runlib.field import pixels_of, read_unknown

        photos = read_unknown(self.export_config.unknown)
        return pixels_of(photos, self.size, fit_of(self.config), "--unknown", self.log)[0]

    def _field_like(self):
        from runlib.corruptions import one_each

        parts = [one_each(self.validation[0], self.seed)]
        if self.unknown_pixels is not None:
            parts.append(self.unknown_pixels)
        pixels = np.concatenate(parts)
        return pixels, self.model.predict(pixels.astype(np.float32), verbose=0)

    def _calibration(self):
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
        self.log(f"loading {len(pick)} calibration images from the training split ({len(queues)} classes, evenly drawn)")
        return self._pixels(sorted(pick, key=lambda s: s.path))

    def _validation(self):
        """(uint8 pixels, labels, Keras probabilities) of the whole validation split: what the fallback decides on."""
        pool = sorted(self.subset("val") or self.subset("train"), key=lambda s: s.path)
        index = {c: i for i, c in enumerate(self.class_names)}
        pixels = self._pixels(pool)
        return pixels, np.array([index[s.label] for s in pool]), self.model.predict(pixels.astype(np.float32), verbose=0)

    def _smoke(self):
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
    from runlib.tf_setup import import_tensorflow

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
    described = {}
    for e in manifest.get("variants", {}).values():
        described[e.get("file")] = e.get("sha256")
        if e.get("reference_model"):
            described[e["reference_model"]] = e.get("reference_model_sha256")
    restored = 0
    for prev in out.glob(PREVIOUS.format("*")):
        name = prev.name[1:-len(".prev")]
        if described.get(name) and described[name] == sha256_file(prev):  # the manifest still describes the old file
            os.replace(prev, out / name)
            restored += 1
        else:
            prev.unlink()
    return restored


def export_run(run, config, variants=None):
    """Export the variants (default: those config.variants names); returns (manifest, names of failed
    variants). The caller holds the run's lock."""
    from runlib.scratch import tidy

    chosen = variants if variants is not None else from_names(config.variants)
    out = run.export_dir
    out.mkdir(parents=True, exist_ok=True)
    tidy(run, log)
    if recover(out):
        log("put back the previous file(s) of an export that was stopped before its manifest was written")
    ctx = Context(run, config, log=log)
    write_text(out / "labels.txt", "\n".join(ctx.class_names) + "\n")
    manifest = previous_manifest(out)
    from runlib.versions import package_versions

    manifest.update({
        "run": run.path.name,  # the run's name: the manifest travels to devices, the builder's paths do not
        "classes": ctx.class_names,
        "preprocessing": ctx.config["preprocessing"],
        "source_model": {"file": "../" + run.model.name, "sha256": sha256_file(run.model)},
        "split_sha256": run.config().get("split_sha256"),  # the hash chain: images -> split -> model -> files
        "tool_versions": package_versions(TOOLS),
    })
    manifest.setdefault("variants", {})
    manifest["decision"] = decision_rule(ctx, config)
    ctx.source_sha256 = manifest["source_model"]["sha256"]
    failed = []
    try:
        _export_each(chosen, ctx, out, manifest, failed)
    finally:
        ctx.close()
    return manifest, failed


def decision_rule(ctx, config):
    """The manifest's "decision": calibration and abstention fitted on the validation split (export/abstention.py)
    and, with --unknown, on images the model must not name."""
    from .abstention import fit_rule

    pixels, y, probs = ctx.validation
    unknown = None
    if ctx.unknown_pixels is not None:
        unknown = ctx.model.predict(ctx.unknown_pixels.astype(np.float32), verbose=0)
    rule, record = fit_rule(y, probs, config, unknown)
    # the fallback and bias correction aim at the same decisions, on validation and on field-like photos
    ctx.budget.rule, ctx.budget.outside = rule, ctx.field_like
    if config.unknown:
        record["unknown_folder"] = str(Path(config.unknown).resolve())
    ctx.log(f"decision rule: temperature {rule.temperature:.3f}, answer when calibrated confidence >= "
            f"{rule.threshold:.3f} ({record['threshold_rule']}; {record['validation_coverage']:.1%} of validation "
            "images answered)")
    return record


def convert(v, ctx, tmp, manifest):
    """Write variant v into tmp, metadata included, and smoke-check it: the fields of its manifest entry."""
    t0 = time.time()
    extra = v.convert(ctx, tmp) or {}
    if v.format == "tflite":  # mobile-ready: labels and input description for MediaPipe and co.
        extra["metadata"] = _tflite_metadata(tmp, ctx, v, manifest)
    info, smoke = smoke_check(tmp, ctx, extra.pop("smoke_reference", None))
    return {"file": v.filename, "format": v.format, "precision": v.precision, "status": "ok",
            "bytes": Path(tmp).stat().st_size, "sha256": sha256_file(tmp),  # of the very bytes renamed into place
            "inputs": [info["input"]], "outputs": [info["output"]],
            "calibration_images": extra.pop("calibration_images", 0),
            **({"calibration_seed": ctx.seed} if v.calibrated else {}),
            "seconds": round(time.time() - t0, 1), "smoke_check": smoke,
            "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "source_sha256": manifest["source_model"]["sha256"], **extra}


def commit(out, entry):
    """Keep each file a converted variant replaces until the manifest names the new one (keep_previous /
    recover), and move in the files it staged; atomic_path then renames the variant's own file into place."""
    staged = entry.pop("staged", {})
    keep_previous(out / entry["file"])
    for name, path in staged.items():
        keep_previous(out / name)
        if Path(path).parent != out:  # staged in a scratch folder, maybe another file system: copy in first
            near = out / f"{TEMP_PREFIX}{name}.in"  # swept like any temporary if a kill leaves it
            with atomic_path(near) as copy:
                shutil.copyfile(path, copy)
            path = near
        os.replace(path, out / name)
    fsync_path(out)


def skip_reason(v, ctx, manifest):
    """Why variant v is not converted this time (--qat), or None: with auto, a variant that is needed only when
    another's file misses the budget is skipped when that file met it on validation."""
    if not v.needed_unless or ctx.export_config.qat == "on":
        return None
    if ctx.export_config.qat == "off":
        return "--qat off"
    other = manifest["variants"].get(v.needed_unless) or {}
    fb = other.get("fallback") or {}
    if other.get("status") == "ok" and other.get("source_sha256") == ctx.source_sha256 and fb.get("met_budget"):
        return (f"--qat auto: {v.needed_unless} already meets the parity budget on validation "
                f"({fb.get('kept_float') and len(fb['kept_float']) or 0} ops kept float)")
    return None


def _skip(v, why, out, manifest):
    manifest["variants"][v.name] = {"file": v.filename, "format": v.format, "precision": v.precision,
                                    "status": "skipped", "why": why}
    log(f"    skipped: {why}")
    write_json(out / MANIFEST, manifest)


def _export_each(chosen, ctx, out, manifest, failed):
    from .background import start

    progress, done = Progress("export", len(chosen), "variants"), 0
    names = {v.name for v in chosen}
    # decided after the variant they depend on; converted then, if needed, in the foreground
    later = [v for v in chosen if v.needed_unless and ctx.export_config.qat == "auto" and v.needed_unless in names]
    # a variant that keeps every core busy for minutes (QAT's fine-tuning) converts in a process of its own meanwhile
    jobs = (start([v for v in chosen if v.background and v not in later and not skip_reason(v, ctx, manifest)], ctx)
            if len(chosen) > 1 and cores() > 1 else {})
    for v in [v for v in chosen if v not in later] + later:
        if v.name in jobs:
            continue
        why = skip_reason(v, ctx, manifest)
        if why:
            done += 1
            log(f"[{done}/{len(chosen)}] {v.name}")
            _skip(v, why, out, manifest)
            progress.update(done, v.name)
            continue
        done += 1
        log(f"[{done}/{len(chosen)}] {v.name} ({v.format}, {v.precision})")
        _one(v, ctx, out, manifest, failed, lambda tmp, v=v: convert(v, ctx, tmp, manifest))
        progress.update(done, v.name)
    for v in chosen:
        if v.name in jobs:
            done += 1
            log(f"[{done}/{len(chosen)}] {v.name}: waiting for its own process")
            _one(v, ctx, out, manifest, failed, jobs[v.name].result)
            progress.update(done, v.name)


def _one(v, ctx, out, manifest, failed, produce):
    """Produce one variant's file (a conversion here, or a background process's result) and commit it, or
    record its failure with the previous good file left in place; then write the manifest."""
    t0 = time.time()
    final = out / v.filename
    try:
        with atomic_path(final, suffix=final.suffix) as tmp:
            entry = produce(tmp)
            commit(out, entry)
        manifest["variants"][v.name] = entry
        log(f"    ok: {entry['bytes'] / 1e6:.2f} MB in {entry['seconds']} s, "
            f"smoke agreement {entry['smoke_check']['agreement']:.0%} on {entry['smoke_check']['images']} images")
    except InputError:
        recover(out, manifest)
        raise  # bad input (missing data, unloadable model) stops everything with one clear line
    except Exception as e:  # noqa: BLE001  any converter failure is this variant's, recorded; the others go on
        error = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
        recover(out, manifest)
        failed.append(v.name)
        previous = manifest["variants"].get(v.name)
        if previous and previous.get("status") == "ok" and final.exists():
            previous["last_error"] = error  # the earlier good file stays, as does its entry
        else:
            manifest["variants"][v.name] = {"file": v.filename, "format": v.format, "precision": v.precision,
                                            "status": "failed", "error": error, "seconds": round(time.time() - t0, 1)}
        log(f"    FAILED: {error}")
        (out / f"{v.name}.error.log").write_text(getattr(e, "details", None) or traceback.format_exc(), encoding="utf-8")
    manifest["updated_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    # shared stages are paid by the first variant that needs them; their cost is listed apart
    manifest["shared_stage_seconds"] = dict(ctx.timings)
    write_json(out / MANIFEST, manifest)
    drop_previous(out)  # the manifest now describes the new files: the previous ones can go
