"""One writer per run folder: an OS file lock that train, export, benchmark, bundle and pi-check hold
while they work on a run.

The lock is `flock` on a file beside the run folder (`runs/.<name>.lock`, so `--overwrite` can remove the
folder while holding it). The kernel releases it when the process ends, however it ends, so a kill never
leaves a stale lock. The holder writes its pid and command into the file, so a second process can say
who has the run. A process that holds a run's lock may take it again (pi-check builds a bundle).
"""
import fcntl
import os
import shlex
import sys
from pathlib import Path

from edge_runtime.errors import InputError

_held = {}  # lock path -> (file, depth): the locks this process holds


def lock_path(run_path):
    p = Path(run_path).resolve()
    return p.parent / f".{p.name}.lock"


def holder(run_path):
    """'pid N (command)' of the process holding the run's lock, read from the lock file; '' if unknown."""
    try:
        return lock_path(run_path).read_text(encoding="utf-8").strip()
    except OSError:
        return ""


class RunLock:
    """`with RunLock(run.path, "export"):` holds the run for this process, or raises InputError in one line."""

    def __init__(self, run_path, what):
        self.path, self.what = lock_path(run_path), what
        self.run_path = Path(run_path)

    def __enter__(self):
        key = str(self.path)
        if key in _held:
            f, depth = _held[key]
            _held[key] = (f, depth + 1)
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            who = holder(self.run_path) or "another process"
            raise InputError(f"run {self.run_path} is in use by {who}; wait for it to finish (or stop it), "
                             f"then run {self.what} again") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} ({' '.join(shlex.quote(a) for a in sys.argv)[:300]})\n")
        f.flush()
        _held[key] = (f, 1)
        return self

    def __exit__(self, *exc):
        key = str(self.path)
        f, depth = _held[key]
        if depth > 1:
            _held[key] = (f, depth - 1)
            return False
        del _held[key]
        f.seek(0)
        f.truncate()  # no stale holder named once released
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()
        return False
