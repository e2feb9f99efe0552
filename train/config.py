"""How training's options resolve into the config.json a run records.

The options and their defaults are defined in runlib/options.py. Without --data the built-in demo
dataset is used, with small defaults that keep `make train export benchmark` short on a CPU; with --data
the defaults suit real photos (the `demo` column of the definitions). The demo trains ResNet-50 from random
weights on 8x8-pixel digits: 32 px loses nothing, and there is no augmentation (a flipped or rotated digit
is another digit); docs/training.md has the measurements behind its warm-up and clipping.
"""
import re
from pathlib import Path

from edge_runtime.errors import InputError

from runlib.backbones import BACKBONES
from runlib.options import check, defaults, resume_keys

# Options that must match for an interrupted run to be resumed (`resume=True` in the option table).
RESUME_KEYS = resume_keys()


def parse_size(text):
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX,]\s*(\d+))?\s*", str(text))
    if not m:
        raise InputError(f"--image-size must be N or HxW, got {text!r}")
    h = int(m.group(1))
    w = int(m.group(2) or h)
    if h < 32 or w < 32:
        raise InputError(f"--image-size must be at least 32 px, got {h}x{w}")
    return [h, w]


def resolve(options, demo):
    """The complete option dict recorded in config.json, from the explicit options (command line, recipe
    or keywords) and the defaults (the demo's when training on the demo dataset)."""
    cfg = {**defaults("train", demo), **options}
    check("train", cfg)
    cfg.pop("overwrite")
    # --epochs sets both phases; a phase given on its own wins
    for phase in ("epochs_head", "epochs_finetune"):
        cfg[phase] = options.get(phase, options.get("epochs", cfg[phase]))
    cfg.pop("epochs")
    cfg["image_size"] = parse_size(cfg["image_size"])
    if cfg["epochs_head"] is None or cfg["epochs_finetune"] is None or cfg["epochs_head"] < 0 \
            or cfg["epochs_finetune"] < 0 or cfg["epochs_head"] + cfg["epochs_finetune"] < 1:
        raise InputError("epochs must be non-negative and train for at least one epoch")
    if cfg["batch_size"] < 1:
        raise InputError(f"--batch-size must be at least 1, got {cfg['batch_size']}")
    if cfg["unfreeze_from"] and cfg["unfreeze_layers"]:
        raise InputError("give --unfreeze-from or --unfreeze-layers, not both")
    if cfg["backbone"] not in BACKBONES:
        raise InputError(f"unknown backbone {cfg['backbone']!r}; choose from {', '.join(sorted(BACKBONES))}")
    if cfg["weights"] not in ("imagenet", "none"):
        if not Path(cfg["weights"]).is_file():
            raise InputError(f"weights file {cfg['weights']} does not exist (use imagenet, none or a .h5 path)")
        cfg["weights"] = str(Path(cfg["weights"]).resolve())
    if cfg["weights"] == "none" and cfg["train_bn"] is None:
        cfg["train_bn"] = True  # random weights have no features worth protecting: the whole backbone trains
    cfg["train_bn"] = bool(cfg["train_bn"])
    if not BACKBONES[cfg["backbone"]].has_alpha:
        cfg["alpha"] = None
    if cfg.pop("mixed_precision"):  # the older flag
        if options.get("precision", "mixed_float16") != "mixed_float16":
            raise InputError("--mixed-precision means --precision mixed_float16; give one of them")
        cfg["precision"] = "mixed_float16"
    cfg["demo"] = demo
    return cfg
