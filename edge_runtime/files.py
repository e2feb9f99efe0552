"""Checksums and atomic, durable writes: a file either appears complete or not at all, and once it
has appeared it survives a power cut (the file and its folder are forced to disk at the rename)."""
import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path


def sha256_file(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


TEMP_PREFIX = ".~tmp-"  # what atomic_path's temporaries are called; sweep_temporaries() removes strays


def fsync_path(path):
    """Force a file, or a folder's list of names, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds, with the
    file forced to disk before the rename and the folder after it.

    `suffix` keeps an extension some writers insist on (tf_keras wants `.keras`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private; give the usual permissions
            if tmp.is_file():
                fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def sweep_temporaries(folder):
    """Remove temporaries a killed process left in `folder` and the folders below it; how many.
    Only for folders one process writes at a time (a run folder, under its lock)."""
    import shutil

    removed = 0
    for p in Path(folder).rglob(f"{TEMP_PREFIX}*") if Path(folder).is_dir() else ():
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        removed += 1
    return removed


def write_bytes(path, data):
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path, text):
    write_bytes(path, text.encode("utf-8"))


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


MANIFEST = "manifest.json"


def plain_name(name, where):
    """A file name a manifest gives, refused unless it names a file in the manifest's own folder (no folder
    part, no '..', not absolute): a manifest must not make anything read or pack another file."""
    from .errors import InputError

    if not isinstance(name, str) or not name or name in (".", "..") or Path(name).name != name or "\\" in name:
        raise InputError(f"{where}: {name!r} is not a plain file name in the manifest's folder")
    return name


def read_manifest(path, missing_ok=False):
    """The export manifest: `path` is manifest.json or the folder holding it. The one reader every stage uses.

    A missing file is {} when missing_ok, else an InputError; an unreadable one is always an InputError.
    """
    from .errors import InputError

    path = Path(path)
    if path.is_dir() or path.name != MANIFEST:
        path = path / MANIFEST
    if not path.is_file():
        if missing_ok:
            return {}
        raise InputError(f"{path} does not exist")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: unreadable manifest ({e})") from None
    if not isinstance(manifest, dict):
        raise InputError(f"{path}: not a manifest (a JSON object was expected)")
    return manifest
