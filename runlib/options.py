"""Every option of every host command, with its default and help, defined once.

The command line (`edgeclf COMMAND`), the Python API (`train.train(**options)` and co.), recipe files
(`--config`) and the Makefile's variables all read these definitions, and each `--help` is generated
from them, so a default cannot say one thing in the help and do another. The device's commands
(`edge_runtime/cli.py`) keep their own, since edge_runtime imports nothing from here.
"""
import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from dataclasses import make_dataclass

from edge_runtime.errors import InputError
from edge_runtime.timing import DEFAULTS as TIMING

from .backbones import BACKBONES
from .metrics import CLASS_PARITY, PARITY


class _NotSet:
    def __repr__(self):
        return "NOTSET"


NOTSET = _NotSet()


@dataclass(frozen=True)
class Option:
    name: str  # the Python keyword; the flag is --name-with-dashes unless `flag` says otherwise
    default: object = None
    help: str = ""
    type: object = None
    choices: tuple = None
    action: str = None  # "store_true", "store_false" (flag turns it off) or "bool" (--x / --no-x)
    flag: str = None
    demo: object = NOTSET  # the default with the built-in demo dataset (train), where it differs
    metavar: str = None
    group: str = None
    make: str = None  # the Makefile variable that sets it
    hidden: bool = False
    low: float = None  # the smallest value allowed (None: no bound)
    high: float = None  # the largest value allowed
    above: bool = False  # low itself is not allowed
    resume: bool = False  # (train) must match for an interrupted run to be resumed

    @property
    def flags(self):
        return [self.flag or "--" + self.name.replace("_", "-")]

    def check(self, value):
        """One error line when value is outside the option's bounds."""
        if value is None or (self.low is None and self.high is None) or isinstance(value, bool):
            return
        if self.low is not None and self.high is not None:
            rule = f"{'above' if self.above else 'at least'} {self.low:g} and at most {self.high:g}" if self.above \
                else f"between {self.low:g} and {self.high:g}"
        else:
            rule = f"{'above' if self.above else 'at least'} {self.low:g}" if self.low is not None \
                else f"at most {self.high:g}"
        low_ok = self.low is None or (value > self.low if self.above else value >= self.low)
        if not (low_ok and (self.high is None or value <= self.high)):
            raise InputError(f"{self.flags[0]} {rule} is required, got {value:g}")

    def default_text(self):
        """How --help states the default: the one the code uses, and the demo's where it differs."""
        if self.action in ("store_true", "store_false"):
            return None
        shown = _show(self.default)
        if self.demo is not NOTSET:
            return f"default {shown}; demo {_show(self.demo)}"
        return None if self.default is None else f"default {shown}"


def _show(v):
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "on" if v else "off"
    return str(v)


