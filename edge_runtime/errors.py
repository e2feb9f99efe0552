"""The one exception type for bad input, shared by every command line in the project.

Commands catch it at the top and print its message as a single line with exit code 2,
so users see what is wrong instead of a traceback.
"""
import sys


class InputError(Exception):
    """A problem with what the user gave us: a path, an image, a model, a dataset."""


def exit_code(fn, *args):
    """Run a command's body: its return value (None is 0), or 2 after one `error:` line for an InputError."""
    try:
        return fn(*args) or 0
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
