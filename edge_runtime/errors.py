"""The one exception type for bad input, shared by every command line in the project.

Commands catch it at the top and print its message as a single line with exit code 2,
so users see what is wrong instead of a traceback.
"""


class InputError(Exception):
    """A problem with what the user gave us: a path, an image, a model, a dataset."""
