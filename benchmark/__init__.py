"""benchmark: accuracy and latency parity of every exported variant against the run's Keras model."""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
