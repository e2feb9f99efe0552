"""What image arguments on a command line name: files, folders (walked in name order) and globs."""
import glob
from pathlib import Path

from .preprocess import _formats


def image_suffixes():
    """File extensions of the formats the contract decodes (.jpg, .png, ...), for walking folders."""
    from PIL import Image

    formats = _formats()
    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in formats}


def _walk(folder, suffixes):
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if p.is_file() and p.suffix.lower() in suffixes and not any(part.startswith(".") for part in rel.parts):
            yield str(p)


def expand(args):
    """Yield image paths for each argument in order: a file as it is (whatever its name, so a bad one is
    reported, not skipped), a folder's image files (hidden ones aside), a glob's matches. An argument
    that names nothing is yielded as it is, so reading it reports it."""
    suffixes = image_suffixes()
    for arg in args:
        p = Path(arg)
        if p.is_dir():
            yield from _walk(p, suffixes)
        elif not p.exists() and glob.has_magic(arg):
            matches = sorted(glob.glob(arg, recursive=True))
            for m in matches:
                yield from (_walk(Path(m), suffixes) if Path(m).is_dir() else [m])
            if not matches:
                yield arg
        else:
            yield arg
