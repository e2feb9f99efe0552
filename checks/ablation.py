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
    a = p.parse_args(argv)
    seeds = [int(s) for s in a.seeds.split(",")]
    chosen = [c for c in CHOICES if not a.only or c[0] in a.only.split(",")]
    out = Path("runs") / "ablation" / a.tag

    def body():
        results = []
        for name, what, flags in chosen:
            t0 = time.time()
            tests = [run_one(a.data, out / f"{name}-s{s}", s, flags, common) for s in seeds]
            row = {"name": name, "change": what, "flags": flags, "seeds": seeds,
                   "top1": stats([t["top1"] for t in tests]), "macro_f1": stats([t["macro_f1"] for t in tests]),
                   "test_images": tests[0]["n"], "seconds": round(time.time() - t0),
                   "train_seconds": stats([t["seconds"] for t in tests]) if all(t["seconds"] for t in tests) else None}
            results.append(row)
            print(f"[ablation] {name}: top-1 {row['top1']['mean']:.3f} ± {row['top1']['std']:.3f}", flush=True)
        write_json(out / "ablation.json", {"command": command, "common": common, "rows": results})
        lines = [f"Command: `{command}`", "", f"Test top-1 and macro-F1 over seeds {a.seeds} "
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
        write_text(out / "ablation.md", "\n".join(lines) + "\n")
        print("\n".join(lines))

    return exit_code(body)


if __name__ == "__main__":
    sys.exit(main())
