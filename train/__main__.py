"""python -m train [options]: the same as `edgeclf train` (and `python -m train preview-augment`)."""
import sys

from runlib.command import main as command_main
from train.command import run_command


def main(argv=None):
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["preview-augment"]:
        import argparse

        from runlib.command import run, verbosity_options
        from train.command import add_preview

        parser = argparse.ArgumentParser(prog="python -m train")
        verbosity_options(parser)
        add_preview(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
        return run(parser, args)
    return command_main("train", run_command, args)


if __name__ == "__main__":
    sys.exit(main())
