"""Training-time augmentation: Keras preprocessing layers applied in the tf.data pipeline only.

They never enter the saved model, so the exported models stay plain classifiers.
"""
import numpy as np
from runlib.tf_setup import import_keras

keras = import_keras()


def augmenter(strength, seed=0, flip=True):
    """A Sequential of random flip/rotation/zoom/translation/contrast, or None when strength is 0.

    flip=False leaves out the mirror image, for classes that flipping changes (digits, text).
    """
    if strength <= 0:
        return None
    s = float(strength)
    L = keras.layers
    f32 = {"dtype": "float32"}  # the input pipeline's arithmetic, whatever precision the model trains in
    return keras.Sequential(([L.RandomFlip("horizontal", seed=seed, **f32)] if flip else []) + [
        L.RandomRotation(0.08 * s, fill_mode="reflect", seed=seed + 1, **f32),
        L.RandomZoom((-0.15 * s, 0.15 * s), fill_mode="reflect", seed=seed + 2, **f32),
        L.RandomTranslation(0.1 * s, 0.1 * s, fill_mode="reflect", seed=seed + 3, **f32),
        L.RandomContrast(min(0.9, 0.2 * s), seed=seed + 4, **f32),
    ], name="augment")


def preview(images, strength, path, per_image=5, seed=0, flip=True):
    """A PNG grid: each row an original image then `per_image` augmented versions."""
    from runlib.plots import plt, save

    aug = augmenter(strength, seed, flip)
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
