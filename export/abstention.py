"""The decision rule a run's files ship with (edge_runtime.decision.Rule), fitted on the validation split.

Temperature: top-label temperature scaling (edge_runtime/decision.py), the one scalar T minimising the negative
log-likelihood of "the top class is right" under confidence sigmoid(logit(p_top) / T) on the Keras model's
validation probabilities (the binary form of Guo et al., 2017's temperature scaling, for the top label that ECE
and the threshold read). One parameter cannot overfit a few hundred images, it never changes which class ranks
first, and it reads the top probability only, which integer files keep to a step of their output.

Threshold on the calibrated top probability:
  - without unknown examples: the highest threshold that still answers `coverage` of the validation images;
  - with `--unknown DIR` (images the model must not name): the lowest threshold that names at most
    `unknown_named` of them, but never one answering fewer than `min_coverage` of the validation images.
review_below: answers less confident than the least confident `review_share` of validation answers are flagged
for review as well. Test images and field photos are never used here.
"""
import numpy as np

from edge_runtime.decision import Rule
from runlib.selective import ece, nll

# T searched in 0.5..20: on a validation split the model gets all right the likelihood keeps rising as T falls
# (every confidence driven to 1), so the search stops at halving the log-odds.
LOG_T = np.linspace(np.log(0.5), np.log(20.0), 201)


def top_label_nll(right, top, t):
    conf = np.clip(Rule(float(t)).confidence(top), 1e-12, 1 - 1e-12)
    return float(-np.mean(np.where(right, np.log(conf), np.log1p(-conf))))


def fit_temperature(y, probs):
    """(T, top-label NLL at T=1, at T) on labelled probabilities; T=1 when there is nothing to fit on."""
    y = np.asarray(y)
    if not len(y):
        return 1.0, float("nan"), float("nan")
    probs = np.asarray(probs)
    right, top = probs.argmax(1) == y, probs.max(1)
    losses = [top_label_nll(right, top, np.exp(t)) for t in LOG_T]
    best = int(np.argmin(losses))
    lo, hi = LOG_T[max(best - 1, 0)], LOG_T[min(best + 1, len(LOG_T) - 1)]
    fine = np.linspace(lo, hi, 41)
    losses_fine = [top_label_nll(right, top, np.exp(t)) for t in fine]
    t = float(np.exp(fine[int(np.argmin(losses_fine))]))
    return t, top_label_nll(right, top, 1.0), float(min(losses_fine))


def answered_share(conf, t):
    return float(np.mean(conf >= t)) if len(conf) else 1.0


def threshold_for_coverage(conf, coverage):
    """The highest threshold answering at least `coverage` of the images with these confidences."""
    if not len(conf) or coverage <= 0:
        return 0.0
    ranked = np.sort(conf)[::-1]
    k = int(np.ceil(coverage * len(ranked) - 1e-9))  # images that must be answered
    return float(ranked[min(max(k, 1), len(ranked)) - 1])


def fit_rule(y_val, probs_val, config, probs_unknown=None):
    """(Rule, record for the manifest) from the Keras model's validation probabilities (and unknown images')."""
    t, nll_before, nll_after = fit_temperature(y_val, probs_val)
    rule = Rule(t)
    y_val = np.asarray(y_val)
    conf = rule.calibrate(probs_val).max(1) if len(y_val) else np.zeros(0)
    record = {"fitted_on": f"{len(y_val)} validation images (the Keras model's probabilities)",
              "calibration": {"method": "top-label temperature scaling", "temperature": t,
                              "validation_top_label_nll": [nll_before, nll_after],
                              "validation_nll": [nll(y_val, probs_val), nll(y_val, rule.calibrate(probs_val))],
                              "validation_ece": [ece(y_val, probs_val), ece(y_val, rule.calibrate(probs_val))]}}
    if not config.abstain:
        threshold, why = 0.0, "abstention off (--no-abstain): every image gets a class"
    elif probs_unknown is None or not len(probs_unknown):
        threshold = threshold_for_coverage(conf, config.coverage)
        why = f"the highest threshold answering at least {config.coverage:g} of the validation images"
    else:
        unk = rule.calibrate(probs_unknown).max(1)
        floor = threshold_for_coverage(conf, config.min_coverage)
        candidates = np.unique(np.r_[0.0, unk + 1e-7, conf])
        meeting = [c for c in candidates if c <= floor and answered_share(unk, c) <= config.unknown_named]
        threshold = float(min(meeting)) if meeting else floor
        why = (f"the lowest threshold naming at most {config.unknown_named:g} of {len(unk)} unknown images"
               if meeting else f"{len(unk)} unknown images: no threshold answering at least {config.min_coverage:g} "
               f"of the validation images names at most {config.unknown_named:g} of them; the threshold at that "
               f"coverage floor")
        record["unknown_images"] = {"images": int(len(unk)), "named_at_threshold": answered_share(unk, threshold)}
    answered = conf[conf >= threshold]
    review = threshold_for_coverage(answered, 1 - config.review_share) if len(answered) and config.review_share else 0.0
    rule = Rule(t, threshold, max(threshold, review))
    record.update(rule.as_dict(), threshold_rule=why, validation_coverage=answered_share(conf, threshold),
                  score="calibrated top probability")
    return rule, record
