"""python -m export [options]: the same as `edgeclf export`."""
import sys

from export.command import run_command
from runlib.command import main

if __name__ == "__main__":
    sys.exit(main("export", run_command))
