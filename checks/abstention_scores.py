"""python -m checks.abstention_scores --run RUN --field DIR: which score tells a known species from an unknown one?

Scores of the run's Keras model, each higher for "more likely a known class": the top softmax probability (what
the shipped rule thresholds), the margin between the top two, the top logit, the energy (logsumexp of the logits),
and two distances in the pooled feature space fitted on the training split: Mahalanobis to the nearest class mean
(one shared covariance) and cosine distance to the 10th nearest training image. Written: AUROC of each score on the
field folder's dev half (known species against species the model must not name), and on the Leeds test split
against the field's unknown species. Nothing here is fitted on the field photos.
"""
import argparse
import sys

import numpy as np

from edge_runtime.errors import exit_code


def pooled_and_logits(model, pixels, batch=64):
    from runlib.tf_setup import import_keras
    from train.model import HEAD

    keras = import_keras()
    pool = keras.Model(model.input, model.get_layer(HEAD[0]).output)
    kernel, bias = model.get_layer(HEAD[2]).get_weights()
    feats = np.concatenate([pool(pixels[i:i + batch].astype(np.float32), training=False).numpy()
                            for i in range(0, len(pixels), batch)]).astype(np.float64)
    return feats, feats @ kernel + bias


def scores(train, y_train, feats, logits):
    """{name: score per image}, higher meaning more likely one of the classes."""
    from scipy.special import logsumexp, softmax

    p = softmax(logits, axis=1)
    top2 = np.sort(p, axis=1)[:, -2:]
    classes = np.unique(y_train)
    means = np.stack([train[y_train == c].mean(0) for c in classes])
    centred = train - means[np.searchsorted(classes, y_train)]
    cov = centred.T @ centred / len(train) + 1e-3 * np.eye(train.shape[1])
    inv = np.linalg.inv(cov)
    d = np.stack([np.einsum("ij,jk,ik->i", feats - m, inv, feats - m) for m in means], 1)
    unit = train / np.linalg.norm(train, axis=1, keepdims=True)
    q = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    knn = np.sort(1 - q @ unit.T, axis=1)[:, min(9, len(train) - 1)]
    return {"max probability": p.max(1), "margin": top2[:, 1] - top2[:, 0], "max logit": logits.max(1),
            "energy": logsumexp(logits, axis=1), "Mahalanobis": -d.min(1), "kNN cosine (k=10)": -knn}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m checks.abstention_scores", description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--field", required=True)
    a = p.parse_args(argv)

    def body():
        from edge_runtime.preprocess import fit_of
        from runlib.field import half, pixels_of, read_field
        from runlib.run_folder import Run
        from runlib.selective import auroc
        from train.model import load_run_model

        run = Run(a.run)
        cfg = run.config()
        model = load_run_model(run)
        _, y_train, train_px = run.test_set("train")
        _, _, test_px = run.test_set("test")
        photos = read_field(a.field, run.class_names())
        field_px, kept = pixels_of(photos, cfg["image_size"], fit_of(cfg), "--field", print)
        y = np.array([photos.labels[i] for i in kept])
        dev = np.array([half(photos, photos.paths[i]) == "dev" for i in kept])
        train_f, _ = pooled_and_logits(model, train_px)
        out, logits = {}, {}
        for name, px in (("field", field_px), ("test", test_px)):
            feats, logits[name] = pooled_and_logits(model, px)
            out[name] = scores(train_f, y_train, feats, logits[name])
        print(f"run {run.path}; field {a.field} (dev half: {int((dev & (y >= 0)).sum())} known, "
              f"{int((dev & (y < 0)).sum())} unknown-species photos); test split {len(test_px)} images\n")
        print("| score | AUROC field known vs unknown (dev) | AUROC Leeds test vs field unknown (dev) |\n|---|---|---|")
        for name in out["field"]:
            f, t = out["field"][name], out["test"][name]
            print(f"| {name} | {auroc(f[dev & (y >= 0)], f[dev & (y < 0)]):.3f} | {auroc(t, f[dev & (y < 0)]):.3f} |")
        # the best any threshold on the top probability could do against the targets: one that answers exactly
        # 90% of the Leeds test images, chosen on the test split itself (an oracle, for this bound only)
        t = np.quantile(out["test"]["max probability"], 0.10)
        f = out["field"]["max probability"]
        right = logits["field"].argmax(1) == y
        answered = f >= t
        print(f"\nOracle bound: the top-probability threshold answering 90% of the Leeds test images ({t:.3f}) names "
              f"{answered[y < 0].mean():.1%} of the unknown-species photos and answers {answered[y >= 0].mean():.1%} "
              f"of the known-species field photos, {right[(y >= 0) & answered].mean():.1%} of those right (all halves).")

    return exit_code(body)


if __name__ == "__main__":
    sys.exit(main())
