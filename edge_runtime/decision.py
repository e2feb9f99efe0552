"""The decision a model's probabilities lead to: calibrated confidence, then a class or "unknown".

Export fits both on the validation split and writes them to the manifest ("decision"); every file of a run,
on every backend, is judged by the same rule, applied here to its output probabilities. The rule lives in
the manifest rather than in each graph because one float multiply before an int8 softmax would change the
integer files' own quantization (and their parity, already measured), while a rule applied after the
output is identical whichever backend ran the file.

Calibration is top-label temperature scaling: the top probability's odds are divided by T (in log space),
    confidence = sigmoid(logit(p_top) / T),
and the other classes share 1 - confidence in their own proportions. It depends on the top probability alone.
Temperature scaling of the whole softmax, softmax(log p / T), was tried first: with T > 1 it raises every small
probability, so the confidence came to depend on the tail of the distribution, which integer files round to
zero; on the demo, files within 0.007 of Keras's top probability were 0.07 apart in confidence, and 3 to 8 of
144 test images were decided otherwise. Here a file decides otherwise only where its top probability itself
differs across the threshold. The decision:
    answer the top class if confidence >= threshold, else "unknown"
which is the same as p_top >= raw_threshold(), for a runtime that reads raw scores (MediaPipe).
"""
from dataclasses import asdict, dataclass

import numpy as np

from .errors import InputError

DECISION_VERSION = 1
UNKNOWN = "unknown"
EDGE = 1e-7  # probabilities of exactly 0 or 1 (an int8 softmax outputs them) kept off the logit's infinities


@dataclass(frozen=True)
class Rule:
    temperature: float = 1.0  # > 1 softens over-confident probabilities
    threshold: float = 0.0  # least calibrated top probability answered with a class; 0 never abstains
    review_below: float = 0.0  # answers less confident than this are listed for review as well

    def confidence(self, top):
        """Calibrated confidence of top probabilities: sigmoid(logit(p) / T)."""
        p = np.clip(np.asarray(top, np.float64), EDGE, 1 - EDGE)
        if self.temperature == 1.0:
            return np.asarray(top, np.float64)
        return 1.0 / (1.0 + np.exp(-(np.log(p) - np.log1p(-p)) / self.temperature))

    def raw_threshold(self):
        """The top probability at which the calibrated confidence reaches the threshold."""
        t = min(max(self.threshold, EDGE), 1 - EDGE)
        z = (np.log(t) - np.log1p(-t)) * self.temperature
        return 0.0 if self.threshold <= 0 else float(1.0 / (1.0 + np.exp(-z)))

    def _confidence(self, probs):
        """Calibrated confidence of each row, never below the value at which the runner-up would overtake the top
        class (T < 1 lowers a top probability under 1/2): the ranking never changes. That floor is under 1/2, so
        for thresholds of 1/2 and more the decision is the top probability against raw_threshold()."""
        if self.temperature == 1.0:
            return probs.max(axis=-1).astype(np.float64)
        two = np.sort(probs, axis=-1)[:, -2:].astype(np.float64) if probs.shape[-1] > 1 else np.c_[
            np.zeros(len(probs)), probs[:, -1]]
        p1, p2 = two[:, 1], two[:, 0]
        return np.maximum(self.confidence(p1), np.divide(p2, 1.0 - p1 + p2, out=np.zeros_like(p2),
                                                          where=(1.0 - p1 + p2) > 0))

    def calibrate(self, probs):
        """Probabilities (N, classes) -> calibrated probabilities (N, classes): the top class's confidence, and the
        rest of the mass shared by the other classes in their own proportions."""
        probs = np.asarray(probs, np.float32)
        if self.temperature == 1.0:
            return probs
        rows, top = np.arange(len(probs)), probs.argmax(axis=-1)
        p = probs[rows, top].astype(np.float64)
        conf = self._confidence(probs)
        rest = 1.0 - p
        k = probs.shape[-1]
        scale = np.divide(1.0 - conf, rest, out=np.zeros_like(rest), where=rest > EDGE)
        out = probs.astype(np.float64) * scale[:, None]
        flat = rest <= EDGE  # every other probability 0: their share split evenly
        out[flat] = ((1.0 - conf[flat]) / max(k - 1, 1))[:, None]
        out[rows, top] = conf
        return out.astype(np.float32)

    def decide(self, probs):
        """(class index or -1 for unknown, calibrated confidence) per row of raw probabilities."""
        probs = np.asarray(probs, np.float32)
        conf = self._confidence(probs).astype(np.float32)  # compared as calibrate() reports it
        return np.where(conf >= self.threshold, probs.argmax(axis=-1), -1), conf

    def as_dict(self):
        return dict(asdict(self), version=DECISION_VERSION, raw_threshold=self.raw_threshold())

    @classmethod
    def from_record(cls, record):
        """The rule of a manifest's "decision" entry; no entry: the identity (no calibration, never unknown)."""
        if not record:
            return cls()
        if not isinstance(record, dict) or record.get("version") != DECISION_VERSION:
            version = record.get("version") if isinstance(record, dict) else record
            raise InputError(f"unsupported decision rule version {version!r}: this runtime knows version "
                             f"{DECISION_VERSION}; update edgeclf-runtime")
        try:
            rule = cls(float(record["temperature"]), float(record["threshold"]), float(record.get("review_below", 0.0)))
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"malformed decision rule {record!r} ({e})") from None
        if not (rule.temperature > 0 and 0 <= rule.threshold <= 1 and 0 <= rule.review_below <= 1):
            raise InputError(f"decision rule out of range: {record!r}")
        return rule


class Prediction(list):
    """Top-k [(label, calibrated probability), ...], highest first, with the decision: `label` is the top class
    or "unknown" when the confidence is under the rule's threshold; `review` marks an answer to look at
    (unknown, or answered with less than the rule's review_below)."""

    def __init__(self, ranked, label, confidence, review):
        super().__init__(ranked)
        self.label, self.confidence, self.review = label, float(confidence), bool(review)

    @property
    def unknown(self):
        return self.label == UNKNOWN

    def as_dict(self, digits=None):
        def r(p):
            return round(p, digits) if digits is not None else p

        return {"label": self.label, "confidence": r(self.confidence), "unknown": self.unknown, "review": self.review,
                "top_k": [{"label": l, "probability": r(p)} for l, p in self]}
