"""A host command as a program: its parser from the option table, verbosity, and the exit code.

`edgeclf` (edgeclf/cli.py) puts every command under one parser; `python -m train`, `python -m export` and
`python -m benchmark` run one command each through `main()`. Both read the same table (runlib/options.py) and
the same runners (each stage's `command.run_command`), so the two spellings cannot drift apart.
"""
import argparse
import sys

from edge_runtime.errors import exit_code, tolerant_output

from . import progress
from .options import add_options, collect, given

# (summary, examples) of each host command; the examples end its --help
SUMMARIES = {
    "train": ("fine-tune a backbone on a folder of labelled images into runs/<name>/", [
        "edgeclf train                                          # the built-in demo dataset",
        "edgeclf train --data photos/ --backbone mobilenet --alpha 0.25 --weights mobilenet.h5",
        "edgeclf train --config runs/photos/config.json --run runs/photos-again   # a run again",
        "edgeclf train --config recipe.toml --seed 1            # flags override the recipe"]),
    "export": ("export a run to TFLite and ONNX variants, each checked against the Keras model", [
        "edgeclf export --run runs/photos",
        "edgeclf export --run runs/photos --variants tflite-int8,onnx-int8 --max-drop 2"]),
    "benchmark": ("accuracy and latency of every variant on the run's test split, and the parity gate", [
        "edgeclf benchmark --run runs/photos",
        "edgeclf benchmark --run runs/photos --variants tflite-int8 --no-gate"]),
    "bundle": ("pack a run for a device: the gate-passing candidates, reference outputs, the runtime wheel", [
        "edgeclf bundle --run runs/photos                  # dist/photos.tar.gz",
        "edgeclf bundle --run runs/photos --variant tflite-int8"]),
    "pi-check": ("the bundle's selfcheck, select and serve on an emulated Raspberry Pi (qemu, needs root)", [
        "edgeclf pi-check --run runs/photos"]),
    "serve-check": ("the device service under load and faults on 127.0.0.1, with the figures", [
        "edgeclf serve-check --run runs/photos"]),
    "scale-check": ("a generated many-class dataset through train, export and benchmark", [
        "edgeclf scale-check --classes 1000 --per-class 50 --image-size 64"]),
}


def add_command(sub, name, runner):
    """Add host command `name` to an argparse subparsers object; its handler calls runner(options)."""
    summary, examples = SUMMARIES[name]
    s = sub.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".",
                       epilog="examples:\n  " + "\n  ".join(examples), formatter_class=argparse.RawDescriptionHelpFormatter)
    _fill(s, name, runner)
    return s


def _fill(parser, name, runner):
    add_options(parser, name)
    parser.set_defaults(handler=lambda a: runner(collect(name, given(a, name), getattr(a, "config", None))),
                        command=name)


def verbosity_options(parser):
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings, errors and results")
    parser.add_argument("-v", "--verbose", action="store_true", help="more detail")


def run(parser, argv=None):
    """Parse argv, set the verbosity, run the chosen handler: its exit code, 2 for bad input, 130 if interrupted."""
    tolerant_output()
    args = parser.parse_args(argv)
    progress.set_verbosity(progress.QUIET if args.quiet else progress.VERBOSE if args.verbose else progress.NORMAL)
    try:
        return exit_code(args.handler, args)
    except KeyboardInterrupt:
        what = "run the same command again to resume from the last checkpoint" if args.command == "train" else "stopped"
        print(f"\ninterrupted: {what}", file=sys.stderr)
        return 130


def main(name, runner, argv=None):
    """`python -m STAGE`: the one host command `name` as a program (the same as `edgeclf NAME`)."""
    summary, examples = SUMMARIES[name]
    parser = argparse.ArgumentParser(prog=f"python -m {name}", description=f"The same as `edgeclf {name}`: {summary}.",
                                     epilog="examples:\n  " + "\n  ".join(examples),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    verbosity_options(parser)
    _fill(parser, name, runner)
    return run(parser, argv)
