"""TensorFlow, set up the same way for every stage: the one place it is imported, quietly.

Importing a package of this project sets nothing; `import_tensorflow()` (and `import_keras()`) first sets
the environment TensorFlow reads at import, then imports it. Every module that needs TensorFlow or Keras
gets it from here, so the settings always precede the import.
"""
import os
import sys


def configure():
    """The environment TensorFlow reads when it is imported; values already set are left alone."""
    # tensorflow-model-optimization needs Keras 2 (tf_keras); this must precede any TF import.
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not os.path.exists("/dev/nvidia0") and not os.path.exists("/dev/nvidiactl"):
        # No NVIDIA device: hide CUDA so TensorFlow does not print "failed call to cuInit ... (303)",
        # an error line that only means "no GPU here". Machines with a GPU are left alone.
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


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
    configure()
    with quiet_fds(2):
        import tensorflow as tf
        tf.config.list_physical_devices("GPU")  # the CUDA probe, also chatty, while stderr is quiet
    return tf


def import_keras():
    """Keras 2 (tf_keras), after TensorFlow is set up and imported."""
    import_tensorflow()
    import tf_keras

    return tf_keras


def device_summary():
    tf = import_tensorflow()
    gpus = tf.config.list_physical_devices("GPU")
    return f"{len(gpus)} GPU(s): {', '.join(g.name for g in gpus)}" if gpus else "the CPU (no GPU found)"
