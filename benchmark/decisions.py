"""Each file's decisions under the run's rule (a class, or "unknown"), calibration, and the field check.

The rule (edge_runtime.decision.Rule) comes from the export manifest; every file is judged by it exactly as the
device applies it. A file's decisions are compared with the Keras model's on the test split, on --field photos
and on --unknown images; its calibration error on the test split with the Keras model's.
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.decision import Rule
from edge_runtime.preprocess import fit_of
from runlib.field import UNKNOWN, half, pixels_of, read_field, read_unknown
from runlib.metrics import wilson_interval
from runlib.selective import auroc, ece, nll, reliability, risk_coverage, selective

FAR_BELOW = 0.10  # field top-1 this far under test top-1 draws the headline's warning


def rule_of(run):
    return Rule.from_record((run.manifest() or {}).get("decision"))


@dataclass
class Outside:
    """Photos from outside the run's split: pixels, labels (UNKNOWN for a species not to name), where each came
    from ("field" or "unknown") and, for field photos, its fixed half."""
    pixels: np.ndarray
    y: np.ndarray
    source: np.ndarray
    halves: np.ndarray
    meta: dict


def outside_set(run, config, log):
    """The --field and --unknown photos (the unknown folder export tuned on by default), or None."""
    cfg = run.config()
    size, fit = tuple(cfg["image_size"]), fit_of(cfg)
    tuned_on = ((run.manifest() or {}).get("decision") or {}).get("unknown_folder")
    unknown_dir = config.unknown or tuned_on
    parts, meta = [], {}
    if config.field:
        photos = read_field(config.field, run.class_names())
        pixels, kept = pixels_of(photos, size, fit, "--field", log)
        parts.append((pixels, [photos.labels[i] for i in kept], [half(photos, photos.paths[i]) for i in kept], "field"))
        meta["field"] = {"folder": str(config.field), "known_folders": photos.known_folders,
                         "unknown_folders": photos.unknown_folders, "images": len(kept)}
    if unknown_dir:
        photos = read_unknown(unknown_dir)
        pixels, kept = pixels_of(photos, size, fit, "--unknown", log)
        parts.append((pixels, [UNKNOWN] * len(kept), ["-"] * len(kept), "unknown"))
        meta["unknown"] = {"folder": str(unknown_dir), "images": len(kept),
                           "export_tuned_the_rule_on_it": bool(tuned_on) and Path(unknown_dir).resolve() == Path(tuned_on)}
    if not parts:
        return None
    return Outside(np.concatenate([p[0] for p in parts]), np.concatenate([np.asarray(p[1], int) for p in parts]),
                   np.concatenate([[p[3]] * len(p[1]) for p in parts]), np.concatenate([np.asarray(p[2]) for p in parts]),
                   meta)


def _agreement(mine, theirs):
    same = int(np.sum(mine == theirs))
    return {"agreement": same / len(mine) if len(mine) else None, "agreement_ci": wilson_interval(same, len(mine)),
            "images": int(len(mine))}


def figures(rule, y, own, keras, outside=None, outside_probs=(None, None)):
    """One file's calibration and decision figures (keras None: this is the Keras model); outside_probs: this
    file's and the Keras model's probabilities on the Outside photos."""
    own_outside, keras_outside = outside_probs
    cal = rule.calibrate(own)
    dec, conf = rule.decide(own)
    out = {"calibration": {"ece_raw": ece(y, own), "ece": ece(y, cal), "nll_raw": nll(y, own), "nll": nll(y, cal),
                           "reliability_raw": reliability(y, own), "reliability": reliability(y, cal)},
           "test": selective(y, cal, dec >= 0)}
    if keras is not None:
        out["test"].update(_agreement(dec, rule.decide(keras)[0]))
    if outside is None:
        return out
    odec, oconf = rule.decide(own_outside)
    ocal = rule.calibrate(own_outside)
    kdec = rule.decide(keras_outside)[0] if keras_outside is not None else None
    for source in ("field", "unknown"):
        m = outside.source == source
        if not m.any():
            continue
        part = selective(outside.y[m], ocal[m], odec[m] >= 0)
        if source == "field":
            known = outside.y[m] >= 0
            part["auroc"] = auroc(oconf[m][known], oconf[m][~known])
            cov, acc = risk_coverage(outside.y[m][known], ocal[m][known])
            pick = np.unique(np.linspace(0, len(cov) - 1, min(len(cov), 60)).astype(int)) if len(cov) else []
            part["risk_coverage"] = [[float(cov[i]), float(acc[i])] for i in pick]
            hold = m & (outside.halves == "holdout")
            part["holdout"] = selective(outside.y[hold], ocal[hold], odec[hold] >= 0)
            part["holdout"]["auroc"] = auroc(oconf[hold & (outside.y >= 0)], oconf[hold & (outside.y < 0)])
        if kdec is not None:
            part.update(_agreement(odec[m], kdec[m]))
        out[source] = part
    return out


def misses(row, keras_row, min_agreement, max_ece_gap):
    """The gate's reasons from a file's decisions: agreement with Keras under the rule on each image set, and
    its calibration error against the Keras model's."""
    d, reasons = row.get("decisions") or {}, []
    for source in ("test", "field", "unknown"):
        a = (d.get(source) or {}).get("agreement")
        if a is not None and a < min_agreement - 1e-12:
            reasons.append(f"decision agreement {a:.3f} on {source} images < {min_agreement:g}")
    kd = (keras_row or {}).get("decisions") or {}
    if d.get("calibration") and kd.get("calibration"):
        gap = d["calibration"]["ece"] - kd["calibration"]["ece"]
        if gap > max_ece_gap + 1e-12:
            reasons.append(f"ECE {d['calibration']['ece']:.3f}, {gap:+.3f} against Keras (limit +{max_ece_gap:g})")
    return reasons


def gate_decisions(rows, failures, min_agreement, max_ece_gap):
    """Add each exported file's decision misses to the gate's failures ({variant: [reasons]})."""
    keras = next((r for r in rows if r["variant"] == "keras" and r["status"] == "ok"), None)
    for r in rows:
        if r["status"] != "ok" or r["variant"] in ("keras", "qat-source"):
            continue
        reasons = misses(r, keras, min_agreement, max_ece_gap)
        if reasons:
            failures.setdefault(r["variant"], []).extend(reasons)
    return failures


def field_warning(rows):
    """A line when the Keras model's field top-1 falls far below its test top-1, else None."""
    ref = next((r for r in rows if r.get("variant") == "keras" and r.get("status") == "ok"), None)
    field = ((ref or {}).get("decisions") or {}).get("field")
    if not field or field.get("top1") is None:
        return None
    gap = ref["top1"] - field["top1"]
    if gap < FAR_BELOW:
        return None
    return (f"warning: on the field photos the model's top-1 is {field['top1']:.3f} against {ref['top1']:.3f} on the "
            f"test split ({100 * gap:.0f} points lower): the test split shares its photo source with training, the "
            f"field does not; expect the field figure where the model is used")
