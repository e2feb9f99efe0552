"""A bundle as the device sees it: the folder `make bundle` ships.

    manifest.json        the candidate files (`variants`, in the builder's order of preference), labels,
                         the preprocessing contract, and how each candidate is judged by selfcheck
    labels.txt, model-*  the candidates themselves
    reference/           a few images, their pixels and each candidate's probabilities, recorded on the
                         build machine: what `selfcheck` compares the device against
    selection.json       written on the device by `select`: the fastest candidate measured there

`predict`, `serve` and `watch` run the selected file when the selection was measured on a machine of this
kind, and otherwise the first candidate, saying so: a file is never chosen by another machine's speed.
"""
import json
import sys
from pathlib import Path

import numpy as np

from .errors import InputError
from .files import MANIFEST, plain_name, read_manifest, write_json
from .machine import signature
from .preprocess import check_contract

SELECTION = "selection.json"
REFERENCE = "reference"


def inside(folder, name, where):
    """`name` relative to folder, refused unless it stays inside it (a reference must not read other files)."""
    if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts or "\\" in name:
        raise InputError(f"{where}: {name!r} is not a path inside {folder}")
    return folder / name


class Bundle:
    def __init__(self, path="."):
        self.path = Path(path)
        if not (self.path / MANIFEST).is_file():
            raise InputError(f"{self.path}: not a bundle or export folder (no {MANIFEST}); "
                             "give --bundle DIR or --model FILE")
        self.manifest = read_manifest(self.path)
        self.candidates = [name for name, e in self.manifest.get("variants", {}).items() if e.get("status", "ok") == "ok"]
        if not self.candidates:
            raise InputError(f"{self.path / MANIFEST} lists no model file")

    def entry(self, variant):
        return self.manifest["variants"][variant]

    def model_path(self, variant):
        if variant not in self.candidates:
            raise InputError(f"{variant!r} is not in {self.path}; it holds {', '.join(self.candidates)}")
        return self.path / plain_name(self.entry(variant).get("file"), f"{self.path / MANIFEST}, {variant}")

    def kind(self, variant):
        """'integer' when the file computes in integers throughout (its outputs may differ by a rounding
        step between machines), else 'float'."""
        return (self.manifest.get("selfcheck") or {}).get("kinds", {}).get(variant, "float")

    # ---- the host's reference outputs
    def reference(self):
        """{"images": [...], "pixels": uint8 array, "probabilities": {variant: array}, ...} or InputError."""
        folder = self.path / REFERENCE
        meta_file = folder / "reference.json"
        if not meta_file.is_file():
            raise InputError(f"{self.path}: no reference outputs ({meta_file} is missing); rebuild the bundle with "
                             "`make bundle`")
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            for name in [meta["pixels"], meta["probabilities"]] + [i["file"] for i in meta["images"]]:
                inside(folder, name, meta_file)
            pixels = np.load(folder / meta["pixels"], allow_pickle=False)
            with np.load(folder / meta["probabilities"], allow_pickle=False) as z:
                probs = {k: z[k] for k in z.files}
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
            raise InputError(f"{folder}: unreadable reference outputs ({e})") from None
        fit = check_contract(self.manifest["preprocessing"])[1] if self.manifest.get("preprocessing") else "squash"
        return dict(meta, pixels=pixels, probabilities=probs, folder=folder, fit=fit)

    # ---- the device's own choice
    def selection(self):
        f = self.path / SELECTION
        if not f.is_file():
            return None
        try:
            return json.loads(f.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"{f}: unreadable selection ({e}); run `select` again") from None

    def write_selection(self, record):
        write_json(self.path / SELECTION, record)

    def chosen(self, threads=None):
        """(variant, why): the fastest candidate `select` measured on this kind of machine for this thread
        count, else the first candidate. None means the runtimes' default, one thread: predict, watch and each of
        serve's workers then run the same file; only an explicit --threads above 1 takes the all-cores choice."""
        sel = self.selection()
        first = self.candidates[0]
        if sel is None:
            return first, f"no selection on this machine yet (run `select`): the bundle's first candidate, {first}"
        if sel.get("machine") != signature():
            return first, (f"{SELECTION} was measured on another kind of machine ({sel.get('machine')}); "
                           f"using the bundle's first candidate, {first} (run `select` here)")
        key = "all" if threads and threads > 1 else "1"
        variant = (sel.get("choice") or {}).get(key)
        if variant not in self.candidates:
            return first, f"{SELECTION} names no candidate of this bundle; using {first} (run `select` again)"
        return variant, f"fastest on this machine at {'1 thread' if key == '1' else 'all cores'}, measured by `select`"


def resolve_model(model=None, bundle=None, threads=None, log=None):
    """The model file to run: `model` when given, else the bundle's chosen candidate (bundle default: the
    current folder). Says which and why on stderr (or through `log`)."""
    if model:
        return Path(model)
    b = Bundle(bundle or ".")
    variant, why = b.chosen(threads)
    (log or (lambda m: print(m, file=sys.stderr, flush=True)))(f"model: {b.entry(variant)['file']} ({variant}): {why}")
    return b.model_path(variant)
