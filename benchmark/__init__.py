"""benchmark: accuracy and latency parity of every exported variant against the run's Keras model."""
import train  # noqa: F401  (sets the TensorFlow environment before any worker loads TensorFlow)
