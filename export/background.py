"""A variant converted in a process of its own while the export goes on with the others:
python -m export.background JOB.json.

The parent (export/exporter.py, which holds the run's lock) writes the job, goes on with the other variants,
then waits for the result and commits the file into the export folder itself; this process only converts into
the job's own scratch folder and says how it went in result.json.
"""
import json
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

from edge_runtime.files import write_json
from train.shared.progress import logger
from train.shared.scratch import prefix


class Job:
    def __init__(self, v, ctx):
        self.v = v
        self.dir = Path(tempfile.mkdtemp(prefix=prefix(f"export-{v.name}")))
        ctx.scratch.append(self.dir)  # removed with the export's other scratch when it ends
        job = {"run": str(ctx.run.path), "variant": v.name, "options": ctx.options, "dir": str(self.dir),
               "source_sha256": ctx.source_sha256}
        (self.dir / "job.json").write_text(json.dumps(job), encoding="utf-8")
        self.proc = subprocess.Popen([sys.executable, "-m", "export.background", str(self.dir / "job.json")])

    def result(self, tmp):
        """Wait; move the converted file into tmp and return its manifest entry, or raise with the child's error."""
        import shutil

        code = self.proc.wait()
        result_file = self.dir / "result.json"
        result = json.loads(result_file.read_text(encoding="utf-8")) if result_file.is_file() else {}
        if code != 0 or "entry" not in result:
            e = RuntimeError(result.get("error") or f"its process ended with exit code {code} and no result")
            e.details = result.get("traceback")
            raise e
        shutil.copyfile(self.dir / self.v.filename, tmp)
        return result["entry"]


def start(variants, ctx):
    """{name: Job} for each variant, each already running."""
    return {v.name: Job(v, ctx) for v in variants}


def main(argv=None):
    from train.shared.run_folder import Run

    from . import exporter
    from .variants import BY_NAME

    job = json.loads(Path((argv or sys.argv[1:])[0]).read_text(encoding="utf-8"))
    out = Path(job["dir"])
    v = BY_NAME[job["variant"]]
    exporter.log = logger(f"export {v.name}")
    try:
        ctx = exporter.Context(Run(job["run"]), **job["options"])
        ctx.log = exporter.log
        ctx.__dict__["work"] = out  # what the conversion stages (the QAT source) stays here for the parent
        entry = exporter.convert(v, ctx, out / v.filename, {"source_model": {"sha256": job["source_sha256"]}})
        write_json(out / "result.json", {"entry": entry})
        return 0
    except Exception as e:  # noqa: BLE001  the parent reports it as this variant's failure
        write_json(out / "result.json", {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}",
                                         "traceback": traceback.format_exc()})
        return 1


if __name__ == "__main__":
    sys.exit(main())
