"""Does this machine reproduce the build machine's outputs? Each shipped file is run on the bundle's
reference images and compared with the probabilities recorded where the bundle was built.

The tolerances below are the only statement of how close is close enough; `make pi-check` uses them too.
"""
from pathlib import Path

import numpy as np

from .bundle import Bundle
from .classifier import Classifier
from .errors import InputError
from .preprocess import load_pixels

# Float kernels sum in another order on NEON than on AVX: a few float32 ulps of a probability.
FLOAT_TOLERANCE = 1e-4
# Integer kernels may round a requantization the other way: a number of steps of the output's scale.
# XNNPACK's integer kernels requantize the same way on ARM and x86, so TFLite gets one step. ONNX
# Runtime's ARM and x86 int8 kernels round differently, and a one-step difference inside the network
# can grow on its way out, so ONNX gets four (docs/deploy.md has what was measured).
OUTPUT_STEPS = {"tflite": 1, "onnx": 4}
# The reference images decode to the host's pixels exactly: same Pillow, same libjpeg-turbo, integer
# resampling. A difference means this machine's image stack is not the one the bundle pins.
PIXEL_TOLERANCE = 0


def tolerance(fmt, kind, output_scale):
    """(largest allowed |Δp|, what it is) for a file of this format and kind ('integer' or 'float')."""
    if kind != "integer":
        return FLOAT_TOLERANCE, "float32"
    steps = OUTPUT_STEPS[fmt]
    step = output_scale or 1 / 255  # the file's own uint8 output scale, or a uint8 step of the softmax's 0..1
    return step * steps * 1.0001, f"{steps} output quantization step(s)"


def compare(probs, reference, tol):
    """Per-image figures and whether every image keeps its top-1 and stays within tol."""
    diff = np.abs(np.asarray(probs, np.float64) - np.asarray(reference, np.float64)).max(axis=1)
    same = probs.argmax(1) == reference.argmax(1)
    return {"images": int(len(diff)), "same_top1": int(same.sum()), "max_abs_prob_diff": float(diff.max(initial=0)),
            "within": int(np.sum(diff <= tol)), "worst_image": int(diff.argmax()) if len(diff) else None,
            "per_image": diff.tolist(), "passed": bool(same.all() and diff.max(initial=0) <= tol)}


def decisions(rule, probs, reference, tol):
    """The bundle's decision rule (a class or "unknown") on this machine's outputs against the build machine's:
    images with another decision, except those whose confidence sits within the tolerance of the threshold."""
    mine, _ = rule.decide(probs)
    theirs, conf = rule.decide(reference)
    same = mine == theirs
    edge = ~same & (np.abs(conf - rule.threshold) <= 2 * tol)
    return {"same_decisions": int(same.sum()), "at_threshold": int(edge.sum())}


def check_file(bundle, variant, ref):
    """One candidate's result: {"variant", "passed", "line", ...}; a file that will not load fails, it does not raise."""
    fmt = bundle.entry(variant)["format"]
    try:
        clf = Classifier(bundle.model_path(variant), threads=1, settings={})  # the settings the reference used
        probs = clf.probabilities(ref["pixels"])
    except InputError as e:
        return {"variant": variant, "passed": False, "error": str(e), "line": f"FAIL  {variant}: {e}"}
    expected = ref["probabilities"].get(variant)
    if expected is None:
        return {"variant": variant, "passed": False, "error": "no reference outputs",
                "line": f"FAIL  {variant}: the bundle holds no reference outputs for it"}
    tol, what = tolerance(fmt, bundle.kind(variant), clf.output.scale if clf.output.quantized else None)
    r = compare(probs, expected, tol)
    r.update(decisions(clf.rule, probs, expected, tol))
    r["passed"] = r["passed"] and r["same_decisions"] + r["at_threshold"] == r["images"]
    r.update(variant=variant, tolerance=tol, tolerance_kind=what, probabilities=probs.tolist())
    figures = (f"{r['same_top1']}/{r['images']} same top-1, {r['same_decisions']}/{r['images']} same decisions, "
               f"max |Δp| {r['max_abs_prob_diff']:.2e}"
               f" (tolerance {tol:.2e}, {what})")
    if r["passed"]:
        r["line"] = f"ok    {variant}: {figures}"
    else:
        worst = ref["images"][r["worst_image"]]["file"]
        r["line"] = (f"FAIL  {variant}: {r['images'] - r['within']} of {r['images']} images beyond tolerance or with "
                     f"another top-1 or decision; {figures}; worst {worst}")
    return r


