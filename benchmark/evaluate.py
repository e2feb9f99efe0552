"""Orchestrate a benchmark: the run's test split, one worker process per model and thread
count, then accuracy against the Keras model and the parity gate."""
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_runtime.backends import describe_settings
from edge_runtime.errors import InputError
from edge_runtime.files import plain_name, sha256_file
from edge_runtime.preprocess import fit_of, load_batch
from export.variants import from_names
from runlib.metrics import (CLASS_PARITY, PARITY, agreement, class_misses, class_parity, classification_metrics,
                                  mcnemar_p, paired_delta_interval,
                           parity_misses, wilson_interval)

from edge_runtime.timing import DEFAULTS as TIMING_DEFAULTS
from runlib.progress import heartbeat, logger
from runlib.scratch import prefix as scratch_prefix

REFERENCE = "keras"


log = logger("benchmark")


def all_cores():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def test_set(run):
    """(paths, labels, pixels) of the run's test split, refusing images that changed since training."""
    return run.test_set("test")


QAT_SOURCE = "qat-source"
# a settings choice replaces the library defaults only when it is at least this much faster (not noise)
SETTINGS_MIN_GAIN = 0.03


def tuning_set(run, limit=64):
    """uint8 pixels of (up to `limit` of) the validation split: runtime settings are chosen on these, not on test."""
    samples = [s for s in run.split() if s.subset == "val"] or [s for s in run.split() if s.subset == "train"]
    root = run.data_root()
    paths = [root / s.path for s in sorted(samples, key=lambda s: s.path)[:limit] if (root / s.path).is_file()]
    return load_batch(paths, tuple(run.config()["image_size"]), fit_of(run.config())) if paths else None


def choose_settings(candidates):
    """The fastest choice with the defaults' predictions; the defaults unless it beats them by SETTINGS_MIN_GAIN."""
    default = candidates[0]
    same = [c for c in candidates if c["same_predictions"] and c["p50_ms"] is not None]
    best = min(same, key=lambda c: c["p50_ms"])
    return best["settings"] if best["p50_ms"] < (1 - SETTINGS_MIN_GAIN) * default["p50_ms"] else default["settings"]


def record_settings(run, rows):
    """The chosen runtime settings of each measured variant into the export manifest, with the machine they
    were measured on: edge_runtime uses them by default on machines of the same kind."""
    from edge_runtime.files import read_manifest, write_json
    from edge_runtime.machine import signature

    manifest = read_manifest(run.export_manifest)
    tuned = manifest.get("runtime_settings") or {}
    for r in rows:
        if r["status"] == "ok" and r.get("settings_candidates"):
            tuned[r["variant"]] = {"settings": r["runtime_settings"], "machine": signature(),
                                   "candidates": r["settings_candidates"]}
    if tuned:
        manifest["runtime_settings"] = tuned
        write_json(run.export_manifest, manifest)


def mobile_resize(rgb, size):
    """uint8 (H, W, 3) -> `size` by plain bilinear interpolation with half-pixel centres and no antialiasing:
    how MediaPipe and most mobile pipelines resize (TF's resize_bilinear, OpenCV's INTER_LINEAR). Our
    contract uses Pillow's bilinear, which antialiases when it shrinks; the benchmark measures the gap."""
    src = np.asarray(rgb, np.float32)
    h, w = int(size[0]), int(size[1])
    sh, sw = src.shape[:2]

    def grid(n_out, n_in):
        x = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(x).astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), (x - lo)[:, None]

    y0, y1, fy = grid(h, sh)
    x0, x1, fx = grid(w, sw)
    rows = src[y0] * (1 - fy[..., None]) + src[y1] * fy[..., None]  # (h, sw, 3)
    out = rows[:, x0] * (1 - fx) + rows[:, x1] * fx
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def mobile_pixels(paths, size, fit="squash"):
    from edge_runtime.preprocess import crop_box, decode

    def fitted(p):
        rgb = np.asarray(decode(p))
        if fit == "crop":  # the same centred box, cut at whole pixels as a mobile pipeline would
            left, top, right, bottom = crop_box(rgb.shape[1], rgb.shape[0], size)
            rgb = rgb[top:bottom, left:right]
        return mobile_resize(rgb, size)

    return np.stack([fitted(p) for p in paths])


