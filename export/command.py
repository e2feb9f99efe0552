"""`edgeclf export` as a command: options in, the manifest's path and an exit code out."""
import sys

from runlib import progress


def run_command(o):
    """`edgeclf export`: options by name (runlib/options.py); 1 when a variant failed."""
    from . import export

    r = export(**o)
    log = progress.logger("export")
    log(f"manifest: {r.run.export_manifest}")
    if r.failed:
        print(f"error: export failed for {', '.join(r.failed)} (see the manifest and {r.run.export_dir}/*.error.log)",
              file=sys.stderr)
        return 1
    return 0
