"""export: turn a training run into deployable TFLite and ONNX variants, listed in a manifest."""
import train  # noqa: F401  (sets the TensorFlow environment before anything imports it)