def check_decoding(ref):
    """The reference image files through this machine's decoder and resize, against the host's pixels."""
    size = ref["pixels"].shape[1:3]
    try:
        mine = np.stack([load_pixels(ref["folder"] / img["file"], size, ref.get("fit", "squash")) for img in ref["images"]])
    except InputError as e:
        return {"variant": "decode", "passed": False, "error": str(e), "line": f"FAIL  decode: {e}"}
    diff = np.abs(mine.astype(np.int16) - ref["pixels"].astype(np.int16))
    worst = int(diff.max(initial=0))
    ok = worst <= PIXEL_TOLERANCE
    line = (f"ok    decode: {len(mine)} reference images decode and resize to the build machine's pixels exactly"
            if ok else f"FAIL  decode: {int(np.sum(diff.reshape(len(mine), -1).max(1) > PIXEL_TOLERANCE))} of "
            f"{len(mine)} reference images decode to other pixels (largest difference {worst} levels): this machine's "
            f"Pillow or libjpeg differs from the bundle's")
    return {"variant": "decode", "passed": ok, "max_pixel_diff": worst, "line": line}


def check_integrity(bundle, expect=None):
    """Every file the bundle holds against the checksum its manifest records (which must be there), and the
    manifest itself against `expect`, the checksum printed where the bundle was built."""
    from .files import MANIFEST, sha256_file

    problems = []
    actual = sha256_file(bundle.path / MANIFEST)
    if expect and actual != expect.strip().lower():
        problems.append(f"{MANIFEST} is not the one built (sha256 {actual[:12]}..., expected {expect.strip()[:12]}...)")
    files = (bundle.manifest.get("bundle") or {}).get("files")
    if not isinstance(files, dict) or not files:
        problems.append(f"{MANIFEST} records no checksums of the bundle's files (rebuild it with `make bundle`)")
        files = {}
    for variant in bundle.candidates:
        if not bundle.entry(variant).get("sha256"):
            problems.append(f"{variant} has no sha256 in {MANIFEST}")
    root = bundle.path.resolve()
    for name, digest in sorted(files.items()):
        path = (bundle.path / name).resolve()
        if Path(name).is_absolute() or ".." in Path(name).parts or not path.is_relative_to(root):
            problems.append(f"{name!r} points outside the bundle")
        elif not path.is_file():
            problems.append(f"{name} is missing")
        elif sha256_file(path) != digest:
            problems.append(f"{name} changed since the bundle was built")
    line = (f"ok    files: {len(files)} files match the manifest's checksums" + (", and the manifest the one built"
                                                                                   if expect else "")
            if not problems else f"FAIL  files: {'; '.join(problems[:3])}"
            + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""))
    return {"variant": "files", "passed": not problems, "problems": problems, "manifest_sha256": actual, "line": line}


def run(bundle_dir=".", variants=None, expect=None):
    """{"passed": bool, "integrity": the files' check, "results": [decode, then each candidate]}."""
    bundle = Bundle(bundle_dir)
    integrity = check_integrity(bundle, expect)
    if not integrity["passed"]:  # an altered bundle is not run at all
        return {"passed": False, "integrity": integrity, "images": [], "recorded_on": None, "results": []}
    ref = bundle.reference()
    names = variants or bundle.candidates
    results = [check_decoding(ref)] + [check_file(bundle, v, ref) for v in names]
    return {"passed": all(r["passed"] for r in results), "integrity": integrity,
            "images": [i["file"] for i in ref["images"]], "recorded_on": ref.get("recorded_on"), "results": results}
