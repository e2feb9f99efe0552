"""Classifier: an exported model plus its labels and preprocessing contract, behind one predict()."""
import json
import threading
from pathlib import Path

import numpy as np

from .backends import open_backend
from .decision import UNKNOWN, Prediction, Rule
from .errors import InputError
from .files import MANIFEST, read_manifest, sha256_file
from .preprocess import check_contract, load_pixels

LABELS = "labels.txt"
BATCH = 16  # images decoded and run at a time by predict() and stream()


def _check_top_k(top_k):
    if int(top_k) < 1:
        raise InputError(f"top_k must be at least 1, got {top_k}")


def find_manifest_entry(model_path):
    """(variant name, entry, manifest) describing model_path in a manifest.json beside it, or Nones."""
    manifest = read_manifest(model_path.parent, missing_ok=True)
    if not manifest:
        return None, None, None
    for name, entry in manifest.get("variants", {}).items():
        if entry.get("file") == model_path.name:
            return name, entry, manifest
    return None, None, manifest


def tuned_settings(variant, manifest):
    """(settings, where they came from): the benchmark's fastest for this machine's kind of CPU, else defaults."""
    from .machine import signature

    tuned = ((manifest or {}).get("runtime_settings") or {}).get(variant or "")
    if not tuned:
        return {}, "library defaults (none measured)"
    if tuned.get("machine") != signature():
        return {}, "library defaults (measured on another kind of CPU)"
    return dict(tuned["settings"]), "fastest measured on this kind of CPU"


