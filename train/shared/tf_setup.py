"""TensorFlow, set up the same way for every stage: imported quietly, and where training runs."""
import os
import sys


class quiet_fds:
    """Keep C++ chatter written straight to file descriptors (1 and 2 by default), not through Python,
    off the terminal; they are restored on the way out, also when the block raises."""

    def __init__(self, *fds):
        self.fds = fds or (1, 2)

    def __enter__(self):
        sys.stdout.flush()
        sys.stderr.flush()
        self.saved = [os.dup(fd) for fd in self.fds]
        null = os.open(os.devnull, os.O_WRONLY)
        for fd in self.fds:
            os.dup2(null, fd)
        os.close(null)
        return self

    def __exit__(self, *exc):
        for fd, saved in zip(self.fds, self.saved):
            os.dup2(saved, fd)
            os.close(saved)
        return False


def import_tensorflow():
    """TensorFlow, imported with its C++ start-up chatter (written to fd 2 before its logging is
    configured) kept off the terminal. A failing import still raises, after stderr is restored."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    with quiet_fds(2):
        import tensorflow as tf
        tf.config.list_physical_devices("GPU")  # the CUDA probe, also chatty, while stderr is quiet
    return tf


def device_summary():
    tf = import_tensorflow()
    gpus = tf.config.list_physical_devices("GPU")
    return f"{len(gpus)} GPU(s): {', '.join(g.name for g in gpus)}" if gpus else "the CPU (no GPU found)"
