"""python -m train [options]: the same as `edgeclf train` (and `python -m train preview-augment`)."""
import sys


def main(argv=None):
    from train.cli import main as cli

    args = sys.argv[1:] if argv is None else list(argv)
    return cli(args if args[:1] == ["preview-augment"] else ["train", *args])


if __name__ == "__main__":
    sys.exit(main())