# ---------------------------------------------------------------------------------------- train
TRAIN = (
    Option("data", None, "class-per-folder image tree, or the image root for --csv (default: the built-in demo "
      "dataset, scikit-learn's digits written as 32 px PNGs)", group="data", make="DATA", resume=True),
    Option("csv", None, "CSV of filename,label; filenames relative to --data", group="data", make="CSV", resume=True),
    Option("extra_data", None, "class-per-folder images added to the training split only, never to validation or test "
           "(the review file's images, once labelled); each folder must be a class of --data", group="data",
           make="EXTRA_DATA", resume=True),
    Option("val_frac", 0.15, "share of each class for validation", type=float, group="data", low=0, high=1, resume=True),
    Option("test_frac", 0.15, "share of each class for the test split", type=float, group="data",
           low=0, high=1, resume=True),
    Option("max_per_class", 0, "undersample: cap images per class in the training split (0: no cap)", type=int,
      group="data", make="MAX_PER_CLASS", low=0, resume=True),
    Option("group_near_duplicates", True, "keep near copies of a photo (resized, recompressed, lightly cropped) in one "
      "subset of the split, as exact copies always are; off: only report them", action="bool", group="data", resume=True),
    Option("use_class_weights", True, "do not weight the loss by class frequency", action="store_false",
      flag="--no-class-weights", group="data", resume=True),
    Option("augment", 1.0, "augmentation strength, 0 turns it off", type=float, demo=0.0, group="data",
           make="AUGMENT", low=0, resume=True),
    Option("augment_style", "basic", "basic: flips, rotation, zoom, shifts, contrast; field adds what photos from another "
           "source differ by: random resized crops, brightness, saturation and hue, blur and sensor noise",
           choices=("basic", "field"), group="data", make="AUGMENT_STYLE", resume=True),
    Option("flip", True, "random horizontal flips while augmenting (a mirrored digit is no digit)", action="bool",
      demo=False, group="data", resume=True),
    Option("backbone", "resnet50", "keras.applications backbone", choices=BACKBONES.keys(),
           group="model", make="BACKBONE", resume=True),
    Option("weights", "imagenet", "imagenet (downloads), none, or a local .h5 file of backbone weights (no top)",
      demo="none", group="model", make="WEIGHTS", resume=True),
    Option("alpha", 1.0, "width multiplier for mobilenet and mobilenet_v2", type=float,
           group="model", make="ALPHA", low=0, above=True, resume=True),
    Option("image_size", "224", "input size: N or HxW, 32 and up", demo="32", group="model", make="IMG_SIZE", resume=True),
    Option("resize", "crop", "how an image is fitted to the input size (the preprocessing contract): squash stretches "
           "the whole image, crop takes its largest centred box of the input's shape", choices=("squash", "crop"),
           group="model", make="RESIZE", resume=True),
    Option("label_smoothing", 0.0, "share of each label spread over all classes in the loss", type=float,
           group="training", low=0, high=1, resume=True),
    Option("dropout", 0.2, "dropout before the head", type=float, group="model", low=0, high=1, resume=True),
    Option("epochs", None, "epochs per phase (sets both phases unless given apart)", type=int,
           group="training", make="EPOCHS", low=0),
    Option("head", "probe", "phase 1 with pretrained weights: probe fits the head to convergence on cached backbone "
      "features (a logistic regression, C chosen on the validation split); sgd trains it for --epochs-head epochs",
      choices=("probe", "sgd"), group="training", resume=True),
    Option("epochs_head", 10, "phase 1 epochs with --head sgd or random weights; 0 skips phase 1", type=int, demo=8,
      group="training", make="EPOCHS_HEAD", low=0, resume=True),
    Option("epochs_finetune", 10, "phase 2 epochs (deeper layers unfrozen); 0 skips phase 2", type=int, demo=2,
      group="training", make="EPOCHS_FINETUNE", low=0, resume=True),
    Option("batch_size", 32, "global batch size", type=int, group="training", make="BATCH", low=1, resume=True),
    Option("lr", 1e-3, "phase 1 learning rate", type=float, group="training", low=0, resume=True),
    Option("lr_finetune", 1e-4, "phase 2 learning rate", type=float, group="training", low=0, resume=True),
    Option("schedule", "plateau", "learning rate per phase: plateau cuts it 0.3x when validation stalls; cosine warms "
      "up for --warmup-epochs then decays to 1%% by the phase's last epoch", choices=("plateau", "cosine"),
      group="training", resume=True),
    Option("warmup_epochs", 0, "linear warm-up epochs at the start of each phase", type=int, demo=3,
           group="training", low=0, resume=True),
    Option("clip_norm", 0.0, "clip the gradient's global norm to this (0: off)", type=float, demo=1.0,
           group="training", low=0, resume=True),
    Option("unfreeze_from", None, "phase 2 trains from the first layer whose name starts with this (default: per "
      "backbone, conv5_block1 for resnet50, conv_dw_8 for mobilenet)", group="training", make="UNFREEZE_FROM", resume=True),
    Option("unfreeze_layers", None, "phase 2 trains the last N backbone layers instead", type=int, group="training",
      make="UNFREEZE_LAYERS", low=1, resume=True),
    Option("train_bn", None, "let BatchNorm layers train in phase 2 (default: frozen; trained when --weights none)",
      action="bool", group="training", resume=True),
    Option("patience", 4, "early stopping patience in epochs", type=int, demo=8, group="training", low=0),
    Option("lr_patience", 2, "epochs without improvement before the learning rate is cut", type=int, demo=4,
      group="training", low=0),
    Option("seed", 0, "seed of the split, shuffling and initialisation", type=int, group="training",
           make="SEED", low=0, resume=True),
    Option("precision", "float32", "arithmetic of training: auto picks mixed_bfloat16 on a CPU with AMX or AVX-512 BF16, "
      "mixed_float16 on a GPU with fast float16, float32 otherwise; the saved model is float32 whatever the choice "
      "(float32 by default: docs/results.md has the measurements behind the choice)",
      choices=("auto", "float32", "mixed_float16", "mixed_bfloat16"), group="hardware", make="PRECISION", resume=True),
    Option("mixed_precision", False, "the same as --precision mixed_float16 (GPU)", action="store_true", group="hardware",
      make="MIXED_PRECISION"),
    Option("xla", False, "compile the training step with XLA", action="store_true", group="hardware", make="XLA"),
    Option("strategy", "auto", "auto: MirroredStrategy on several GPUs, MultiWorkerMirroredStrategy when TF_CONFIG is set",
      choices=("auto", "none", "mirrored", "multiworker"), group="hardware"),
    Option("cache_limit_gb", 2.0, "keep decoded training and validation pixels in memory up to this size; above it, "
      "decode them again every epoch", type=float, group="hardware", low=0),
    Option("logical_cpus", 0, "tests: mirror over N logical CPUs", type=int, group="hardware", hidden=True, low=0),
    Option("run", None, "run folder (default: runs/<data>-<backbone>, numbered if taken)", group="run folder", make="RUN"),
    Option("overwrite", False, "replace a finished run of the same name", action="store_true", group="run folder",
      make="OVERWRITE"),
)