@dataclass
class ModelUnderTest:
    """One model the benchmark measures."""
    name: str
    format: str
    precision: str
    path: Path
    kind: str  # "keras" (TensorFlow) or "edge" (through edge_runtime)
    agree_ref: str = None  # the model its agreement is gated against (None for the reference itself)
    entry: dict = field(default_factory=dict)  # its manifest entry
    quantization_aware: bool = False  # a Keras file holding tfmot's fake-quant layers (a QAT variant's float source)

    @property
    def timed(self):  # the QAT source is an accuracy reference, never deployed: not timed
        return self.name != QAT_SOURCE


def targets(run, variant_names=None):
    """([ModelUnderTest]: the Keras reference, then each exported variant in table order, a QAT variant preceded by
    its float source, the reference its agreement is gated against), {asked-for variant: why not exported}."""
    exported = run.manifest().get("variants", {})
    out = [ModelUnderTest(REFERENCE, "keras", "float32", run.model, "keras")]
    unavailable = {}
    for v in from_names(variant_names):
        entry = exported.get(v.name)
        if entry and entry.get("status") == "skipped":  # not needed this time (--qat): neither a pass nor a failure
            continue
        if entry and entry.get("status") == "ok":
            plain_name(entry.get("file"), f"{run.export_manifest}, {v.name}")
            if entry.get("reference_model"):
                plain_name(entry["reference_model"], f"{run.export_manifest}, {v.name}")
        if not entry or entry.get("status") != "ok" or not (run.export_dir / entry["file"]).is_file():
            unavailable[v.name] = (entry or {}).get("error", "not exported")
            continue
        agree_ref = REFERENCE
        if entry.get("reference_model"):
            source = run.export_dir / entry["reference_model"]
            if not source.is_file():
                unavailable[v.name] = f"its float source {source.name} is missing"
                continue
            if entry.get("reference_model_sha256") and sha256_file(source) != entry["reference_model_sha256"]:
                unavailable[v.name] = f"its float source {source.name} changed since export"
                continue
            out.append(ModelUnderTest(QAT_SOURCE, "keras", "float32, fake-quant (QAT source)", source, "keras",
                                      quantization_aware=True))
            agree_ref = entry.get("gate_reference", QAT_SOURCE)  # exports before distillation: their own source
        out.append(ModelUnderTest(v.name, v.format, v.precision, run.export_dir / entry["file"], "edge", agree_ref, entry))
    if len(out) == 1:
        raise InputError(f"{run.path} has no exported variant to benchmark"
                         + (f" among {variant_names}" if variant_names else "") + f"; run `make export RUN={run.path}`")
    return out, unavailable


def skipped(run, variant_names=None):
    """{variant: why} of the asked-for variants export skipped on purpose (--qat auto or off)."""
    exported = run.manifest().get("variants", {})
    return {v.name: exported[v.name].get("why", "skipped by export") for v in from_names(variant_names)
            if (exported.get(v.name) or {}).get("status") == "skipped"}


