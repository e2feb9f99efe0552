"""A variant converted in a process of its own while the export goes on with the others (the parent's side).

The parent (export/exporter.py, which holds the run's lock) writes the job, goes on with the other variants,
then waits for the result and commits the file into the export folder itself; the child
(`python -m export.convert_alone JOB.json`) only converts into the job's own scratch folder and says how it
went in result.json.
"""
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from runlib.scratch import prefix


class Job:
    def __init__(self, v, ctx):
        self.v = v
        self.dir = Path(tempfile.mkdtemp(prefix=prefix(f"export-{v.name}")))
        ctx.scratch.append(self.dir)  # removed with the export's other scratch when it ends
        job = {"run": str(ctx.run.path), "variant": v.name, "config": asdict(ctx.export_config), "dir": str(self.dir),
               "source_sha256": ctx.source_sha256,
               "decision": ctx.budget.rule.as_dict() if ctx.budget.rule is not None else None}
        (self.dir / "job.json").write_text(json.dumps(job), encoding="utf-8")
        self.proc = subprocess.Popen([sys.executable, "-m", "export.convert_alone", str(self.dir / "job.json")])

    def result(self, tmp):
        """Wait; move the converted file into tmp and return its manifest entry, or raise with the child's error."""
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
