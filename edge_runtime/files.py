"""Checksums and atomic writes: a file either appears complete or not at all."""
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


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    `suffix` keeps an extension some writers insist on (tf_keras wants `.keras`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private; give the usual permissions
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(path, data):
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path, text):
    write_bytes(path, text.encode("utf-8"))


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


MANIFEST = "manifest.json"


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
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: unreadable manifest ({e})") from None
    if not isinstance(manifest, dict):
        raise InputError(f"{path}: not a manifest (a JSON object was expected)")
    return manifest
