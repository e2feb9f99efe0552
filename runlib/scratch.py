"""Scratch folders in the system's temporary folder, named after the process that made them, so what a
killed process left (export's can be gigabytes at 224 px) is found and removed by the next command."""
import os
import re
import shutil
import tempfile
from pathlib import Path

PATTERN = re.compile(r"^edgeclf-(\d+)-")


def prefix(kind):
    """For tempfile.mkdtemp / TemporaryDirectory: edgeclf-<pid>-<kind>-."""
    return f"edgeclf-{os.getpid()}-{kind}-"


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def sweep(root=None):
    """Remove the scratch folders of processes that no longer run; returns how many."""
    removed = 0
    for p in Path(root or tempfile.gettempdir()).glob("edgeclf-*"):
        m = PATTERN.match(p.name)
        if m and p.is_dir() and not _alive(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True)
            removed += 1
    return removed


def tidy(run, log=None):
    """At the start of a command that holds a run's lock: what a killed process left, in the run folder and
    in the temporary folder, removed."""
    from edge_runtime.files import sweep_temporaries

    n = sweep_temporaries(run.path) + sweep()
    if n and log:
        log(f"removed {n} temporary file(s) or folder(s) a stopped process had left")
    return n
