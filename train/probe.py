"""Phase 1 as a convex problem: the head fitted to convergence on the frozen backbone's features.

With the backbone frozen, its pooled features never change, so they are computed once per
image and the dense softmax head is a multinomial logistic regression on them. L-BFGS solves
that to convergence in seconds, for every regularisation strength on a grid; the validation
split picks the strength. Epochs of SGD on the same problem stopped long before this optimum.
"""
import time

import numpy as np

from .model import HEAD

# Inverse regularisation strengths tried; the validation log-loss chooses among them.
C_GRID = tuple(float(c) for c in np.logspace(-3, 2, 11))


def features(model, ds):
    """Pooled backbone features (N, D) of every image in the dataset, in order, and its labels."""
    from runlib.tf_setup import import_keras
    keras = import_keras()

    extractor = keras.Model(model.input, model.get_layer(HEAD[0]).output)
    xs, ys = [], []
    for x, y in ds:
        xs.append(extractor(x, training=False).numpy())
        ys.append(y.numpy())
    return np.concatenate(xs).astype(np.float64), np.concatenate(ys)


def _log_loss(probs, y, weights):
    p = np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0)
    return float(np.sum(weights * -np.log(p)) / np.sum(weights))


def fit_head(train, val, class_weight, num_classes, grid=C_GRID, log=print):
    """Fit softmax regression on the features for every C; pick the best on validation.

    train, val: (features, labels). Returns (kernel (D, K), bias (K,), history rows, chosen row).
    """
    from sklearn.linear_model import LogisticRegression

    (xt, yt), (xv, yv) = train, val
    # Standardised for L-BFGS's sake, but no feature is scaled up by more than the median one:
    # dividing by a near-dead channel's tiny spread blew its weight up, and one outlier weight sets
    # the int8 scale of the whole head (docs/training.md).
    mu, spread = xt.mean(0), xt.std(0)
    sigma = np.maximum(spread, np.median(spread)) + 1e-6
    zt, zv = (xt - mu) / sigma, (xv - mu) / sigma
    cw = {int(k): float(v) for k, v in class_weight.items()} if class_weight else None
    wt = np.array([cw[int(c)] for c in yt]) if cw else np.ones(len(yt))
    wv = np.array([cw[int(c)] for c in yv]) if cw else np.ones(len(yv))
    rows, fits = [], []
    for i, c in enumerate(grid, 1):
        t0 = time.time()
        clf = LogisticRegression(C=c, max_iter=3000, class_weight=cw, tol=1e-6)
        clf.fit(zt, yt)
        coef, icpt = _full(clf, num_classes, zt.shape[1])
        pt, pv = _softmax(zt @ coef.T + icpt), _softmax(zv @ coef.T + icpt)
        row = {"phase": 1, "epoch": i, "C": c, "iterations": int(np.max(clf.n_iter_)),
               "converged": bool(np.max(clf.n_iter_) < clf.max_iter),
               "loss": _log_loss(pt, yt, wt), "accuracy": float(np.mean(pt.argmax(1) == yt)),
               "val_loss": _log_loss(pv, yv, wv) if len(yv) else None,
               "val_accuracy": float(np.mean(pv.argmax(1) == yv)) if len(yv) else None,
               "seconds": round(time.time() - t0, 2)}
        rows.append(row)
        fits.append((coef, icpt))
        log(f"  probe C={c:.3g}: train loss {row['loss']:.3f} acc {row['accuracy']:.3f}"
            + (f", val loss {row['val_loss']:.3f} acc {row['val_accuracy']:.3f}" if len(yv) else "")
            + f" ({row['iterations']} L-BFGS iterations{'' if row['converged'] else ', NOT converged'})")
    key = "val_loss" if len(yv) else "loss"
    best = min(range(len(rows)), key=lambda i: rows[i][key])
    coef, icpt = fits[best]
    kernel = (coef / sigma).T  # (D, K): the standardisation folded in, so the head takes raw features
    bias = icpt - (mu / sigma) @ coef.T
    return kernel.astype(np.float32), bias.astype(np.float32), rows, rows[best]


def _full(clf, num_classes, dim):
    """coef (K, D) and intercept (K,) for every class, also ones absent from training."""
    coef = np.zeros((num_classes, dim))
    icpt = np.full(num_classes, -30.0)  # a class never seen in training is never predicted
    if len(clf.classes_) == 2 and clf.coef_.shape[0] == 1:  # binary: sklearn keeps one row
        coef[clf.classes_[1]], icpt[clf.classes_[1]] = clf.coef_[0] / 2, clf.intercept_[0] / 2
        coef[clf.classes_[0]], icpt[clf.classes_[0]] = -clf.coef_[0] / 2, -clf.intercept_[0] / 2
    else:
        coef[clf.classes_], icpt[clf.classes_] = clf.coef_, clf.intercept_
    return coef, icpt


def _softmax(z):
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)
