"""python -m checks.ablation --data DIR [--seeds 0,1,2] [--only name,...] -- [options for every run]

Trains the default recipe and one change at a time, each over several seeds (the seed also
draws the split), and writes runs/ablation/<tag>/ablation.md and .json: test top-1 and
macro-F1 as mean and standard deviation over seeds. Finished runs are reused, so an
interrupted ablation picks up where it stopped.
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from edge_runtime.errors import exit_code
from edge_runtime.files import write_json, write_text

# (name, what it changes, extra flags). The first row is the default recipe.
CHOICES = (
    ("default", "the default recipe (with the options after --)", []),
    ("no-finetune", "phase 1 only (no phase 2)", ["--epochs-finetune", "0"]),
    ("sgd-head", "phase 1 as 10 epochs of Adam (lr 1e-3) instead of the converged probe",
     ["--head", "sgd", "--epochs-head", "10"]),
    ("train-bn", "phase 2 also trains BatchNorm", ["--train-bn"]),
    ("unfreeze-more", "phase 2 unfreezes from conv_dw_8 (mobilenet; the default since this ablation)",
     ["--unfreeze-from", "conv_dw_8"]),
    ("unfreeze-less", "phase 2 unfreezes from conv_dw_12 (mobilenet; the default before)",
     ["--unfreeze-from", "conv_dw_12"]),
    ("no-augment", "no augmentation", ["--augment", "0"]),
    ("lr-3e-4", "phase 2 learning rate 3e-4 instead of 1e-4", ["--lr-finetune", "3e-4"]),
    ("cosine", "phase 2 learning rate decays on a cosine to 1% instead of cutting 0.3x on a plateau",
     ["--schedule", "cosine"]),
    ("warmup", "phase 2 starts with a 2-epoch linear warm-up", ["--warmup-epochs", "2"]),
    ("fp32", "float32 arithmetic", ["--precision", "float32"]),
    ("bf16", "mixed_bfloat16 arithmetic (variables and the saved model float32)", ["--precision", "mixed_bfloat16"]),
    # photos from another source (--field): what carries beyond the training photos
    ("crop", "images fitted by a centre crop instead of squashed (the contract's fit)", ["--resize", "crop"]),
    ("field-augment", "field augmentation: random resized crops, brightness, colour, blur, noise",
     ["--augment-style", "field"]),
    ("crop+field-augment", "both of the above", ["--resize", "crop", "--augment-style", "field"]),
    ("smoothing", "label smoothing 0.1", ["--label-smoothing", "0.1"]),
    ("crop+field-augment+224", "crop, field augmentation and 224 px", ["--resize", "crop", "--augment-style", "field",
                                                                       "--image-size", "224"]),
    ("crop+field-augment+long", "crop, field augmentation and 20 fine-tuning epochs",
     ["--resize", "crop", "--augment-style", "field", "--epochs-finetune", "20"]),
    ("crop+no-finetune", "crop, phase 1 only", ["--resize", "crop", "--epochs-finetune", "0"]),
    ("224", "224 px", ["--image-size", "224"]),
    ("crop+224", "crop at 224 px", ["--resize", "crop", "--image-size", "224"]),
    ("crop+224+no-finetune", "crop at 224 px, phase 1 only", ["--resize", "crop", "--image-size", "224",
                                                             "--epochs-finetune", "0"]),
)


def stats(values):
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def run_one(data, run, seed, flags, common):
    """The run's test metrics, with "seconds": the wall time of its training command (kept beside it, so a
    reused run keeps the time it took)."""
    metrics, timed = run / "metrics.json", run / "ablation_seconds.json"
    if not metrics.exists():
        cmd = [sys.executable, "-m", "train", "--data", str(data), "--run", str(run), "--seed", str(seed), *common, *flags]
        print(f"[ablation] {' '.join(cmd[2:])}", flush=True)
        t0 = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{run}: training failed: {proc.stderr.strip().splitlines()[-1:]}")
        write_json(timed, {"seconds": round(time.time() - t0, 1)})
    seconds = json.loads(timed.read_text(encoding="utf-8"))["seconds"] if timed.exists() else None
    return dict(json.loads(metrics.read_text(encoding="utf-8"))["test"], seconds=seconds)


def field_figures(run, field):
    """The run's Keras model on a field folder (runlib.field), kept in run/field.json: top-1 on the known
    species in each fixed half, and the AUROC of the top probability, known against unknown species."""
    out = run / "field.json"
    if out.exists():
        return json.loads(out.read_text(encoding="utf-8"))
    import numpy as np

    from edge_runtime.preprocess import fit_of
    from runlib.field import half, pixels_of, read_field
    from runlib.run_folder import Run
    from runlib.selective import auroc
    from train.model import load_run_model

    r = Run(run)
    cfg = r.config()
    photos = read_field(field, r.class_names())
    model = load_run_model(r)
    pixels, kept = pixels_of(photos, cfg["image_size"], fit_of(cfg), "--field", print)
    probs = np.concatenate([model.predict(pixels[i:i + 64].astype(np.float32), verbose=0)
                            for i in range(0, len(pixels), 64)])
    y = np.array([photos.labels[i] for i in kept])
    halves = np.array([half(photos, photos.paths[i]) for i in kept])
    fig = {}
    for name in ("dev", "holdout"):
        m = (halves == name) & (y >= 0)
        fig[f"top1_{name}"] = float((probs[m].argmax(1) == y[m]).mean())
    fig["top1_all"] = float((probs[y >= 0].argmax(1) == y[y >= 0]).mean())
    fig["auroc_dev"] = auroc(probs[(y >= 0) & (halves == "dev")].max(1), probs[(y < 0) & (halves == "dev")].max(1))
    write_json(out, fig)
    return fig


def markdown(command, results, seeds, field):
    lines = [f"Command: `{command}`", "", f"Test top-1 and macro-F1 over seeds {seeds} "
             f"({results[0]['test_images']} test images per seed; the seed also draws the split).", "",
             "| choice | change | test top-1 (mean ± sd) | macro-F1 (mean ± sd) | per seed top-1 "
             "| training s (mean ± sd) |",
             "|---|---|---|---|---|---|"]
    for r in results:
        t = r["train_seconds"]
        lines.append(f"| {r['name']} | {r['change']} | {r['top1']['mean']:.3f} ± {r['top1']['std']:.3f} | "
                     f"{r['macro_f1']['mean']:.3f} ± {r['macro_f1']['std']:.3f} | "
                     + ", ".join(f"{v:.3f}" for v in r["top1"]["values"])
                     + (f" | {t['mean']:.0f} ± {t['std']:.0f} |" if t else " | — |"))
    if field:
        lines += ["", f"Field ({field}; the Keras model): top-1 on the known species of the fixed dev and holdout "
                  "halves (runlib.field.half), and the AUROC of the top probability, known against unknown species "
                  "(dev half); mean ± sd over the seeds.", "",
                  "| choice | field top-1 dev | field top-1 holdout | field AUROC dev | test top-1 |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['name']} | " + " | ".join(f"{r[k]['mean']:.3f} ± {r[k]['std']:.3f}" for k in
                  ("field_top1_dev", "field_top1_holdout", "field_auroc_dev", "top1")) + " |" for r in results]
    return "\n".join(lines) + "\n"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    command = "python -m checks.ablation " + " ".join(argv)
    common = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(prog="python -m checks.ablation", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--tag", default="leeds", help="runs/ablation/<tag>/")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--only", help="comma-separated subset of: " + ", ".join(c[0] for c in CHOICES))
    p.add_argument("--field", help="a field folder (runlib.field): each run's top-1 on its dev and holdout halves too")
    a = p.parse_args(argv)
    seeds = [int(s) for s in a.seeds.split(",")]
    chosen = [c for c in CHOICES if not a.only or c[0] in a.only.split(",")]
    out = Path("runs") / "ablation" / a.tag

    def body():
        results = []
        for name, what, flags in chosen:
            t0 = time.time()
            tests = [run_one(a.data, out / f"{name}-s{s}", s, flags, common) for s in seeds]
            fields = [field_figures(out / f"{name}-s{s}", a.field) for s in seeds] if a.field else []
            row = {"name": name, "change": what, "flags": flags, "seeds": seeds,
                   "top1": stats([t["top1"] for t in tests]), "macro_f1": stats([t["macro_f1"] for t in tests]),
                   "test_images": tests[0]["n"], "seconds": round(time.time() - t0),
                   "train_seconds": stats([t["seconds"] for t in tests]) if all(t["seconds"] for t in tests) else None}
            for key in ("top1_dev", "top1_holdout", "top1_all", "auroc_dev") if fields else ():
                row[f"field_{key}"] = stats([f[key] for f in fields])
            results.append(row)
            print(f"[ablation] {name}: top-1 {row['top1']['mean']:.3f} ± {row['top1']['std']:.3f}", flush=True)
        write_json(out / "ablation.json", {"command": command, "common": common, "rows": results})
        text = markdown(command, results, a.seeds, a.field)
        write_text(out / "ablation.md", text)
        print(text, end="")

    return exit_code(body)


if __name__ == "__main__":
    sys.exit(main())
