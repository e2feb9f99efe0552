"""Command-line options for training and how their defaults resolve.

Without --data the built-in demo dataset is used, with small defaults that keep
`make train export benchmark` short on a CPU; with --data the defaults suit real photos.
"""
import argparse
import re

from edge_runtime.errors import InputError

from .backbones import BACKBONES

# Options whose default depends on whether we train the demo or user data.
# The demo trains ResNet-50 from random weights on 8x8-pixel digits: 32 px loses nothing, no augmentation
# (a flipped or rotated digit is another digit). From scratch, Adam at 1e-3 blew up in the first epochs
# (validation loss 42) until a 3-epoch warm-up and gradient clipping at norm 1 steadied it (measured).
DEMO_DEFAULTS = {"weights": "none", "image_size": "32", "epochs_head": 15, "epochs_finetune": 3, "batch_size": 32,
                 "augment": 0.0, "flip": False, "patience": 8, "lr_patience": 4,
                 "schedule": "plateau", "warmup_epochs": 3, "clip_norm": 1.0}
DATA_DEFAULTS = {"weights": "imagenet", "image_size": "224", "epochs_head": 10, "epochs_finetune": 10, "batch_size": 32,
                 "augment": 1.0, "flip": True, "patience": 4, "lr_patience": 2,
                 "schedule": "plateau", "warmup_epochs": 0, "clip_norm": 0.0}

# Options that must match for an interrupted run to be resumed.
RESUME_KEYS = ("data_root", "csv", "backbone", "weights", "alpha", "image_size", "head", "epochs_head", "epochs_finetune",
               "batch_size", "lr", "lr_finetune", "dropout", "unfreeze_from", "unfreeze_layers", "train_bn",
               "val_frac", "test_frac", "seed", "max_per_class", "use_class_weights", "augment", "flip", "schedule", "warmup_epochs",
               "clip_norm", "mixed_precision")


def parser():
    p = argparse.ArgumentParser(prog="python -m train", description=(
        "Fine-tune an ImageNet backbone on a folder of labelled images into runs/<name>/. "
        "Subcommand `preview-augment` writes a PNG grid of augmented samples instead."))
    g = p.add_argument_group("data")
    g.add_argument("--data", help="class-per-folder image tree, or the image root for --csv (default: built-in demo digits)")
    g.add_argument("--csv", help="CSV of filename,label; filenames relative to --data")
    g.add_argument("--val-frac", type=float, default=0.15)
    g.add_argument("--test-frac", type=float, default=0.15)
    g.add_argument("--max-per-class", type=int, default=0, help="undersample: cap images per class in the training split (0: no cap)")
    g.add_argument("--no-class-weights", dest="use_class_weights", action="store_false", help="do not weight the loss by class frequency")
    g.add_argument("--augment", type=float, help="augmentation strength, 0 turns it off (default 1; demo 0)")
    g.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="random horizontal flips while augmenting (default on; demo off: a mirrored digit is no digit)")
    g = p.add_argument_group("model")
    g.add_argument("--backbone", default="resnet50", choices=sorted(BACKBONES))
    g.add_argument("--weights", help="imagenet, none, or a local .h5 file of backbone weights (no top)")
    g.add_argument("--alpha", type=float, default=1.0, help="width multiplier for mobilenet and mobilenet_v2")
    g.add_argument("--image-size", help="input size: N or HxW, 32 and up (default 224; demo 64)")
    g.add_argument("--dropout", type=float, default=0.2)
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, help="epochs per phase (default 10; demo 30 then 15)")
    g.add_argument("--head", choices=["probe", "sgd"], default="probe",
                   help="phase 1 with pretrained weights: probe fits the head to convergence on cached backbone features "
                        "(a logistic regression, C chosen on the validation split); sgd trains it for --epochs-head epochs")
    g.add_argument("--epochs-head", type=int, help="phase 1 epochs with --head sgd or random weights; 0 skips phase 1")
    g.add_argument("--epochs-finetune", type=int, help="phase 2 epochs (deeper layers unfrozen); 0 skips phase 2")
    g.add_argument("--batch-size", type=int)
    g.add_argument("--lr", type=float, default=1e-3, help="phase 1 learning rate")
    g.add_argument("--lr-finetune", type=float, default=1e-4, help="phase 2 learning rate")
    g.add_argument("--schedule", choices=["plateau", "cosine"],
                   help="learning rate per phase: plateau cuts it 0.3x when validation stalls (default); cosine warms up "
                        "for --warmup-epochs then decays to 1%% by the phase's last epoch")
    g.add_argument("--warmup-epochs", type=int, help="linear warm-up epochs at the start of each phase (default 0)")
    g.add_argument("--clip-norm", type=float, help="clip the gradient's global norm to this (default off; demo 1)")
    g.add_argument("--unfreeze-from", help="phase 2 trains from the first layer whose name starts with this (e.g. conv5_block1)")
    g.add_argument("--unfreeze-layers", type=int, help="phase 2 trains the last N backbone layers instead")
    g.add_argument("--train-bn", action=argparse.BooleanOptionalAction, default=None,
                   help="let BatchNorm layers train in phase 2 (default: frozen; trained when --weights none)")
    g.add_argument("--patience", type=int, help="early stopping patience in epochs (default 4; demo 8)")
    g.add_argument("--lr-patience", type=int, help="epochs without improvement before the learning rate is cut (default 2; demo 4)")
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("hardware")
    g.add_argument("--mixed-precision", action="store_true", help="mixed_float16 compute (GPU), float32 softmax")
    g.add_argument("--xla", action="store_true", help="compile the training step with XLA")
    g.add_argument("--strategy", default="auto", choices=["auto", "none", "mirrored", "multiworker"],
                   help="auto: MirroredStrategy on several GPUs, MultiWorkerMirroredStrategy when TF_CONFIG is set")
    g.add_argument("--cache-limit-gb", type=float, default=2.0,
                   help="keep decoded training and validation pixels in memory up to this size; above it, decode "
                        "them again every epoch (default 2)")
    g.add_argument("--logical-cpus", type=int, default=0, help=argparse.SUPPRESS)  # tests: mirror over N logical CPUs
    g = p.add_argument_group("run folder")
    g.add_argument("--run", help="run folder (default: runs/<data>-<backbone>, numbered if taken)")
    g.add_argument("--overwrite", action="store_true", help="replace a finished run of the same name")
    return p