class Classifier:
    """Loads a .tflite or .onnx model and classifies images the way training saw them.

    labels: a list, a path to labels.txt, or None to use labels.txt beside the model.
    verify: check the model's SHA-256 against the manifest beside it, when there is one.
    settings: runtime settings (backends.SETTINGS). None: the fastest ones `make benchmark` recorded in
        the manifest, when it measured them on a machine like this one (same architecture and CPU
        flags); otherwise the library defaults. {} forces the library defaults.
    decision: a decision.Rule (calibration and abstention). None: the manifest's, when it has one; else
        probabilities as the file outputs them and never "unknown".
    """

    def __init__(self, model, labels=None, threads=None, verify=True, settings=None, decision=None):
        self.path = Path(model)
        self.variant, self.entry, manifest = None, None, None
        if self.path.is_file():
            self.variant, self.entry, manifest = find_manifest_entry(self.path)
        if verify and self.entry and not self.entry.get("sha256"):
            raise InputError(f"{self.path}: {MANIFEST} describes it without a sha256, so it cannot be verified")
        if verify and self.entry:
            actual = sha256_file(self.path)
            if actual != self.entry["sha256"]:
                raise InputError(f"{self.path}: checksum mismatch with {MANIFEST} "
                                 f"(expected {self.entry['sha256'][:12]}..., got {actual[:12]}...): file changed or corrupt")
        self.settings: dict
        self.settings_source: str
        self.settings, self.settings_source = tuned_settings(self.variant, manifest) if settings is None else (
            dict(settings), "given")
        self.backend = open_backend(self.path, threads, self.settings)
        self.input, self.output = self.backend.input, self.backend.output
        shape = self.input.shape
        if len(shape) != 4 or shape[-1] != 3:
            raise InputError(f"{self.path}: expected an image input of shape [batch, height, width, 3], got {shape}")
        if manifest and manifest.get("preprocessing"):
            self.size, self.fit = check_contract(manifest["preprocessing"])
        else:
            self.size, self.fit = (int(shape[1]), int(shape[2])), "squash"
        if self.size != (shape[1], shape[2]):
            raise InputError(f"{self.path}: model input is {shape[1]}x{shape[2]} but the manifest says {self.size}")
        self.num_classes = int(self.output.shape[-1])
        self.labels = self._labels(labels, manifest)
        self.manifest = manifest
        self.rule = Rule.from_record((manifest or {}).get("decision")) if decision is None else decision
        self._local = threading.local()  # each thread's own input buffer: one instance may serve many threads

    def _labels(self, labels, manifest):
        source = "argument"
        if labels is None:
            beside = self.path.parent / LABELS
            if beside.is_file():
                labels, source = beside, str(beside)
            elif getattr(self.backend, "metadata", {}).get("labels"):
                labels, source = json.loads(self.backend.metadata["labels"]), "ONNX metadata"
            elif manifest and manifest.get("classes"):
                labels, source = manifest["classes"], MANIFEST
            else:
                return [str(i) for i in range(self.num_classes)]
        if isinstance(labels, (str, Path)):
            p = Path(labels)
            if not p.is_file():
                raise InputError(f"{p}: no such labels file")
            labels, source = [l.strip() for l in p.read_text(encoding="utf-8").splitlines() if l.strip()], str(p)
        labels = list(labels)
        if len(labels) != self.num_classes:
            raise InputError(f"labels from {source} list {len(labels)} classes "
                             f"but {self.path.name} outputs {self.num_classes}")
        return labels

    # ---- the numeric core: pixels in, probabilities out
    def quantize(self, pixels):
        """uint8 pixels -> the model's input tensor (its own scale and zero point for integer inputs)."""
        spec = self.input
        pixels = np.asarray(pixels)
        if spec.quantized and pixels.dtype == spec.dtype and spec.scale == 1.0 and spec.zero_point == 0:
            return pixels  # uint8 pixels are already the model's input (full-int8 exports): skip 4 array passes
        if spec.quantized:
            info = np.iinfo(spec.dtype)
            q = np.round(pixels.astype(np.float32) / spec.scale + spec.zero_point)
            return np.clip(q, info.min, info.max).astype(spec.dtype)
        return pixels.astype(spec.dtype)

    def dequantize(self, raw):
        """The model's raw output -> float32 probabilities summing to 1."""
        spec = self.output
        out = (raw.astype(np.float32) - spec.zero_point) * spec.scale if spec.quantized else np.asarray(raw, np.float32)
        total = out.sum(axis=-1, keepdims=True)  # an int8 softmax sums to 1 only within its step size
        if total.size and 0.0 < total.min() and total.max() < np.inf:  # the usual case (NaN fails both), faster
            return out / total
        probs = np.divide(out, total, out=np.full_like(out, 1.0 / out.shape[-1]), where=total > 0)
        probs[~np.isfinite(total[:, 0])] = np.nan  # a broken model's NaN must show, not become 1/classes
        return probs

    def probabilities(self, pixels):
        """uint8 pixels (N, H, W, 3) from load_pixels -> float32 probabilities (N, classes)."""
        pixels = np.asarray(pixels)
        if pixels.ndim == 3:
            pixels = pixels[None]
        return self.dequantize(self.backend.run(self._model_input(pixels)))

    def _model_input(self, pixels):
        """quantize(), but a float input is cast into a buffer kept between calls: a fresh 600 KB array
        per call was a measurable part of the runtime's cost on a 1 ms model. One buffer per thread, so
        threads sharing this instance never overwrite each other's input. Private: the buffer is
        overwritten by the same thread's next call, so it must not leave this class."""
        spec = self.input
        if spec.quantized or pixels.dtype == spec.dtype:
            return self.quantize(pixels)
        buf = getattr(self._local, "buffer", None)
        if buf is None or buf.shape != pixels.shape:
            buf = self._local.buffer = np.empty(pixels.shape, spec.dtype)
        np.copyto(buf, pixels, casting="unsafe")
        return buf

    def preprocess(self, images):
        return np.stack([load_pixels(img, self.size, self.fit) for img in images])

    def ranked(self, probs, k):
        """A Prediction of one row of the file's probabilities: top-k calibrated (label, probability), highest
        first (ties in class order), and the decision, a label or "unknown"."""
        cal = self.rule.calibrate(probs[None])[0]
        order = np.argsort(-cal, kind="stable")[: min(int(k), self.num_classes)]
        decided, conf = (v[0] for v in self.rule.decide(probs[None]))  # the rule's one decision, as every file's
        return Prediction([(self.labels[i], float(cal[i])) for i in order],
                          UNKNOWN if decided < 0 else self.labels[decided], float(conf),
                          decided < 0 or conf < self.rule.review_below)

    def predict(self, images, top_k=5, batch=BATCH):
        """A Prediction for one image, or a list of those for a list of images: top-k [(label, probability),
        ...] with .label (a class, or "unknown" under the rule's threshold), .confidence and .review.

        An image is a path, bytes, a PIL image or an HxWx3 array. A list is run `batch` images at a
        time, so memory does not grow with its length; an unreadable image raises InputError (use
        stream() to go on past it).
        """
        _check_top_k(top_k)
        if not isinstance(images, (list, tuple)):
            return self.ranked(self.probabilities(self.preprocess([images]))[0], top_k)
        results = []
        for i in range(0, len(images), batch):
            results += [self.ranked(p, top_k) for p in self.probabilities(self.preprocess(images[i : i + batch]))]
        return results

    def stream(self, images, top_k=5, batch=BATCH):
        """Yield (image, top-k, None) or (image, None, error message) for each image, in order, reading
        `batch` images at a time: a bad image is reported on its own and the rest go on."""
        _check_top_k(top_k)
        pending: list = []

        def flush():
            good = [(img, px) for img, px in pending if not isinstance(px, str)]
            probs = iter(self.probabilities(np.stack([px for _, px in good]))) if good else iter(())
            for img, px in pending:
                yield (img, None, px) if isinstance(px, str) else (img, self.ranked(next(probs), top_k), None)
            pending.clear()

        for img in images:
            try:
                pending.append((img, load_pixels(img, self.size, self.fit)))
            except InputError as e:
                pending.append((img, str(e)))
            if len(pending) >= batch:
                yield from flush()
        yield from flush()

    def info(self):
        return {
            "model": str(self.path),
            "format": self.backend.format,
            "variant": self.variant,
            "bytes": self.path.stat().st_size,
            "sha256": sha256_file(self.path),
            "checksum_verified": bool(self.entry and self.entry.get("sha256")),
            "input": self.input.as_dict(),
            "output": self.output.as_dict(),
            "image_size": list(self.size),
            "fit": self.fit,
            "runtime_settings": self.settings,
            "runtime_settings_source": self.settings_source,
            "labels": self.labels,
            "decision": self.rule.as_dict(),
        }
