"""python -m export [options]: the same as `edgeclf export`."""
import sys

from train.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
