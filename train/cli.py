"""edgeclf: the project's one command. `edgeclf COMMAND --help` for each.

Every host command's options come from train/shared/options.py; the device's (predict, serve, select,
selfcheck, watch, info) from edge_runtime/cli.py, the code that ships. Each command is a thin layer
over the Python API: train.train(), export.export(), benchmark.benchmark() and export.bundle.build().
"""
import argparse
import sys

from edge_runtime.errors import InputError, exit_code

from .shared import progress
from .shared.options import add_options, collect, given

# (summary, examples) of each host command; the examples end its --help
HOST = {
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


def _run_train(o):
    import train

    r = train.train(**o)
    return 0 if r.run else 1


def _run_export(o):
    import export

    r = export.export(**o)
    log = progress.logger("export")
    log(f"manifest: {r.run.export_manifest}")
    if r.failed:
        print(f"error: export failed for {', '.join(r.failed)} (see the manifest and {r.run.export_dir}/*.error.log)",
              file=sys.stderr)
        return 1
    return 0


def _run_benchmark(o):
    import benchmark
    from benchmark.report import headline

    r = benchmark.benchmark(**o)
    log = progress.logger("benchmark")
    log(f"report: {r.run.benchmark_dir / 'report.md'} (+ report.json, report.csv and plots)")
    print(headline(r.report), flush=True)
    integer = r.recommendation.get("integer")
    if integer:
        log(f"integer file: {integer['variant']}: {integer['why']}" if integer["variant"] else f"integer file: {integer['why']}")
    g = r.report["gate"]
    if r.failures:
        msg = "; ".join(f"{k}: {', '.join(v)}" for k, v in r.failures.items())
        if g["enforced"]:
            print(f"error: parity gate failed for {', '.join(r.failures)} ({msg})", file=sys.stderr)
            return 1
        log(f"parity misses (not enforced, --no-gate): {msg}")
    elif r.inconclusive:
        msg = (f"{g['images']} test images cannot resolve the parity budget (it needs at least {g['images_needed']}: "
               f"{g['rule']})")
        if g["enforced"] and not g["inconclusive_accepted"]:
            print(f"error: parity gate inconclusive: {msg}; --accept-inconclusive reports it without failing",
                  file=sys.stderr)
            return 1
        log(f"parity gate inconclusive, accepted: {msg}")
    else:
        log("parity gate passed")
    return 0


def _run_bundle(o):
    from export.bundle import run_command

    return run_command(o)


def _run_pi_check(o):
    from benchmark.pi_check import run_command

    return run_command(o)


def _run_serve_check(o):
    from benchmark.serve_check import run_command

    return run_command(o)


def _run_scale_check(o):
    from benchmark.scale_check import run_command

    return run_command(o)


RUNNERS = {"train": _run_train, "export": _run_export, "benchmark": _run_benchmark, "bundle": _run_bundle,
           "pi-check": _run_pi_check, "serve-check": _run_serve_check, "scale-check": _run_scale_check}


def _preview(sub):
    p = sub.add_parser("preview-augment", help="a PNG grid of augmented training samples",
                       description="A PNG grid of augmented training samples.")
    p.add_argument("--data", help="class-per-folder image tree (default: the demo dataset)")
    p.add_argument("--image-size", default="224", help="input size (default 224)")
    p.add_argument("--augment", type=float, default=1.0, help="strength (default 1)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True, help="include random mirror images")
    p.add_argument("--count", type=int, default=6, help="how many images (rows; default 6)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="augment_preview.png")
    p.set_defaults(handler=lambda a: _preview_run(a))


def _preview_run(a):
    from pathlib import Path

    from edge_runtime.preprocess import load_pixels

    from .augment import preview
    from .config import parse_size
    from .data import list_folder, scan

    if not a.data:
        from .demo import make_demo
        a.data = str(make_demo(Path("data") / "demo-digits"))
    entries, _ = list_folder(a.data)
    samples, _ = scan(entries[:: max(1, len(entries) // (a.count * 3))][: a.count * 3], a.data)
    if not samples:
        raise InputError(f"no readable images in {a.data}")
    size = parse_size(a.image_size)
    preview([load_pixels(Path(a.data) / s.path, size) for s in samples[: a.count]], a.augment, a.out, seed=a.seed,
            flip=a.flip)
    print(f"wrote {a.out}")
    return 0


def parser(prog="edgeclf"):
    from edge_runtime import cli as device

    p = argparse.ArgumentParser(prog=prog, description="From a folder of labelled photos to a fast, verified "
                                "classifier on a Raspberry Pi or a phone.", epilog=(
                                    "typical use:\n  edgeclf train --data photos/ && edgeclf export && edgeclf benchmark"
                                    " && edgeclf bundle\n  then, on the device: edgeclf-runtime selfcheck, select, "
                                    "predict or serve (python -m edge_runtime ...)"),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings, errors and results")
    p.add_argument("-v", "--verbose", action="store_true", help="more detail")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (summary, examples) in HOST.items():
        s = sub.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".",
                           epilog="examples:\n  " + "\n  ".join(examples), formatter_class=argparse.RawDescriptionHelpFormatter)
        add_options(s, name)
        s.set_defaults(handler=lambda a, name=name: _host(name, a))
    _preview(sub)
    device.add_commands(sub)
    return p


def _host(name, args):
    """Options given on the command line over a --config recipe's; each runner adds the defaults."""
    return RUNNERS[name](collect(name, given(args, name), getattr(args, "config", None)))


def main(argv=None, prog="edgeclf"):
    args = parser(prog).parse_args(argv)
    progress.set_verbosity(progress.QUIET if args.quiet else progress.VERBOSE if args.verbose else progress.NORMAL)
    try:
        return exit_code(args.handler, args)
    except KeyboardInterrupt:
        what = "run the same command again to resume from the last checkpoint" if args.command == "train" else "stopped"
        print(f"\ninterrupted: {what}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
