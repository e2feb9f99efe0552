"""python -m checks.step_time [--backbone resnet50] [--image-size 224] [--batch 16] [--precision float32,mixed_bfloat16]

How long one training step and one inference batch take in each precision, on this machine: the step
training runs (Adam, sparse cross-entropy, the whole network trainable as with random weights), timed with
the benchmark's stopping rule (edge_runtime.timing) after two warm-up steps, on one fixed random batch. Each
precision is timed in a process of its own, so its graph and oneDNN's kernels are its own. Prints a Markdown
table with the machine's CPU flags; writes nothing.
"""
import argparse
import json
import subprocess
import sys

from edge_runtime.errors import InputError, exit_code


def measure(backbone, size, batch, precision, max_seconds):
    """{train step, inference}: p50 ms and its interval, in this process."""
    from edge_runtime.timing import latency

    from runlib.tf_setup import import_tensorflow

    import_tensorflow()
    import numpy as np
    from runlib.tf_setup import import_keras
    keras = import_keras()

    from train.model import build_model, compile_for_training, set_phase

    keras.mixed_precision.set_global_policy(precision)
    cfg = {"backbone": backbone, "alpha": 1.0, "weights": "none", "image_size": [size, size], "dropout": 0.2,
           "train_bn": True, "lr": 1e-3, "clip_norm": 0.0}
    model = build_model(cfg, 10)
    set_phase(model, 1, cfg)
    compile_for_training(model, cfg, cfg["lr"])
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    rules = {"warmup": 2, "min_runs": 5, "min_seconds": 2.0, "ci": 0.03, "max_seconds": max_seconds}
    step = latency(lambda i: model.train_on_batch(x, y), **rules)
    infer = latency(lambda i: model.predict_on_batch(x), **rules)
    return {"train_step": step, "inference": infer}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m checks.step_time", description=__doc__.split("\n\n")[1])
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--precision", default="float32,mixed_bfloat16", help="comma-separated policies (default %(default)s)")
    p.add_argument("--max-seconds", type=float, default=60.0, help="per figure (default %(default)s)")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # the worker: one precision, JSON out
    a = p.parse_args(argv)

    def body():
        from edge_runtime.machine import cpu_flags

        if a.one:
            print(json.dumps(measure(a.backbone, a.image_size, a.batch, a.precision, a.max_seconds)))
            return 0
        policies = a.precision.split(",")
        if any(pol not in ("float32", "mixed_float16", "mixed_bfloat16") for pol in policies):
            raise InputError(f"--precision: one or more of float32, mixed_float16, mixed_bfloat16, got {a.precision!r}")
        rows = {}
        for pol in policies:
            proc = subprocess.run([sys.executable, "-m", "checks.step_time", "--one", "--precision", pol,
                                   "--backbone", a.backbone, "--image-size", str(a.image_size), "--batch", str(a.batch),
                                   "--max-seconds", str(a.max_seconds)], capture_output=True, text=True)
            if proc.returncode:
                raise InputError(f"{pol}: {(proc.stderr.strip().splitlines() or ['failed'])[-1]}")
            rows[pol] = json.loads(proc.stdout.strip().splitlines()[-1])
        base = rows[policies[0]]
        print(f"{a.backbone}, {a.image_size} px, batch {a.batch}; CPU flags: {' '.join(cpu_flags())}\n")
        print(f"| precision | train step p50 ms [95% CI] | × {policies[0]} | inference p50 ms [95% CI] | × {policies[0]} |")
        print("|---|---|---|---|---|")
        for pol, r in rows.items():
            s, i = r["train_step"], r["inference"]
            print(f"| {pol} | {s['p50_ms']:.0f} [{s['p50_ci_ms'][0]:.0f}, {s['p50_ci_ms'][1]:.0f}] | "
                  f"{base['train_step']['p50_ms'] / s['p50_ms']:.2f} | {i['p50_ms']:.0f} "
                  f"[{i['p50_ci_ms'][0]:.0f}, {i['p50_ci_ms'][1]:.0f}] | {base['inference']['p50_ms'] / i['p50_ms']:.2f} |")
        return 0

    return exit_code(body)


if __name__ == "__main__":
    sys.exit(main())
