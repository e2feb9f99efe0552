"""Training-time augmentation: Keras preprocessing layers applied in the tf.data pipeline only.

They never enter the saved model, so the exported models stay plain classifiers.
"""
import numpy as np
from runlib.tf_setup import import_keras

keras = import_keras()


class CameraJitter(keras.layers.Layer):
    """What another camera and another light change, per image of a batch (0..255 floats): each channel's gain
    (white balance), saturation, a 3x3 blur on some images and sensor noise. Active only when training."""

    def __init__(self, strength=1.0, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.strength, self.seed = float(strength), int(seed)

    def call(self, x, training=None):
        if not training:
            return x
        import tensorflow as tf

        s, n = self.strength, tf.shape(x)[0]

        def uniform(shape, low, high, k):
            return tf.random.uniform(shape, low, high, seed=self.seed + k)

        x = x * uniform([n, 1, 1, 3], 1 - 0.12 * s, 1 + 0.12 * s, 1)
        grey = tf.reduce_mean(x, axis=-1, keepdims=True)
        x = grey + (x - grey) * uniform([n, 1, 1, 1], max(0.0, 1 - 0.4 * s), 1 + 0.4 * s, 2)
        blurred = tf.nn.avg_pool2d(x, 3, 1, "SAME")
        x = tf.where(uniform([n, 1, 1, 1], 0, 1, 3) < 0.25 * min(s, 2.0), blurred, x)
        x = x + tf.random.normal(tf.shape(x), 0.0, 1.0, seed=self.seed + 4) * uniform([n, 1, 1, 1], 0, 6 * s, 5)
        return tf.clip_by_value(x, 0.0, 255.0)

    def get_config(self):
        return dict(super().get_config(), strength=self.strength, seed=self.seed)


def augmenter(strength, seed=0, flip=True, style="basic"):
    """A Sequential of random flip/rotation/zoom/translation/contrast, or None when strength is 0.

    flip=False leaves out the mirror image, for classes that flipping changes (digits, text). style "field"
    zooms in further (a random resized crop: photos elsewhere frame the subject otherwise) and adds brightness
    and CameraJitter.
    """
    if strength <= 0:
        return None
    s = float(strength)
    L = keras.layers
    f32 = {"dtype": "float32"}  # the input pipeline's arithmetic, whatever precision the model trains in
    field = style == "field"
    zoom = (-0.4 * s, 0.15 * s) if field else (-0.15 * s, 0.15 * s)
    layers = ([L.RandomFlip("horizontal", seed=seed, **f32)] if flip else []) + [
        L.RandomRotation(0.08 * s, fill_mode="reflect", seed=seed + 1, **f32),
        L.RandomZoom(zoom, fill_mode="reflect", seed=seed + 2, **f32),
        L.RandomTranslation(0.1 * s, 0.1 * s, fill_mode="reflect", seed=seed + 3, **f32),
        L.RandomContrast(min(0.9, 0.2 * s), seed=seed + 4, **f32),
    ]
    if field:
        layers += [L.RandomBrightness(min(0.9, 0.2 * s), value_range=(0, 255), seed=seed + 5, **f32),
                   CameraJitter(s, seed=seed + 6, **f32)]
    return keras.Sequential(layers, name="augment")


def preview(images, strength, path, seed=0, flip=True, style="basic"):
    """A PNG grid: each row an original image then 5 augmented versions."""
    from runlib.plots import plt, save

    per_image = 5
    aug = augmenter(strength, seed, flip, style)
    images = np.asarray(images, np.float32)
    cols = per_image + 1
    fig, axes = plt.subplots(len(images), cols, figsize=(1.6 * cols, 1.6 * len(images)), squeeze=False)
    for r, img in enumerate(images):
        versions = [img] + [aug(img[None], training=True)[0].numpy() if aug else img for _ in range(per_image)]
        for c, v in enumerate(versions):
            axes[r][c].imshow(np.clip(v, 0, 255).astype(np.uint8))
            axes[r][c].axis("off")
    axes[0][0].set_title("original", fontsize=8)
    for c in range(1, cols):
        axes[0][c].set_title(f"augmented (x{strength:g})", fontsize=8)
    save(fig, path)
