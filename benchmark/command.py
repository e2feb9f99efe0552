"""`edgeclf benchmark` as a command: options in, the headline, the gate's verdict and an exit code out."""
import sys

from runlib import progress


def run_command(o):
    """`edgeclf benchmark`: options by name (runlib/options.py); 1 when the gate fails (or cannot judge)."""
    from . import benchmark
    from .report import headline

    r = benchmark(**o)
    log = progress.logger("benchmark")
    log(f"report: {r.run.benchmark_dir / 'report.md'} (+ report.json, report.csv and plots)")
    print(headline(r.report), flush=True)
    from .decisions import field_warning

    warning = field_warning(r.report["rows"])
    if warning:
        print(warning, flush=True)
    integer = r.recommendation.get("integer")
    if integer:
        log(f"integer file: {integer['variant']}: {integer['why']}"
            if integer["variant"] else f"integer file: {integer['why']}")
    g = r.report["gate"]
    if r.failures:
        msg = "; ".join(f"{k}: {', '.join(v)}" for k, v in r.failures.items())
        if g["enforced"]:
            print(f"error: parity gate failed for {', '.join(r.failures)} ({msg})", file=sys.stderr)
            return 1
        log(f"parity misses (not enforced, --no-gate): {msg}")
    elif r.inconclusive:
        msg = (f"{g['images']} test images cannot resolve the parity budget (it needs at least {g['images_needed']}: "
               f"{g['rule']})")
        if g["enforced"] and not g["inconclusive_accepted"]:
            print(f"error: parity gate inconclusive: {msg}; --accept-inconclusive reports it without failing",
                  file=sys.stderr)
            return 1
        log(f"parity gate inconclusive, accepted: {msg}")
    else:
        log("parity gate passed")
    return 0