# ------------------------------------------------------------------ the parity budget, export and benchmark
PARITY_OPTIONS = (
    Option("max_drop", PARITY["max_drop"], "largest allowed top-1 drop against the Keras model, in points; export's "
      "fallback aims at it on the validation split, the benchmark's gate checks it on the test split",
      type=float, group="parity budget", make="MAX_DROP", low=0),
    Option("min_agreement", PARITY["min_agreement"], "smallest allowed share of images on which a variant predicts its "
      "reference model's class; the fallback's aim and the gate's check", type=float, group="parity budget",
      make="MIN_AGREEMENT", low=0, high=1),
    Option("max_class_drop", CLASS_PARITY["max_class_drop"], "per class: a class misses the budget when its recall falls "
      "more than this many points below the Keras model's AND it lost more than --class-images images net",
      type=float, group="parity budget", make="MAX_CLASS_DROP", low=0),
    Option("class_images", CLASS_PARITY["class_images"], "per class: images a class may lose net before its recall drop "
      "counts (near-ties flip; fewer images than this cannot show a real loss)", type=int, group="parity budget", low=0),
)

RUN = Option("run", None, "run folder (default: the newest finished run in runs/)", make="RUN")
VARIANTS = Option("variants", None, "comma-separated subset of the exported variants (default: all)", make="VARIANTS")

