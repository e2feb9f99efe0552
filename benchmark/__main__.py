"""python -m benchmark [options]: the same as `edgeclf benchmark`."""
import sys

from train.cli import main

if __name__ == "__main__":
    sys.exit(main(["benchmark", *sys.argv[1:]]))
