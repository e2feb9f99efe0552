"""python -m export.convert_alone JOB.json: one variant converted in a process of its own (the child's side
of export/background.py). It converts into the job's scratch folder and writes result.json there; the
parent commits the file."""
import json
import sys
import traceback
from pathlib import Path

from edge_runtime.decision import Rule
from edge_runtime.files import write_json
from runlib.options import config_class
from runlib.progress import logger
from runlib.run_folder import Run

from .exporter import Context, convert
from .variants import get


def main(argv=None):
    job = json.loads(Path((argv or sys.argv[1:])[0]).read_text(encoding="utf-8"))
    out = Path(job["dir"])
    v = get(job["variant"])
    try:
        # what the conversion stages (the QAT source) stays in the job's folder for the parent
        ctx = Context(Run(job["run"]), config_class("export")(**job["config"]), log=logger(f"export {v.name}"), work=out)
        if job.get("decision"):  # the parent's rule; the field-like photos made again here, the same way
            ctx.budget.rule = Rule.from_record(job["decision"])
            ctx.budget.outside = ctx.field_like
        entry = convert(v, ctx, out / v.filename, {"source_model": {"sha256": job["source_sha256"]}})
        write_json(out / "result.json", {"entry": entry})
        return 0
    except Exception as e:  # noqa: BLE001  the parent reports it as this variant's failure
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        write_json(out / "result.json", {"error": f"{type(e).__name__}: {first}", "traceback": traceback.format_exc()})
        return 1


if __name__ == "__main__":
    sys.exit(main())
