"""python -m checks.field_table RUN [RUN ...]: the field figures of several benchmarked runs (one per seed), per
file, as mean ± sd over the runs: what docs/results.md's field tables are made of.

Each run must have been benchmarked with `--field DIR` (runs/<name>/benchmark/report.json).
"""
import argparse
import json
import statistics
import sys
from pathlib import Path

from edge_runtime.errors import InputError, exit_code

COLUMNS = (  # (header, where in a row's "decisions", key)
    ("test top-1", None, "top1"),
    ("field top-1 (known species)", "field", "top1"),
    ("answers right (known, under the rule)", "field", "selective_accuracy"),
    ("known answered", "field", "coverage"),
    ("unknown species named", "field", "unknown_named"),
    ("AUROC known vs unknown", "field", "auroc"),
    ("Leeds test answered", "test", "coverage"),
    ("decision agreement, test", "test", "agreement"),
    ("decision agreement, field", "field", "agreement"),
    ("ECE (test, calibrated)", "calibration", "ece"),
)


def value(row, where, key):
    if where is None:
        return row.get(key)
    return ((row.get("decisions") or {}).get(where) or {}).get(key)


def cell(values):
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(runs):
    reports = []
    for run in runs:
        f = Path(run) / "benchmark" / "report.json"
        if not f.is_file():
            raise InputError(f"{run}: no benchmark report ({f})")
        report = json.loads(f.read_text(encoding="utf-8"))
        if not (report["context"].get("outside") or {}).get("field"):
            raise InputError(f"{run}: benchmarked without --field")
        reports.append(report)
    variants = [r["variant"] for r in reports[0]["rows"] if r["status"] == "ok" and r["variant"] != "qat-source"]
    lines = ["| file | " + " | ".join(c[0] for c in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for v in variants:
        rows = [next((r for r in rep["rows"] if r["variant"] == v and r["status"] == "ok"), None) for rep in reports]
        rows = [r for r in rows if r]
        lines.append(f"| {v} | " + " | ".join(cell([value(r, w, k) for r in rows]) for _, w, k in COLUMNS) + " |")
    rule = [rep["context"].get("decision_rule") or {} for rep in reports]
    lines += ["", f"{len(reports)} runs: " + ", ".join(f"`{Path(run).name}` (T {r.get('temperature', 1):.3f}, threshold "
                                                      f"{r.get('threshold', 0):.3f})" for run, r in zip(runs, rule))]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m checks.field_table", description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    a = p.parse_args(argv)
    return exit_code(lambda: print(table(a.runs)))


if __name__ == "__main__":
    sys.exit(main())
