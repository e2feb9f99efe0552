"""tf.data input: parallel decoding through the preprocessing contract, cache, shuffle, augment, prefetch."""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from runlib.tf_setup import import_tensorflow

from edge_runtime.preprocess import load_pixels

tf = import_tensorflow()

AUTOTUNE = tf.data.AUTOTUNE


@dataclass(frozen=True)
class Images:
    """Labelled images of a run: data.Sample rows under root, their class index, the model's input size."""
    root: Path
    samples: list
    class_index: dict
    size: tuple
    fit: str = "squash"  # the contract's (edge_runtime.preprocess.FITS)


def dataset(images, batch_size, training=False, augment=None, seed=0, cache=True):
    """(images float32 0..255, labels int32) batches of `images` (an Images)."""
    h, w = images.size
    paths = [str(Path(images.root) / s.path) for s in images.samples]
    labels = np.array([images.class_index[s.label] for s in images.samples], np.int32)

    def load(path):
        return load_pixels(path.decode(), (h, w), images.fit)  # the very function the device runs

    def decode(path, label):
        img = tf.numpy_function(load, [path], tf.uint8, stateful=False)
        img.set_shape((h, w, 3))
        return img, label

    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    ds = ds.map(decode, num_parallel_calls=AUTOTUNE, deterministic=True)
    if cache:
        ds = ds.cache()  # uint8 in memory: 4x smaller than the float batches
    if training:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=AUTOTUNE)
    if training and augment is not None:
        ds = ds.map(lambda x, y: (augment(x, training=True), y), num_parallel_calls=AUTOTUNE)
    # Several workers: each keeps every Nth batch (a list of paths has no files to shard by).
    opts = tf.data.Options()
    opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(opts).prefetch(AUTOTUNE)


def labels_of(samples, class_index):
    return np.array([class_index[s.label] for s in samples], np.int32)
