"""python -m benchmark [options]: the same as `edgeclf benchmark`."""
import sys

from benchmark.command import run_command
from runlib.command import main

if __name__ == "__main__":
    sys.exit(main("benchmark", run_command))
