"""train: fine-tune a keras.applications backbone into a self-contained run folder.

Importing it sets nothing; TensorFlow is set up where it is imported (runlib/tf_setup.py).
"""


def train(**options):
    """Fine-tune a backbone on a folder of labelled images into a run folder; returns a TrainResult.

    The keywords are the options of `edgeclf train` (runlib/options.py; `edgeclf train --help`), e.g.
    train(data="photos/", backbone="mobilenet", image_size=224, weights="mobilenet.h5", run="runs/photos").
    config="recipe.toml" (or a run's config.json) supplies options the keywords do not. Without data,
    the built-in demo dataset. Bad input raises edge_runtime.InputError with a one-line message.
    """
    from .fit import train_run
    from runlib.options import collect
    from runlib.results import TrainResult

    config = options.pop("config", None)
    return TrainResult(train_run(collect("train", options, config)))
