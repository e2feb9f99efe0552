"""train: fine-tune a keras.applications backbone into a self-contained run folder."""
import os

# tensorflow-model-optimization needs Keras 2 (tf_keras); this must precede any TF import.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
