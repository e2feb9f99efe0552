"""python -m benchmark [--run runs/<name>] [--variants a,b] [--max-drop 1.0] [--min-agreement 0.98] [--no-gate]"""
import argparse
import shlex
import sys

from . import __name__ as _pkg  # noqa: F401  (sets TF_USE_LEGACY_KERAS before any worker loads TensorFlow)
from edge_runtime.errors import InputError, exit_code

from edge_runtime.timing import DEFAULTS


def parser():
    p = argparse.ArgumentParser(prog="python -m benchmark",
                                description="Accuracy and latency of the Keras model and every exported variant on the run's test split.")
    p.add_argument("--run", help="run folder (default: the newest finished run in runs/)")
    p.add_argument("--variants", help="comma-separated subset of the exported variants (default: all)")
    p.add_argument("--max-drop", type=float, default=1.0, help="largest allowed top-1 drop against Keras, in points (default 1.0)")
    p.add_argument("--min-agreement", type=float, default=0.98,
                   help="smallest allowed share of test images where the variant predicts Keras's class (default 0.98)")
    p.add_argument("--no-gate", dest="enforce", action="store_false", help="report parity failures without failing")
    p.add_argument("--no-tune", dest="tune", action="store_false",
                   help="measure with the runtime libraries' default settings instead of trying each (XNNPACK on/off, "
                        "ONNX Runtime graph optimization level) and keeping this machine's fastest")
    g = p.add_argument_group("timing")
    g.add_argument("--threads", type=int, help="the 'all cores' thread count (default: the cores this process may use)")
    g.add_argument("--batch", type=int, default=16, help="batch size for accuracy and throughput (default 16)")
    g.add_argument("--warmup", type=int, default=DEFAULTS["warmup"], help="untimed calls before timing (default %(default)s)")
    g.add_argument("--min-runs", type=int, default=DEFAULTS["min_runs"],
                   help="timed calls per latency figure, at least (default %(default)s)")
    g.add_argument("--min-seconds", type=float, default=DEFAULTS["min_seconds"], help="and at least this long (default %(default)s)")
    g.add_argument("--ci", type=float, default=DEFAULTS["ci"],
                   help="then stop once the median's 95%% interval is within this fraction of it (default %(default)s)")
    g.add_argument("--max-seconds", type=float, default=DEFAULTS["max_seconds"],
                   help="but no longer than this per figure (default %(default)s)")
    return p


def main(argv=None):
    args = parser().parse_args(argv)

    def body():
        from export.variants import select
        from train.fit import package_versions
        from train.rundir import resolve_run

        from . import report
        from .evaluate import gate, log, measure_all, record_settings

        if args.batch < 1 or args.min_runs < 1 or args.warmup < 0 or (args.threads is not None and args.threads < 1):
            raise InputError("--batch, --min-runs and --threads must be at least 1, --warmup at least 0")
        if not 0 <= args.min_agreement <= 1 or args.max_drop < 0:
            raise InputError("--min-agreement must be between 0 and 1 and --max-drop at least 0")
        select(args.variants)  # an unknown name fails before any slow work
        run = resolve_run(args.run)
        timing = {"warmup": args.warmup, "min_runs": args.min_runs, "min_seconds": args.min_seconds,
                  "ci": args.ci, "max_seconds": args.max_seconds}
        rows, context = measure_all(run, args.variants, batch=args.batch, timing=timing, threads=args.threads,
                                    tune=args.tune)
        if args.tune:
            record_settings(run, rows)
        failures = gate(rows, args.max_drop, args.min_agreement)
        verdict = {"max_drop": args.max_drop, "min_agreement": args.min_agreement, "enforced": args.enforce,
                   "failures": failures}
        versions = package_versions(("tensorflow", "tf-keras", "ai-edge-litert", "onnxruntime", "numpy", "Pillow"))
        command = "python -m benchmark " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
        report.write(run, rows, context, verdict, versions, command)
        out = run.benchmark_dir
        log(f"report: {out / 'report.md'} (+ report.json, report.csv, accuracy_vs_latency.png, confusion_float_vs_int8.png)")
        print((out / "report.md").read_text().split("\n\n")[2], flush=True)  # the headline table
        if failures:
            msg = "; ".join(f"{k}: {', '.join(v)}" for k, v in failures.items())
            if args.enforce:
                print(f"error: parity gate failed for {', '.join(failures)} ({msg})", file=sys.stderr)
                return 1
            log(f"parity misses (not enforced, --no-gate): {msg}")
        else:
            log("parity gate passed")
        return 0

    return exit_code(body)


if __name__ == "__main__":
    sys.exit(main())