def run_worker(job, workdir):
    """One measurement in a fresh interpreter; returns its result dict, or raises RuntimeError with its last error line."""
    job_file = Path(workdir) / f"{job['name']}-{job['threads']}.job.json"
    job_file.write_text(json.dumps(job))
    what = {"tune": "trying runtime settings"}.get(job["kind"], f"measuring at {job['threads']} thread(s)")
    with heartbeat("benchmark", f"{job['name']}: {what}"):
        proc = subprocess.run([sys.executable, "-m", "benchmark.worker", str(job_file)], capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
        errors = [l for l in lines if l.startswith("error:") or "Error" in l]
        raise RuntimeError(((errors or lines or ["worker died without a message"])[-1]).removeprefix("error: ")[:300])
    return json.loads(Path(job["result_out"]).read_text(encoding="utf-8"))


FALLBACK_KEYS = ("candidate_ops", "validation_before", "validation_after", "kept_float_layers", "float_from",
                 "float_weights", "met_budget", "cost")


def fallback_summary(fb):
    """The part of a manifest's "fallback" record the report shows (not the per-op sensitivity lists)."""
    return {k: fb.get(k) for k in FALLBACK_KEYS}


def measure_all(run, config):
    """Evaluate and time every model under test; returns (rows, context) for the report and gate.

    config: the BenchmarkConfig (runlib/options.py). With config.tune, each exported variant's runtime settings
    are first tried on this machine (on validation images) and it is measured with the fastest that keeps its
    predictions; with config.robustness, config.robustness_images test images are also corrupted
    (runlib/corruptions.py) to compare the models on."""
    from runlib.progress import Progress

    variant_names, batch = config.variants, config.batch
    chosen, unavailable = targets(run, variant_names)
    for name, why in unavailable.items():
        log(f"{name}: no export to measure ({why}); it fails the gate")
    for name, why in skipped(run, variant_names).items():
        log(f"{name}: not exported on purpose ({why}); neither measured nor gated")
    with tempfile.TemporaryDirectory(prefix=scratch_prefix("benchmark")) as work:
        bench = Measurer(run, Path(work), config)
        log(f"run {run.path}: {len(bench.paths)} test images, {len(bench.classes)} classes, {len(chosen)} models, "
            f"threads 1 and {bench.cores}")
        progress = Progress("benchmark", len(chosen), "models")
        rows = []
        for i, t in enumerate(chosen, 1):
            log(f"[{i}/{len(chosen)}] {t.name} ({t.format}, {t.precision}): measuring in a fresh process")
            rows.append(bench.measure(t))
            progress.update(i, t.name)
    for name, why in unavailable.items():  # asked for but not there: it fails the gate, it is not skipped
        v = next(v for v in from_names(variant_names) if v.name == name)
        rows.append({"variant": name, "format": v.format, "precision": v.precision, "status": "missing", "error": why})
    rows = report_order(rows, [t.name for t in chosen], variant_names)
    ref = next((r for r in rows if r["variant"] == REFERENCE and r["status"] == "ok"), None)
    if ref is None:
        raise InputError(f"the Keras reference model could not be measured: {rows[0].get('error')}")
    for r in rows:
        if r["status"] == "ok":
            r["speedup_vs_keras"] = ref["p50_ms"] / r["p50_ms"] if r.get("p50_ms") else None
    context = {"test_images": len(bench.paths), "classes": bench.classes, "threads": [1, bench.cores], "batch": batch,
               "timing": bench.timing, "unavailable": unavailable, "labels": bench.y.tolist(),
               "paths": [str(p.relative_to(run.data_root())) for p in bench.paths],
               "robustness": bench.robust_context, "decision_rule": bench.rule.as_dict(),
               "skipped": skipped(run, variant_names),
               "outside": bench.outside.meta if bench.outside is not None else None}
    return rows, context


def report_order(rows, measured, variant_names):
    """The measured rows as targets() gave them (a reference before its variant), with the missing
    variants at their place in the variant table."""
    order, pending = [], list(measured)
    for v in from_names(variant_names):
        if v.name in pending:
            k = pending.index(v.name) + 1
            order, pending = order + pending[:k], pending[k:]
        else:
            order.append(v.name)
    order += pending
    return sorted(rows, key=lambda r: order.index(r["variant"]) if r["variant"] in order else len(order))


class Measurer:
    """The test split's pixels, written once for every worker, and each model's measurement."""

    def __init__(self, run, work, config):
        self.work, self.batch, self.cores = work, config.batch, config.threads or all_cores()
        self.timing = {k: getattr(config, k, default) for k, default in TIMING_DEFAULTS.items()}
        tune, robustness = config.tune, config.robustness_images if config.robustness else 0
        self.paths, self.y, self.pixels = test_set(run)
        self.classes = run.class_names()
        np.save(work / "pixels.npy", self.pixels)  # the very same uint8 images reach every model
        # and resized the mobile way
        np.save(work / "mobile.npy", mobile_pixels(self.paths, self.pixels.shape[1:3], fit_of(run.config())))
        tune_pixels = tuning_set(run) if tune else None
        self.tune = tune_pixels is not None
        if self.tune:
            np.save(work / "tune.npy", tune_pixels)
        self.probs, self.robust, self.robust_context = {}, {}, None
        from .decisions import outside_set, rule_of

        self.rule, self.outside, self.outside_probs = rule_of(run), outside_set(run, config, log), {}
        if self.outside is not None:
            np.save(work / "outside.npy", self.outside.pixels)
        if robustness:
            from runlib.corruptions import corrupted_set, pick

            self.robust_idx = pick(self.y, robustness)
            t0 = time.time()
            self.robust_names, corrupted = corrupted_set(self.pixels[self.robust_idx])
            np.save(work / "robust.npy", corrupted)
            self.robust_context = {"images": int(len(self.robust_idx)), "corruptions": self.robust_names,
                                   "seed": 0, "corrupting_seconds": round(time.time() - t0, 2)}

    def job(self, t, **kw):
        return {"name": t.name, "kind": t.kind, "model": str(t.path), "pixels": str(self.work / "pixels.npy"),
                "quantization_aware": t.quantization_aware,
                "paths": [str(p) for p in self.paths], "batch": self.batch, "timing": self.timing, **kw}

    def settings(self, t, row):
        """The fastest runtime settings that keep the target's predictions, tried on validation images."""
        tuned = run_worker(self.job(t, kind="tune", threads=self.cores, tune_pixels=str(self.work / "tune.npy"),
                                    timing=dict(self.timing, max_seconds=min(self.timing["max_seconds"], 5.0)),
                                    result_out=str(self.work / f"{t.name}-tune.json")), self.work)
        chosen = choose_settings(tuned["candidates"])
        row.update(runtime_settings=chosen, settings_candidates=tuned["candidates"],
                   runtime_settings_text=describe_settings(chosen))
        log("    runtime settings: " + "; ".join(
            f"{describe_settings(c['settings'])} "
            + (f"{c['p50_ms']:.2f} ms" if c["same_predictions"] else "other predictions: excluded")
            for c in tuned["candidates"]) + f" -> {describe_settings(chosen)}")
        return chosen

    def parity_detail(self, t, own):
        """Per-class recall against the Keras model's, and every test image whose top-1 differs from the
        model this one is gated against (the flips), with both answers."""
        if t.name == REFERENCE:
            return {}
        out = {"class_parity": class_parity(self.y, own, self.probs[REFERENCE], self.classes)}
        ref = self.probs.get(t.agree_ref) if t.agree_ref else None
        if ref is not None:
            mine, theirs = own.argmax(1), ref.argmax(1)
            out["flips"] = [{"index": int(i), "image": str(self.paths[i].name), "true": self.classes[self.y[i]],
                             "predicted": self.classes[mine[i]], "probability": float(own[i, mine[i]]),
                             "reference_predicted": self.classes[theirs[i]],
                             "reference_probability": float(ref[i, theirs[i]])}
                            for i in np.nonzero(mine != theirs)[0]]
        return out

    def extra_sets(self, t):
        """The job's keys for the corrupted test images and the --field/--unknown photos, when measured."""
        w, out = self.work, {}
        if self.robust_context:
            out.update(robust_pixels=str(w / "robust.npy"), robust_probs_out=str(w / f"{t.name}-robust.npy"))
        if self.outside is not None:
            out.update(outside_pixels=str(w / "outside.npy"), outside_probs_out=str(w / f"{t.name}-outside.npy"))
        return out

    def decisions(self, t, own):
        """Calibration and decisions under the run's rule, against the Keras model's (benchmark/decisions.py)."""
        from .decisions import figures

        keras = None if t.name == REFERENCE else self.probs.get(REFERENCE)
        outside = (self.outside_probs.get(t.name), self.outside_probs.get(REFERENCE) if keras is not None else None)
        return figures(self.rule, self.y, own, keras, self.outside, outside)

    def robustness(self, t, seconds):
        """Top-1, and agreement with the Keras model on the same corrupted images, for each corruption."""
        mine, keras = self.robust[t.name], self.robust[REFERENCE]
        k = len(self.robust_idx)
        y = self.y[self.robust_idx]
        by = {}
        for j, name in enumerate(self.robust_names):
            p, q = mine[j * k:(j + 1) * k], keras[j * k:(j + 1) * k]
            by[name] = {"top1": float(np.mean(p.argmax(1) == y)),
                        "agreement": None if t.name == REFERENCE else float(np.mean(p.argmax(1) == q.argmax(1)))}
        return {"by_corruption": by, "seconds": seconds}

    def measure(self, t):
        """The target's row: accuracy, and cost (from a process with all cores and one with 1 thread)."""
        row = {"variant": t.name, "format": t.format, "precision": t.precision, "file": str(t.path),
               "size_mb": t.path.stat().st_size / 1e6, "sha256": sha256_file(t.path), "status": "ok"}
        try:
            extra = {"settings": self.settings(t, row)} if t.kind == "edge" and self.tune else {}
            w, robust = self.work, self.extra_sets(t)
            full = run_worker(self.job(t, threads=self.cores, full=True, timed=t.timed, probs_out=str(w / f"{t.name}.npy"),
                                       mobile_pixels=str(w / "mobile.npy"), mobile_probs_out=str(w / f"{t.name}-mobile.npy"),
                                       result_out=str(w / f"{t.name}-all.json"), **robust, **extra), w)
            single = full if self.cores == 1 or not t.timed else run_worker(
                self.job(t, threads=1, full=False, result_out=str(w / f"{t.name}-1.json"), **extra), w)
            self.probs[t.name] = np.load(w / f"{t.name}.npy")
            mobile = np.load(w / f"{t.name}-mobile.npy")
            for probs, key in ((self.robust, "robust_probs_out"), (self.outside_probs, "outside_probs_out")):
                if key in robust:
                    probs[t.name] = np.load(robust[key])
        except RuntimeError as e:
            row.update(status="error", error=str(e))
            log(f"    FAILED: {e}")
            return row
        row.update(timings(full, single, self.cores) if t.timed else
                   {"load_seconds": full["load_seconds"], "peak_rss_mb": full["peak_rss_mb"], "p50_ms": None,
                    "p50_ms_1thread": None})
        own = self.probs[t.name]
        row.update(accuracy(self.y, own, self.probs.get(REFERENCE), self.classes,
                            self.probs.get(t.agree_ref) if t.agree_ref else None), agreement_reference=t.agree_ref)
        # the same model fed the mobile way's pixels instead of the contract's
        row.update(mobile_resize_top1=float(np.mean(mobile.argmax(1) == self.y)),
                   mobile_resize_agreement=float(np.mean(mobile.argmax(1) == own.argmax(1))),
                   mobile_resize_max_abs_prob_diff=float(np.abs(mobile - own).max()))
        row.update(self.parity_detail(t, own))
        row["decisions"] = self.decisions(t, own)
        if self.robust_context:
            row["robustness"] = self.robustness(t, full.get("robustness_seconds"))
        if t.entry.get("bias_correction"):
            row["bias_correction"] = t.entry["bias_correction"]
        fb = t.entry.get("fallback")
        if fb:
            row.update(float_ops=len(fb["kept_float"]), fallback_met_budget=fb["met_budget"], fallback=fallback_summary(fb),
                       activation_ranges=(t.entry.get("activation_ranges") or {}).get("method"))
        log(f"    top-1 {row['top1']:.3f}" + (f" ({row['top1_change_points']:+.1f} pts, agreement {row['agreement']:.3f})"
                                                 if row.get("agreement") is not None else "")
            + (f", p50 {row['p50_ms']:.1f} ms ({self.cores} threads), {row['p50_ms_1thread']:.1f} ms (1 thread)"
               if t.timed else " (an accuracy reference: not timed)")
            + f", {row['size_mb']:.1f} MB, peak {row['peak_rss_mb']:.0f} MB")
        return row


def timings(full, single, cores):
    rt, rt1, bare = full["runtime"], single["runtime"], full["bare"]
    return {
        "p50_ms": rt["p50_ms"], "p90_ms": rt["p90_ms"], "p99_ms": rt["p99_ms"], "latency_runs": rt["runs"],
        "p50_ci_ms": rt.get("p50_ci_ms"), "p50_ci_relative": rt.get("p50_ci_relative"),
        "p50_ms_1thread": rt1["p50_ms"], "p90_ms_1thread": rt1["p90_ms"], "p99_ms_1thread": rt1["p99_ms"],
        "bare_p50_ms": bare["p50_ms"], "bare_p50_ms_1thread": single["bare"]["p50_ms"],
        "runtime_overhead_pct": 100.0 * (rt["p50_ms"] / bare["p50_ms"] - 1) if bare["p50_ms"] > 0 else None,
        "end_to_end_p50_ms": full["end_to_end"]["p50_ms"], "end_to_end_p90_ms": full["end_to_end"]["p90_ms"],
        "throughput_images_per_s": full["throughput"]["images_per_second"], "throughput_batch": full["throughput"]["batch"],
        "load_seconds": full["load_seconds"], "peak_rss_mb": full["peak_rss_mb"],
    }


def accuracy(y, probs, reference_probs, class_names, agreement_probs=None):
    """Metrics of one model; Δ top-1 against the Keras reference, agreement against `agreement_probs`
    (the model it was converted from: Keras, or the QAT source), each with a 95% interval."""
    m = classification_metrics(y, probs, class_names)
    out = {k: m[k] for k in ("top1", "top5", "macro_f1", "balanced_accuracy", "per_class_recall", "confusion_matrix",
                          "most_confused")}
    if reference_probs is None:  # this is the reference
        out.update(top1_change_points=0.0, agreement=None, prob_mean_abs_diff=None, prob_max_abs_diff=None)
        return out
    y = np.asarray(y)
    agreement_probs = reference_probs if agreement_probs is None else agreement_probs
    correct, ref_correct = probs.argmax(1) == y, reference_probs.argmax(1) == y
    out.update(top1_change_points=100.0 * (correct.mean() - ref_correct.mean()), **agreement(probs, agreement_probs))
    agreeing = int(np.sum(probs.argmax(1) == agreement_probs.argmax(1)))
    out.update(n=int(len(y)), agreement_ci=wilson_interval(agreeing, len(y)),
               top1_change_ci=paired_delta_interval(correct, ref_correct), mcnemar_p=mcnemar_p(correct, ref_correct))
    return out


def gate(rows, max_drop=PARITY["max_drop"], min_agreement=PARITY["min_agreement"],
         max_class_drop=CLASS_PARITY["max_class_drop"], class_images=CLASS_PARITY["class_images"],
         robustness_min_agreement=None):
    """{variant: [reasons]} for every variant that misses parity (overall, or in a class), could not be measured,
    or is missing; and, when asked, that parts from the Keras model under a corruption."""
    failures = {}
    for r in rows:
        if r["variant"] in (REFERENCE, QAT_SOURCE):
            continue
        if r["status"] == "missing":
            failures[r["variant"]] = [f"no export to measure ({r.get('error')})"]
            continue
        if r["status"] != "ok":
            failures[r["variant"]] = [f"could not be measured ({r.get('error')})"]
            continue
        reasons = parity_misses(r["top1_change_points"], r["agreement"], max_drop, min_agreement)
        r["class_misses"] = class_misses(r.get("class_parity") or {}, max_class_drop, class_images)
        reasons += r["class_misses"]
        if robustness_min_agreement is not None:
            reasons += [f"{name}: agreement {v['agreement']:.3f} under corruption (limit {robustness_min_agreement:g})"
                        for name, v in (r.get("robustness") or {}).get("by_corruption", {}).items()
                        if v["agreement"] is not None and v["agreement"] < robustness_min_agreement - 1e-12]
        if reasons:
            failures[r["variant"]] = reasons
    return failures


def recommend(rows, failures):
    """One pick per goal among the deployable variants that pass the gate, on this machine:
    {"fastest" | "smallest" | "most_accurate": {"variant", "why"}}; empty when none passes."""
    passing = [r for r in rows if r["status"] == "ok" and r["variant"] not in (REFERENCE, QAT_SOURCE)
               and r["variant"] not in failures]
    if not passing:
        return {}

    def figures(r):
        return (f"p50 {r['p50_ms']:.2f} ms ({r['p50_ms_1thread']:.2f} ms at 1 thread), "
                f"{r['size_mb']:.1f} MB, top-1 {r['top1']:.3f} ({r['top1_change_points']:+.1f} pts), "
                f"agreement {r['agreement']:.3f}")

    fastest = min(passing, key=lambda r: (r["p50_ms"], r["size_mb"]))
    smallest = min(passing, key=lambda r: (r["size_mb"], r["p50_ms"]))
    accurate = max(passing, key=lambda r: (r["top1"], r["agreement"], -r["p50_ms"]))
    picks = {goal: {"variant": r["variant"], "why": figures(r)}
             for goal, r in (("fastest", fastest), ("smallest", smallest), ("most_accurate", accurate))}
    integer = integer_pick(rows, passing)
    if integer:
        picks["integer"] = integer
    return picks


def _is_integer(r):
    """An int8-weights file (the variant table's int8_weights): a candidate for the integer pick."""
    from export.variants import get

    return bool(get(r["variant"])) and get(r["variant"]).int8_weights


def integer_pick(rows, passing):
    """The integer file to use when int8 speed matters (a Pi, a phone), and what it costs against float.

    Of the integer files that pass, the one fastest at 1 thread (the device's case), with its speed against the
    float32 file of its own format, measured in the same benchmark; when none passes, the one closest to the
    gate and why it missed. {} when the run has no integer file."""
    measured = [r for r in rows if r["status"] == "ok" and _is_integer(r) and r["variant"] != QAT_SOURCE]
    if not measured:
        return {}
    floats = {r["format"]: r for r in rows if r["status"] == "ok" and r["precision"] == "float32"
              and r["variant"] not in (REFERENCE, QAT_SOURCE)}
    ok = [r for r in passing if _is_integer(r)]
    if not ok:
        closest = max(measured, key=lambda r: (r["agreement"], r["top1"]))
        return {"variant": None, "closest": closest["variant"],
                "why": f"no integer file passes the gate; the closest is `{closest['variant']}` "
                       f"(agreement {closest['agreement']:.3f}, top-1 {closest['top1_change_points']:+.1f} pts)"}
    r = min(ok, key=lambda r: (r["p50_ms_1thread"], r["p50_ms"], r["size_mb"]))
    pick = {"variant": r["variant"], "ops_kept_float": r.get("float_ops") or 0,
            "p50_ms_1thread": r["p50_ms_1thread"], "failing_integer": sorted(
                x["variant"] for x in measured if x["variant"] not in {p["variant"] for p in ok})}
    why = (f"p50 {r['p50_ms_1thread']:.2f} ms at 1 thread, "
           + (f"{pick['ops_kept_float']} ops kept float, " if "float_ops" in r else "")
           + f"agreement {r['agreement']:.3f}")
    base = floats.get(r["format"])
    if base:
        pick.update(float_variant=base["variant"], float_p50_ms_1thread=base["p50_ms_1thread"],
                    speedup_vs_float=base["p50_ms_1thread"] / r["p50_ms_1thread"])
        why += (f"; `{base['variant']}` takes {base['p50_ms_1thread']:.2f} ms, so the integer file runs "
                f"{pick['speedup_vs_float']:.2f}× its speed on this machine")
    pick["why"] = why
    return pick
