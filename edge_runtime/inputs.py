"""What image arguments on a command line name: files, folders (walked in name order) and globs.

Walks never follow a symlinked folder (a link back up would repeat the same images, or never end) and
yield each file once; a file's symlink is followed, since a user may link images in on purpose.
"""
import glob
import os
from fnmatch import fnmatchcase
from pathlib import Path

from .preprocess import _formats


def image_suffixes():
    """File extensions of the formats the contract decodes (.jpg, .png, ...), for walking folders."""
    from PIL import Image

    formats = _formats()
    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in formats}


def _tree(folder):
    """(relative parts, path, is a folder) below folder, in name order, symlinked folders not entered."""
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames.sort()
        base = Path(dirpath)
        rel = base.relative_to(folder).parts
        for name in dirnames:
            yield (*rel, name), base / name, True
        for name in sorted(filenames):
            yield (*rel, name), base / name, False


def _walk(folder, suffixes):
    for parts, p, is_dir in sorted(_tree(Path(folder)), key=lambda t: t[0]):
        if not is_dir and p.suffix.lower() in suffixes and not any(part.startswith(".") for part in parts):
            yield str(p)


def _matches(pattern, parts):
    """Whether path parts match glob pattern parts ("**" any number of folders; hidden names only by name)."""
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_matches(rest, parts[i:]) for i in range(len(parts) + 1)
                   if not any(p.startswith(".") for p in parts[:i]))
    if not parts or (parts[0].startswith(".") and not head.startswith(".")):
        return False
    return fnmatchcase(parts[0], head) and _matches(rest, parts[1:])


def _glob(arg):
    """The paths a glob names, in name order: the folder before its first wildcard walked without following
    symlinked folders, each name matched part by part."""
    parts = Path(arg).parts
    fixed = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    root = Path(*parts[:fixed]) if fixed else Path(".")
    if not root.is_dir():
        return []
    return [str(p) if fixed else str(p.relative_to(root)) for rel, p, _ in _tree(root)
            if _matches(parts[fixed:], rel)]


def expand(args):
    """Yield image paths for each argument in order: a file as it is (whatever its name, so a bad one is
    reported, not skipped), a folder's image files (hidden ones aside), a glob's matches, each file once per
    argument (two arguments naming one file name it twice, as asked). An argument that names nothing is
    yielded as it is, so reading it reports it."""
    suffixes = image_suffixes()

    def once(paths):
        seen = set()
        for path in paths:
            key = os.path.realpath(path)
            if key not in seen:
                seen.add(key)
                yield path

    for arg in args:
        p = Path(arg)
        if p.is_dir():
            yield from once(_walk(p, suffixes))
        elif not p.exists() and glob.has_magic(arg):
            matches = sorted(_glob(arg))
            # a symlinked folder the glob names is not entered, as a walk does not enter one
            yield from once(p for m in matches if not (Path(m).is_dir() and Path(m).is_symlink())
                            for p in (_walk(Path(m), suffixes) if Path(m).is_dir() else [m]))
            if not matches:
                yield arg
        else:
            yield arg
