"""edgeclf: the project's one command. `edgeclf COMMAND --help` for each.

Every host command's options come from runlib/options.py; the device's (predict, serve, select,
selfcheck, watch, info) from edge_runtime/cli.py, the code that ships. Each command is a thin layer
over the Python API: train.train(), export.export(), benchmark.benchmark() and export.bundle.build().
"""
import argparse
import sys

from runlib.command import add_command, run, verbosity_options



def _train(o):
    from train.command import run_command

    return run_command(o)


def _export(o):
    from export.command import run_command

    return run_command(o)


def _benchmark(o):
    from benchmark.command import run_command

    return run_command(o)


def _bundle(o):
    from export.bundle import run_command

    return run_command(o)


def _pi_check(o):
    from checks.pi_check import run_command

    return run_command(o)


def _serve_check(o):
    from checks.serve_check import run_command

    return run_command(o)


def _scale_check(o):
    from checks.scale_check import run_command

    return run_command(o)


RUNNERS = {"train": _train, "export": _export, "benchmark": _benchmark, "bundle": _bundle,
           "pi-check": _pi_check, "serve-check": _serve_check, "scale-check": _scale_check}


def parser(prog="edgeclf"):
    from edge_runtime import cli as device
    from train.command import add_preview

    p = argparse.ArgumentParser(prog=prog, description="From a folder of labelled photos to a fast, verified "
                                "classifier on a Raspberry Pi or a phone.", epilog=(
                                    "typical use:\n  edgeclf train --data photos/ && edgeclf export && edgeclf benchmark"
                                    " && edgeclf bundle\n  then, on the device: edgeclf-runtime selfcheck, select, "
                                    "predict or serve (python -m edge_runtime ...)"),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    verbosity_options(p)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, runner in RUNNERS.items():
        add_command(sub, name, runner)
    add_preview(sub)
    device.add_commands(sub)
    return p


def main(argv=None, prog="edgeclf"):
    return run(parser(prog), argv)


if __name__ == "__main__":
    sys.exit(main())