EXPORT = (
    RUN, VARIANTS,
    Option("calibration_images", 300, "representative images for int8 (or the whole training split if smaller)",
      type=int, make="CALIB", low=1),
    Option("qat", "auto", "quantization-aware training: auto converts tflite-qat-int8 only when tflite-int8 misses the "
           "parity budget on validation (decisions included); on always; off never", choices=("auto", "on", "off"),
           make="QAT"),
    Option("qat_epochs", 2, "quantization-aware fine-tuning epochs", type=int, demo=1, make="QAT_EPOCHS", low=0),
    Option("qat_lr", 1e-5, "quantization-aware fine-tuning learning rate", type=float, low=0),
    Option("qat_labels", 0.0, "share of the quantization-aware loss taken from the labels; the rest distils the float "
      "model's probabilities, so the file learns to agree with it (0: agreement only, the file is gated against "
      "Keras; 1: plain QAT on the labels, gated against its own float source)", type=float, low=0, high=1),
    Option("seed", 0, "seed of the calibration images' draw from the training split", type=int, low=0),
    Option("smoke_images", 16, "validation images compared with the Keras model after each conversion", type=int, low=1),
    Option("ranges", "auto", "activation ranges of tflite-int8 and onnx-int8: the calibrator's min/max, or a percentile "
      "of the activations from FROM (a share of the ops) on; auto: min/max when it meets the parity budget on the "
      "validation split, else the best there of p99.99 and of p99.9 from 0, 0.25, 0.5 and 0.75 of the ops on",
      metavar="auto|minmax|p99.99|p99.9[@FROM]"),
    Option("bias_correction", "auto", "correct each layer's bias for the mean shift that rounding its weights to int8 "
      "causes (tflite-int8, onnx-int8); auto: tried when the fully quantized file misses the parity budget on the "
      "validation split, kept when it brings the file closer to the Keras model there", choices=("auto", "on", "off")),
    *PARITY_OPTIONS,
    Option("fallback", True, "quantize every op, even when the variant misses the parity budget", action="store_false",
      flag="--no-fallback", group="accuracy-aware fallback"),
    Option("abstain", True, "never answer \"unknown\": calibrate only", action="store_false", flag="--no-abstain",
           group="decision rule"),
    Option("coverage", 0.95, "without --unknown: the share of validation images the model still answers; the "
           "threshold on calibrated confidence is the highest that does", type=float, group="decision rule", low=0,
           high=1, above=True),
    Option("unknown", None, "a folder of images the model must not name (other species, empty frames, other objects): "
           "the threshold rises until it names at most --unknown-named of them", group="decision rule", make="UNKNOWN"),
    Option("unknown_named", 0.10, "with --unknown: the largest share of them the rule may name", type=float,
           group="decision rule", low=0, high=1),
    Option("min_coverage", 0.90, "with --unknown: but the rule answers at least this share of validation images",
           type=float, group="decision rule", low=0, high=1),
    Option("review_share", 0.10, "answers among the least confident this share of validation answers are flagged for "
           "review (watch's review file)", type=float, group="decision rule", low=0, high=1),
    Option("fallback_seconds", 180.0, "run the single-op search (after the float tail) only if ranking the ops should "
      "take at most this long (about one quantization per op)", type=float, group="accuracy-aware fallback", low=0),
    Option("fallback_cap", 0.25, "at most this share of the candidate ops stays float", type=float,
      group="accuracy-aware fallback", low=0, high=1, above=True),
)

