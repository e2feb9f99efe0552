"""The decision a model's probabilities lead to: calibrated confidence, then a class or "unknown".

Export fits both on the validation split and writes them to the manifest ("decision"); every file of a run,
on every backend, is judged by the same rule, applied here to its output probabilities. The rule lives in
the manifest rather than in each graph because one float multiply before an int8 softmax would change the
integer files' own quantization (and their parity, already measured), while a rule applied after the
output is identical whichever backend ran the file. Calibration from probabilities is exact: a softmax's
log-probabilities are its logits less one constant per image, so softmax(log(p) / T) is softmax(z / T).

    confidence = max(calibrated probabilities);  answer the top class if confidence >= threshold, else "unknown"
"""
from dataclasses import asdict, dataclass

import numpy as np

from .errors import InputError

DECISION_VERSION = 1
UNKNOWN = "unknown"
FLOOR = 1e-12  # an int8 softmax outputs exact zeros; log(0) would make every calibration of them -inf


@dataclass(frozen=True)
class Rule:
    temperature: float = 1.0  # > 1 softens over-confident probabilities
    threshold: float = 0.0  # least calibrated top probability answered with a class; 0 never abstains
    review_below: float = 0.0  # answers less confident than this are listed for review as well

    def calibrate(self, probs):
        """Probabilities (N, classes) -> calibrated probabilities (N, classes)."""
        probs = np.asarray(probs, np.float32)
        if self.temperature == 1.0:
            return probs
        z = np.log(np.clip(probs, FLOOR, 1.0)) / np.float32(self.temperature)
        z -= z.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=-1, keepdims=True)

    def decide(self, probs):
        """(class index or -1 for unknown, calibrated confidence) per row of raw probabilities."""
        cal = self.calibrate(probs)
        conf = cal.max(axis=-1)
        return np.where(conf >= self.threshold, cal.argmax(axis=-1), -1), conf

    def as_dict(self):
        return dict(asdict(self), version=DECISION_VERSION)

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
