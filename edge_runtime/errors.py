"""The one exception type for bad input, shared by every command line in the project.

Commands catch it at the top and print its message as a single line with exit code 2,
so users see what is wrong instead of a traceback.
"""
import sys


class InputError(Exception):
    """A problem with what the user gave us: a path, an image, a model, a dataset."""


def printable(text):
    """Text safe to print on any terminal: a file name's undecodable bytes (kept by Python as lone surrogates)
    shown as \\xNN escapes instead of failing the print."""
    return str(text).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def tolerant_output():
    """stdout and stderr that escape what their encoding cannot show rather than raise (a strict UTF-8 or ASCII
    locale and a name that is not UTF-8): one odd file name never ends a run."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def exit_code(fn, *args):
    """Run a command's body: its return value (None is 0), or 2 after one `error:` line for an InputError."""
    try:
        return fn(*args) or 0
    except InputError as e:
        print(f"error: {printable(e)}", file=sys.stderr)
        return 2