BENCHMARK = (
    RUN, VARIANTS, *PARITY_OPTIONS,
    Option("enforce", True, "report parity failures without failing", action="store_false", flag="--no-gate"),
    Option("field", None, "photos from where the model will be used, one folder per species: folders named like a class "
           "count as it, others as species it must not name; every file's field figures, and its decisions join the "
           "gate", group="field", make="FIELD"),
    Option("unknown", None, "images the model must not name: every file's decisions on them join the gate (default: "
           "the folder export tuned the rule on, if any)", group="field", make="UNKNOWN"),
    Option("max_ece_gap", 0.02, "a file's calibration error (ECE, test split) at most this above the Keras model's",
           type=float, group="parity budget", low=0),
    Option("accept_inconclusive", False, "pass when the test split is too small for the gate to judge (fewer images than "
      "the budget needs; docs/benchmark.md) instead of failing as inconclusive", action="store_true"),
    Option("tune", True, "measure with the runtime libraries' default settings instead of trying each (XNNPACK on/off, "
      "ONNX Runtime graph optimization level) and keeping this machine's fastest", action="store_false",
      flag="--no-tune"),
    Option("robustness", True, "measure agreement with the Keras model under corruptions of the test images (noise, blur, "
      "JPEG, brightness, contrast, downscaling; 3 severities each)", action="bool", group="robustness"),
    Option("robustness_images", 32, "test images corrupted for that, spread over the classes", type=int,
           group="robustness", low=1),
    Option("robustness_min_agreement", None, "fail a variant whose agreement with Keras falls below this under any "
      "corruption (default: reported, not gated)", type=float, group="robustness", low=0, high=1),
    Option("threads", None, "the 'all cores' thread count (default: the cores this process may use)", type=int,
      group="timing", low=1),
    Option("batch", 16, "batch size for accuracy and throughput", type=int, group="timing", low=1),
    Option("warmup", TIMING["warmup"], "untimed calls before timing", type=int, group="timing", low=0),
    Option("min_runs", TIMING["min_runs"], "timed calls per latency figure, at least", type=int, group="timing", low=1),
    Option("min_seconds", TIMING["min_seconds"], "and at least this long", type=float, group="timing", low=0),
    Option("ci", TIMING["ci"], "then stop once the median's 95%% interval is within this fraction of it", type=float,
      group="timing", low=0),
    Option("max_seconds", TIMING["max_seconds"], "but no longer than this per figure", type=float,
           group="timing", low=0),
)

BUNDLE = (
    RUN,
    Option("variant", None, "pack exactly this one exported variant (measured or not; the bundle README says which)",
      make="VARIANT"),
    Option("variants", None, "comma-separated candidates instead of the default set (the full-integer files and one float "
      "file that passed the gate)", make="CANDIDATES"),
    Option("images", 8, "reference images for the device's selfcheck", type=int, low=1),
    Option("dist", "dist", "output folder"),
)

PI_CHECK = (
    RUN,
    Option("variant", None, "check a bundle of this one variant (default: the default candidates)", make="VARIANT"),
    Option("dist", "dist", "where the bundle is written"),
    Option("cache", None, "emulated userland and aarch64 packages (default ~/.cache/edgeclf/pi)"),
)

SERVE_CHECK = (
    RUN,
    Option("requests", "400,1000,2000", "uploads at concurrency 1, 4 and 16"),
    Option("seconds", 30.0, "at most this long per concurrency", type=float, low=0, above=True),
)

SCALE_CHECK = (
    Option("classes", 300, "classes of the generated dataset", type=int, low=2),
    Option("per_class", 67, "images per class (67: 20,100 images with 300 classes)", type=int, low=10),
    Option("data", None, "dataset folder (default data/scale-<classes>x<per-class>)"),
    Option("run", "runs/scale-check", "this check's own run folder, replaced on each check"),
    Option("backbone", "resnet50", "backbone to train"),
    Option("image_size", 32, "input size", type=int, low=32),
    Option("epochs", 1, "epochs of phase 1", type=int, low=1),
    Option("batch_size", 64, "batch size", type=int, low=1),
    Option("variant", "tflite-int8", "the one variant exported and benchmarked"),
)

COMMANDS = {"train": TRAIN, "export": EXPORT, "benchmark": BENCHMARK, "bundle": BUNDLE, "pi-check": PI_CHECK,
            "serve-check": SERVE_CHECK, "scale-check": SCALE_CHECK}


def by_name(command):
    return {o.name: o for o in COMMANDS[command]}


def defaults(command, demo=False):
    """{name: default} of a command's options (the demo's defaults where they differ and demo is set)."""
    return {o.name: (o.demo if demo and o.demo is not NOTSET else o.default) for o in COMMANDS[command]}


