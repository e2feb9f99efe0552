"""Installed package versions, recorded with every run, export and report."""
import sys

VERSIONED = ("tensorflow", "tf-keras", "tensorflow-model-optimization", "numpy", "scikit-learn", "Pillow")


def package_versions(names=VERSIONED):
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for n in names:
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            out[n] = None
    out["python"] = sys.version.split()[0]
    return out
