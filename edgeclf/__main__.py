"""python -m edgeclf COMMAND ...: the same as `edgeclf COMMAND ...`."""
import sys

from edgeclf.cli import main

if __name__ == "__main__":
    sys.exit(main())
