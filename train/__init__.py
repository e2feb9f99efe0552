"""train: fine-tune a keras.applications backbone into a self-contained run folder.

Importing this package sets TensorFlow's environment for the whole project (export and
benchmark import it too): Keras 2 through tf_keras, and quiet start-up on machines without a GPU.
`train/shared/` holds what every stage uses (the run folder, metrics, plots, options, progress).
"""
import os

# tensorflow-model-optimization needs Keras 2 (tf_keras); this must precede any TF import.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if not os.path.exists("/dev/nvidia0") and not os.path.exists("/dev/nvidiactl"):
    # No NVIDIA device: hide CUDA so TensorFlow does not print "failed call to cuInit ... (303)",
    # an error line that only means "no GPU here". Machines with a GPU are left alone.
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


def train(**options):
    """Fine-tune a backbone on a folder of labelled images into a run folder; returns a TrainResult.

    The keywords are the options of `edgeclf train` (train/shared/options.py; `edgeclf train --help`), e.g.
    train(data="photos/", backbone="mobilenet", image_size=224, weights="mobilenet.h5", run="runs/photos").
    config="recipe.toml" (or a run's config.json) supplies options the keywords do not. Without data,
    the built-in demo dataset. Bad input raises edge_runtime.InputError with a one-line message.
    """
    from .fit import train as fit
    from .shared.options import collect
    from .shared.results import TrainResult

    config = options.pop("config", None)
    return TrainResult(fit(collect("train", options, config)))