# ---------------------------------------------------------------------------------------- argparse
def add_options(parser, command):
    """Add a command's options to an argparse parser, grouped, with generated help. Defaults are left out
    of the namespace (argparse.SUPPRESS), so `given()` tells what was on the command line."""
    groups = {}
    for o in COMMANDS[command]:
        target = parser
        if o.group:
            target = groups.setdefault(o.group, parser.add_argument_group(o.group))
        text = argparse.SUPPRESS if o.hidden else o.help + (f" ({o.default_text()})" if o.default_text() else "")
        kw = {"dest": o.name, "default": argparse.SUPPRESS, "help": text}
        if o.action == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        elif o.action:
            kw["action"] = o.action
        else:
            kw.update(type=o.type or str, choices=o.choices, metavar=o.metavar)
        target.add_argument(*o.flags, **{k: v for k, v in kw.items() if v is not None})
    parser.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="a recipe: TOML or JSON of these options (a run's config.json is one); flags override it")


def given(namespace, command):
    """The options set on the command line, by name."""
    names = by_name(command)
    return {k: v for k, v in vars(namespace).items() if k in names}


# A run's config.json records these besides the options; a recipe may hold them, and they are not options.
RECORDED = {"classes", "class_weights", "preprocessing", "versions", "started_at", "command", "demo", "precision",
            "split_sha256", "precision_why"}
RENAMED = {"data_root": "data"}  # config.json's name -> the option's
CONFIG_NAME = {v: k for k, v in RENAMED.items()}  # the option's name -> config.json's


def read_config(path, command):
    """The options a recipe file sets for `command`: TOML or JSON, flat, or with a table named after it."""
    import tomllib

    path = Path(path)
    if not path.is_file():
        raise InputError(f"--config {path}: no such file")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8")) if path.suffix.lower() == ".toml" else json.loads(
            path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"--config {path}: not valid "
                         f"{'TOML' if path.suffix.lower() == '.toml' else 'JSON'} ({e})") from None
    if not isinstance(raw, dict):
        raise InputError(f"--config {path}: expected a table of options")
    table = raw.get(command) if isinstance(raw.get(command), dict) else raw
    if "started_at" in table:  # a run's own config.json: its folder and the data as typed are records, not a recipe
        table = {k: v for k, v in table.items() if k not in ("run", "data")}
    names, out = by_name(command), {}
    for key, value in table.items():
        key = RENAMED.get(key, key)
        if key in names:
            out[key] = value
        elif key not in RECORDED and key not in COMMANDS:
            raise InputError(f"--config {path}: {key!r} is not an option of {command} (known: {', '.join(sorted(names))})")
    if isinstance(out.get("image_size"), list):  # config.json records the resolved [height, width]
        out["image_size"] = "x".join(str(v) for v in out["image_size"])
    return out


def collect(command, options, config=None):
    """Explicit options: the recipe's, overridden by those given; unknown names are an error."""
    names = by_name(command)
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise InputError(f"{command}: unknown option {unknown[0]!r} (known: {', '.join(sorted(names))})")
    return {**(read_config(config, command) if config else {}), **options}


# ---------------------------------------------------------------------------------------- resolved once
def check(command, values):
    """Each value within its option's bounds: one error line for the first that is not."""
    for o in COMMANDS[command]:
        if o.name in values:
            o.check(values[o.name])


_CONFIG_CLASSES = {}


def config_class(command):
    """The frozen, typed configuration of a command, one field per option (ExportConfig, BenchmarkConfig, ...)."""
    if command not in _CONFIG_CLASSES:
        name = "".join(part.title() for part in command.split("-")) + "Config"
        fields = [(o.name, o.type or (bool if o.action else str)) for o in COMMANDS[command]]
        _CONFIG_CLASSES[command] = make_dataclass(name, fields, frozen=True)
    return _CONFIG_CLASSES[command]


def resolve(command, explicit, demo=False):
    """The command's configuration: explicit options (from collect()) over the defaults (the demo's when
    `demo`), each checked against its bounds. Made once at the API boundary and passed down, never merged again."""
    values = {**defaults(command, demo), **explicit}
    check(command, values)
    return config_class(command)(**values)


def resume_keys():
    """The config.json keys that must match for an interrupted run to be resumed."""
    return tuple(CONFIG_NAME.get(o.name, o.name) for o in TRAIN if o.resume)