def parse_size(text):
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX,]\s*(\d+))?\s*", str(text))
    if not m:
        raise InputError(f"--image-size must be N or HxW, got {text!r}")
    h = int(m.group(1))
    w = int(m.group(2) or h)
    if h < 32 or w < 32:
        raise InputError(f"--image-size must be at least 32 px, got {h}x{w}")
    return [h, w]


def resolve(args, demo):
    """The complete option dict recorded in config.json."""
    d = DEMO_DEFAULTS if demo else DATA_DEFAULTS
    cfg = {k: v for k, v in vars(args).items() if k not in ("overwrite",)}
    cfg["weights"] = args.weights or d["weights"]
    cfg["image_size"] = parse_size(args.image_size or d["image_size"])
    cfg["epochs_head"] = next(e for e in (args.epochs_head, args.epochs, d["epochs_head"]) if e is not None)
    cfg["epochs_finetune"] = next(e for e in (args.epochs_finetune, args.epochs, d["epochs_finetune"]) if e is not None)
    for key in ("augment", "flip", "patience", "lr_patience", "schedule", "warmup_epochs", "clip_norm"):
        cfg[key] = getattr(args, key) if getattr(args, key) is not None else d[key]
    cfg["batch_size"] = args.batch_size or d["batch_size"]
    cfg.pop("epochs")
    if cfg["epochs_head"] < 0 or cfg["epochs_finetune"] < 0 or cfg["epochs_head"] + cfg["epochs_finetune"] < 1:
        raise InputError("epochs must be non-negative and train for at least one epoch")
    if cfg["batch_size"] < 1:
        raise InputError(f"--batch-size must be at least 1, got {cfg['batch_size']}")
    if args.unfreeze_from and args.unfreeze_layers:
        raise InputError("give --unfreeze-from or --unfreeze-layers, not both")
    if cfg["weights"] not in ("imagenet", "none"):
        from pathlib import Path
        if not Path(cfg["weights"]).is_file():
            raise InputError(f"weights file {cfg['weights']} does not exist (use imagenet, none or a .h5 path)")
        cfg["weights"] = str(Path(cfg["weights"]).resolve())
    if cfg["weights"] == "none":
        # random weights have no features worth protecting: the whole backbone trains, BatchNorm included
        if cfg["train_bn"] is None:
            cfg["train_bn"] = True
    cfg["train_bn"] = bool(cfg["train_bn"])
    if not BACKBONES[cfg["backbone"]].has_alpha:
        cfg["alpha"] = None
    cfg["demo"] = demo
    return cfg
