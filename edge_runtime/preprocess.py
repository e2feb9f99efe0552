"""The preprocessing contract: the single place where an image becomes model input.

Every model this project trains or exports takes raw RGB pixels (0..255) at a fixed
size; normalisation lives inside the model. Training, export calibration, the
benchmark and the device all call `load_pixels`, so they see identical arrays.
"""
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError

# Recorded in each run's config.json and export manifest; `check_contract` refuses others.
CONTRACT_VERSION = 1
# The image formats decoded. Pillow would open many more (PostScript through Ghostscript, for one) from
# whatever a file says it is; a photo pipeline needs these.
# (Multi-picture JPEGs from phones open as JPEG.)
# The largest image decoded: a 108-megapixel phone photo fits; a file declaring more is refused before it is
# decoded (a few bytes of PNG can declare gigapixels).
MAX_PIXELS = 120_000_000
Image.MAX_IMAGE_PIXELS = None  # MAX_PIXELS is the one limit, checked before decoding
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "AVIF", "GIF", "BMP", "TIFF", "PPM")


def _formats():
    """IMAGE_FORMATS this Pillow can open (AVIF came with Pillow 11.3); every plugin registered first."""
    Image.init()
    return [f for f in IMAGE_FORMATS if f in Image.OPEN]


def contract(height, width):
    return {
        "version": CONTRACT_VERSION,
        "input_size": [int(height), int(width)],
        "color": "RGB",
        "pixel_range": [0, 255],
        "resize": "bilinear, whole image stretched to input_size (Pillow)",
        "exif_orientation": "applied",
        "alpha": "composited over white",
        "normalization": "inside the model",
    }


def check_contract(c):
    if not isinstance(c, dict) or c.get("version") != CONTRACT_VERSION:
        raise InputError(f"unsupported preprocessing contract {c!r}; expected version {CONTRACT_VERSION}")
    h, w = c["input_size"]
    return int(h), int(w)


def _regular_file(path, name):
    """Refuse what is not a regular file before opening it: reading a FIFO waits for a writer for ever, and a
    device or socket is no image."""
    import stat

    mode = path.stat().st_mode  # FileNotFoundError is reported by the caller
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(name)
    if not stat.S_ISREG(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device or special file"
        raise InputError(f"{name}: not a regular file ({kind})")


def _open(source):
    """A fully decoded PIL image from a path, bytes, PIL image or array."""
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, np.ndarray):
        arr = source
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
            raise InputError(f"array image must be HxW, HxWx1, HxWx3 or HxWx4, got shape {arr.shape}")
        if arr.shape[-1] == 1:
            arr = np.repeat(arr, 3, axis=-1)
        if arr.dtype != np.uint8:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
        return Image.fromarray(arr)
    name = "<bytes>"
    formats = _formats()
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            img = Image.open(io.BytesIO(bytes(source)), formats=formats)
        else:
            name = str(source)
            _regular_file(Path(source), name)
            img = Image.open(Path(source), formats=formats)
        w, h = img.size
        if w * h > MAX_PIXELS:
            raise InputError(f"{name}: too large: {w}x{h} is {w * h / 1e6:.0f} megapixels, over the limit of "
                             f"{MAX_PIXELS / 1e6:.0f}")
        img.load()  # decode now: a truncated file fails here, not later
        return img
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{name}: is a directory, not an image") from None
    except UnidentifiedImageError:
        raise InputError(f"{name}: not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise InputError(f"{name}: unreadable image ({e})") from None


def to_rgb(img):
    """Any Pillow mode as 8-bit RGB, upright per EXIF, transparency over white."""
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001  a broken EXIF block should not cost us the image
        pass
    mode = img.mode
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(img, dtype=np.float32)  # exact for 16-bit values, half float64's memory
        if mode.startswith("I;16") or arr.max(initial=0) > 255:
            arr = arr / 257.0  # 16-bit range to 8-bit
        elif mode == "F" and arr.max(initial=0) <= 1.0:
            arr = arr * 255.0
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
        mode = "L"
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode != "RGB":
        img = img.convert("RGB")
    return img


def decode(source):
    """The image as an RGB PIL image at its own size (EXIF orientation applied, any mode converted)."""
    return to_rgb(_open(source))


def load_pixels(source, size):
    """Decode `source` and return uint8 pixels of shape (height, width, 3).

    `size` is (height, width). The whole image is stretched, not cropped, so no part of
    the subject is lost; training used the very same function.
    """
    h, w = int(size[0]), int(size[1])
    img = decode(source)
    if img.size != (w, h):
        img = img.resize((w, h), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def load_batch(sources, size):
    return np.stack([load_pixels(s, size) for s in sources])
