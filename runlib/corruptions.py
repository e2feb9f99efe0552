"""Real-world inputs: a fixed, seeded set of corruptions of the test pixels, three severities each, after
ImageNet-C (Hendrycks and Dietterich, 2019): camera-trap photos are noisy, blurred, badly exposed and heavily
compressed, and integer files calibrated on clean photos can part from the float model on them.

Each corruption takes uint8 pixels at the model's input size (N, H, W, 3) and a severity 1..3, and returns
uint8 pixels; the randomness (the noise) comes from a generator seeded by the corruption, severity and seed,
so the same seed gives the same images.
"""
import io

import numpy as np


def gaussian_noise(x, s, rng):
    sigma = (8, 16, 28)[s - 1]
    return np.clip(x + rng.normal(0, sigma, x.shape), 0, 255)


def defocus_blur(x, s, rng):
    from PIL import ImageFilter

    radius = (0.8, 1.5, 2.5)[s - 1] * x.shape[1] / 224  # relative to a 224 px image
    return _each(x, lambda im: im.filter(ImageFilter.GaussianBlur(radius)))


def motion_blur(x, s, rng):
    k = max(2, round((5, 9, 15)[s - 1] * x.shape[2] / 224))
    kernel = np.full(k, 1.0 / k)
    out = np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="same"), 2, x.astype(np.float32))
    return out


def jpeg(x, s, rng):
    quality = (30, 15, 7)[s - 1]

    def recompress(im):
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=quality)
        buf.seek(0)
        from PIL import Image

        return Image.open(buf).convert("RGB")

    return _each(x, recompress)


def brightness_up(x, s, rng):
    return np.clip(x.astype(np.float32) * (1.3, 1.6, 2.0)[s - 1], 0, 255)


def brightness_down(x, s, rng):
    return x.astype(np.float32) * (0.7, 0.5, 0.3)[s - 1]


def contrast(x, s, rng):
    c = (0.6, 0.4, 0.25)[s - 1]
    mean = x.reshape(len(x), -1).mean(1)[:, None, None, None]
    return (x - mean) * c + mean


def downscale(x, s, rng):
    from PIL import Image

    f = (2, 3, 4)[s - 1]
    h, w = x.shape[1:3]
    return _each(x, lambda im: im.resize((max(1, w // f), max(1, h // f)), Image.BILINEAR).resize((w, h), Image.BILINEAR))


def _each(x, fn):
    from PIL import Image

    return np.stack([np.asarray(fn(Image.fromarray(img)), np.float32) for img in x])


CORRUPTIONS = {"gaussian_noise": gaussian_noise, "defocus_blur": defocus_blur, "motion_blur": motion_blur,
               "jpeg": jpeg, "brightness_up": brightness_up, "brightness_down": brightness_down,
               "contrast": contrast, "downscale": downscale}
SEVERITIES = (1, 2, 3)


def corrupt(pixels, name, severity, seed=0):
    """The pixels under one corruption at one severity, as uint8; the same for the same seed."""
    key = list(CORRUPTIONS).index(name) * 10 + severity
    rng = np.random.default_rng([seed, key])
    out = CORRUPTIONS[name](np.asarray(pixels, np.uint8), severity, rng)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def corrupted_set(pixels, seed=0):
    """(names like 'jpeg/2', uint8 array of every corruption and severity stacked along the image axis)."""
    names, parts = [], []
    for name in CORRUPTIONS:
        for s in SEVERITIES:
            names.append(f"{name}/{s}")
            parts.append(corrupt(pixels, name, s, seed))
    return names, np.concatenate(parts)


def one_each(pixels, seed=0, severity=2):
    """Each image under one corruption in turn (image i under the (i mod 8)th), at one severity: photos like a
    field's, as many as there are images, for checks that cannot afford every corruption of every image."""
    pixels = np.asarray(pixels, np.uint8)
    out = pixels.copy()
    names = list(CORRUPTIONS)
    for k, name in enumerate(names):
        idx = np.arange(k, len(pixels), len(names))
        if len(idx):
            out[idx] = corrupt(pixels[idx], name, severity, seed)
    return out


def pick(labels, count):
    """Indices of `count` test images spread evenly over the classes (all when fewer), in a fixed order."""
    labels = np.asarray(labels)
    if count >= len(labels):
        return np.arange(len(labels))
    order = np.lexsort((np.arange(len(labels)), labels))  # by class, then position
    by_class = [order[labels[order] == c] for c in np.unique(labels)]
    picked, k = [], 0
    while len(picked) < count:
        for idx in by_class:
            if k < len(idx) and len(picked) < count:
                picked.append(int(idx[k]))
        k += 1
    return np.array(sorted(picked))
