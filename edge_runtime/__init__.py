"""edge_runtime: what ships to the device. Pillow and numpy plus one inference runtime.

It imports nothing from train/, export/ or benchmark/, and TensorFlow only as the last
fallback for loading a .tflite model.
"""
__version__ = "0.19.0"  # the project's version: the edgeclf and edgeclf-runtime distributions share it

from .errors import InputError
from .preprocess import load_pixels, load_batch, contract

__all__ = ["InputError", "load_pixels", "load_batch", "contract", "Classifier"]


def __getattr__(name):  # Classifier imports numpy-heavy backends lazily
    if name == "Classifier":
        from .classifier import Classifier
        return Classifier
    raise AttributeError(name)
