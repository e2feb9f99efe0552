"""Deprecated alias: what lived here is the package `runlib` now (docs/architecture.md). `train.shared.X` still
imports `runlib.X` for this release and warns; it goes in the next one."""
import importlib
import sys
import warnings

warnings.warn("train.shared moved to runlib; import runlib instead (the alias goes in the next release)",
              DeprecationWarning, stacklevel=2)
for _name in ("backbones", "lock", "metrics", "model_card", "options", "plots", "progress", "results", "run_folder",
              "scratch", "split", "tf_setup", "versions"):
    sys.modules[f"{__name__}.{_name}"] = importlib.import_module(f"runlib.{_name}")
