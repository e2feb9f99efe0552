"""python -m edge_runtime COMMAND ...: see edge_runtime/cli.py."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
