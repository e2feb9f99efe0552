"""`watch DIR`: classify each image that lands in a folder (a camera trap's), once, as it arrives.

Each result is one JSON line appended to the output file (default DIR/classifications.jsonl) and
forced to disk, so the file is the record of what was done: on start it is read back, and an image
already in it (same path, size and modification time) is not classified again, whether the watcher
was stopped, killed or the power failed. A line cut short by a kill is dropped on start.

An image counts as complete once it has not been modified for --settle seconds, so a camera or copy
still writing it is left until it is done; names writers use while writing (hidden, *.tmp, *.part,
...) are never read. An image that will not decode is reported on its own line and not retried until
it changes; an image that changes after it was classified is classified again.

Images answered "unknown", or answered with less confidence than the rule's review_below, are also listed
in the review file (default DIR/review.jsonl), one JSON line each: a person labels them (copies each into a
folder named after its class) and `edgeclf train --extra-data FOLDER` takes them into the next training run.
"""
import json
import os
import signal
import time
from datetime import datetime, timezone
from pathlib import Path

from .inputs import image_suffixes

OUTPUT = "classifications.jsonl"
REVIEW = "review.jsonl"
WRITING = (".tmp", ".part", ".partial", ".crdownload", ".download", ".swp", "~")


def _key(rel, st):
    return (rel, st.st_size, st.st_mtime_ns)


def load_done(out):
    """Keys already in the output file; a last line cut short by a kill is cut off the file."""
    done: set = set()
    if not out.exists():
        return done
    with open(out, "rb+") as f:
        data = f.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a torn last line: drop it, or the next line would be glued to it
            f.truncate(end)
        for line in data[:end].splitlines():
            try:
                r = json.loads(line)
                done.add((r["image"], r["size"], r["mtime_ns"]))
            except (ValueError, KeyError, TypeError):
                continue
    return done


def ready_images(folder, done, settle, out, now=None):
    """(relative path, stat) of the images under folder that are complete and not yet done, oldest first."""
    now = time.time() if now is None else now
    suffixes, found = image_suffixes(), []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            p = Path(dirpath) / name
            if name.startswith(".") or name.endswith(WRITING) or p.suffix.lower() not in suffixes or p == out:
                continue
            try:
                st = p.stat()
            except OSError:  # removed meanwhile
                continue
            rel = p.relative_to(folder).as_posix()
            if now - st.st_mtime >= settle and _key(rel, st) not in done:
                found.append((rel, st))
    return sorted(found, key=lambda f: (f[1].st_mtime_ns, f[0]))


class Watcher:
    """Classifies a folder's new images once each, across restarts, into a JSON-lines file."""

    batch = 16  # images classified per call

    def __init__(self, clf, folder, out=None, top_k=5, settle=1.0, log=print):
        self.clf, self.folder = clf, Path(folder)
        self.out = Path(out) if out else self.folder / OUTPUT
        self.review = self.out.with_name(REVIEW)
        self.top_k, self.settle, self.log = top_k, settle, log
        self.done = load_done(self.out)
        self.stopping = False

    def scan_once(self):
        """Classify what is ready now; returns how many images were written."""
        todo = ready_images(self.folder, self.done, self.settle, self.out.resolve())
        written = 0
        for i in range(0, len(todo), self.batch):
            chunk = todo[i : i + self.batch]
            lines, review = [], []
            for (rel, st), (_, top, error) in zip(chunk, self.clf.stream([str(self.folder / r) for r, _ in chunk],
                                                                         self.top_k, self.batch)):
                row = {"image": rel, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
                row.update({"error": error} if error else top.as_dict())
                row.update(variant=self.clf.variant, at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
                lines.append(json.dumps(row) + "\n")
                if not error and top.review:
                    review.append(json.dumps({"image": str(self.folder / rel), **top.as_dict()}) + "\n")
            if review:  # before the record: a kill between the two may list an image twice, never lose it
                self._append(review, self.review)
            self._append(lines)
            for rel, st in chunk:
                self.done.add(_key(rel, st))
            written += len(chunk)
            if self.stopping:
                break
        return written

    def _append(self, lines, path=None):
        """Append whole lines and force them to disk: what is in the file was done."""
        path = self.out if path is None else path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, "".join(lines).encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)

    def run(self, interval=1.0, once=False, duration=None):
        """Watch until SIGTERM or SIGINT (or one pass with once, or for `duration` seconds)."""
        def stop(signum, frame):
            self.stopping = True

        previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
        start, total = time.monotonic(), 0
        try:
            while True:
                n = self.scan_once()
                total += n
                if n:
                    self.log(f"classified {n} new image(s) ({total} this session) -> {self.out}")
                if once or self.stopping or (duration is not None and time.monotonic() - start >= duration):
                    return total
                time.sleep(interval)
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
