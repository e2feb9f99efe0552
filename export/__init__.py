"""export: turn a training run into deployable TFLite and ONNX variants, listed in a manifest."""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
