"""The preprocessing contract: the single place where an image becomes model input.

Every model this project trains or exports takes raw RGB pixels (0..255) at a fixed
size; normalisation lives inside the model. Training, export calibration, the
benchmark and the device all call `load_pixels`, so they see identical arrays.
"""
import io
import threading
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError

# Recorded in each run's config.json and export manifest; `check_contract` refuses others. Version 1 always
# stretched the whole image to the input size; version 2 names how the image is fitted (FITS).
CONTRACT_VERSION = 2
KNOWN_VERSIONS = (1, 2)
# squash: the whole image stretched to the input size (no part of the subject lost, its shape distorted).
# crop: the largest centred box of the input's aspect ratio, resized (shapes kept, the borders lost).
FITS = ("squash", "crop")
# The image formats decoded. Pillow would open many more (PostScript through Ghostscript, for one) from
# whatever a file says it is; a photo pipeline needs these.
# (Multi-picture JPEGs from phones open as JPEG.)
Image.MAX_IMAGE_PIXELS = None  # the memory budget below is the one limit, checked before decoding
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "AVIF", "GIF", "BMP", "TIFF", "PPM")


def _formats():
    """IMAGE_FORMATS this Pillow can open (AVIF came with Pillow 11.3); every plugin registered first."""
    Image.init()
    return [f for f in IMAGE_FORMATS if f in Image.OPEN]


def contract(height, width, fit="squash"):
    check_fit(fit)
    return {
        "version": CONTRACT_VERSION,
        "input_size": [int(height), int(width)],
        "fit": fit,
        "color": "RGB",
        "pixel_range": [0, 255],
        "resize": ("bilinear, whole image stretched to input_size (Pillow)" if fit == "squash" else
                   "bilinear from the largest centred box of input_size's aspect ratio (Pillow)"),
        "exif_orientation": "applied",
        "alpha": "composited over white",
        "normalization": "inside the model",
    }


def check_fit(fit):
    if fit not in FITS:
        raise InputError(f"unknown image fit {fit!r}; this runtime knows {', '.join(FITS)}")
    return fit


def fit_of(record):
    """The fit a run's config or a contract names (records older than the fit were all 'squash')."""
    return (record or {}).get("fit") or (record or {}).get("resize") or "squash"


def check_contract(c):
    """((height, width), fit) of a contract this runtime implements, else InputError: a model is never fed
    pixels prepared another way than it was trained on."""
    if not isinstance(c, dict) or c.get("version") not in KNOWN_VERSIONS:
        version = c.get("version") if isinstance(c, dict) else c
        raise InputError(f"unsupported preprocessing contract version {version!r}: this runtime knows versions "
                         f"{', '.join(map(str, KNOWN_VERSIONS))}; update edgeclf-runtime")
    fit = check_fit(c.get("fit", "squash"))
    h, w = c["input_size"]
    return (int(h), int(w)), fit


# Memory. File size says nothing of decoded size (a 467 KB PNG can declare 120 megapixels of RGBA), so the cost
# of decoding an image is worked out from its header before a byte of pixels is decoded: each mode's bytes per
# pixel in Pillow (RGB is stored in 4) plus what converting it to RGB holds at the same time. An image that would
# cost more than DECODE_BUDGET is refused, unless it is a JPEG, which libjpeg can decode at 1/2, 1/4 or 1/8 of
# its size (draft mode) into the budget. Images within it take the exact path of the contract, unchanged.
DECODE_BUDGET = 128 * 2**20
LARGE = 16 * 2**20  # decodes costing more take turns, one at a time in a process: several workers do not add up
COST_PER_PIXEL = {"1": 5, "L": 5, "P": 5, "RGB": 4, "RGBA": 8, "RGBa": 8, "LA": 8, "La": 8, "PA": 8, "CMYK": 8,
                  "YCbCr": 8, "LAB": 8, "HSV": 8, "I;16": 8, "I;16L": 8, "I;16B": 8, "I;16N": 8, "I": 10, "F": 10}
# What a format's decoder holds besides Pillow's image: libwebp decodes into a buffer of its own, and Pillow's
# WebP plugin copies it (measured: 15.6 bytes a pixel at the peak for an RGB WebP)
FORMAT_COST = {"WEBP": 12}
STRIP = 1 << 20  # pixels composited at a time: transparency over white costs one strip, not a full-size copy
_turns = threading.Lock()


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


def decode_cost(img):
    """Bytes decoding and converting this (not yet decoded) image to RGB holds at once, from its header alone."""
    w, h = img.size
    per_pixel = (COST_PER_PIXEL.get(img.mode, 10) + FORMAT_COST.get(img.format or "", 0)
                 + (4 if img.mode == "P" and "transparency" in img.info else 0))
    try:  # EXIF orientation: turning upright is one more copy. A PNG's EXIF after its pixels is not read (Pillow
        # would decode the whole image to reach it): only what its header holds
        exif = Image.Exif()
        if img.format != "PNG":
            exif = img.getexif()
        elif img.info.get("exif"):
            exif.load(img.info["exif"])
        turned = exif.get(0x0112, 1) not in (None, 1)
    except Exception:  # noqa: BLE001  a broken EXIF block costs nothing here; to_rgb ignores it too
        turned = False
    return w * h * (per_pixel + (COST_PER_PIXEL.get(img.mode, 10) if turned else 0))


def _fit(img, name, size):
    """Within the budget as it is, or (a JPEG) drafted to the least reduction that fits and still covers `size`;
    else InputError naming what it would need."""
    cost = decode_cost(img)
    if cost <= DECODE_BUDGET:
        return cost
    w, h = img.size
    if img.format == "JPEG":
        for k in (2, 4, 8):
            smaller = (-(-w // k), -(-h // k))
            if size is not None and (smaller[0] < size[1] or smaller[1] < size[0]):
                break  # below the model's size: the resize would magnify
            if smaller[0] * smaller[1] * cost // (w * h) <= DECODE_BUDGET:
                img.draft(img.mode if img.mode in ("RGB", "L") else "RGB", smaller)
                return decode_cost(img)
    raise InputError(f"{name}: too large to decode: {w}x{h} {img.mode} needs about {cost / 2**20:.0f} MB, over the "
                     f"decoding budget of {DECODE_BUDGET / 2**20:.0f} MB")


def _open(source, size=None):
    """(a PIL image, its decoding cost, its name) from a path, bytes, PIL image or array, not decoded yet (load()
    decodes); `size` (height, width), the size it will be resized to, lets a JPEG too large for the budget be
    decoded smaller."""
    if isinstance(source, Image.Image):
        return source, 0, "<image>"
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
        return Image.fromarray(arr), 0, "<array>"
    name = "<bytes>"
    formats = _formats()
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            img = Image.open(io.BytesIO(bytes(source)), formats=formats)
        else:
            name = str(source)
            _regular_file(Path(source), name)
            img = Image.open(Path(source), formats=formats)
        return img, _fit(img, name, size), name
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{name}: is a directory, not an image") from None
    except UnidentifiedImageError:
        raise InputError(f"{name}: not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise InputError(f"{name}: unreadable image ({e})") from None


def _load(img, name):
    """Decode now: a truncated file fails here, in one line, not later."""
    try:
        img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise InputError(f"{name}: unreadable image ({e})") from None


def _over_white(rgba):
    """RGBA composited over white, as RGB, a strip of rows at a time: the same pixels as compositing the whole
    image at once, holding one strip's copies rather than three full-size ones."""
    w, h = rgba.size
    out = Image.new("RGB", (w, h))
    rows = max(1, STRIP // max(1, w))
    for top in range(0, h, rows):
        strip = rgba.crop((0, top, w, min(h, top + rows)))
        white = Image.new("RGBA", strip.size, (255, 255, 255, 255))
        out.paste(Image.alpha_composite(white, strip).convert("RGB"), (0, top))
    return out


def to_rgb(img):
    """Any Pillow mode as 8-bit RGB, upright per EXIF, transparency over white."""
    return _to_rgb([img])


def _to_rgb(box):
    """to_rgb of the image in a one-item list, taken out of it so that each conversion frees the one before (an
    argument stays referenced by its caller for the whole call)."""
    img = box.pop()
    try:
        ImageOps.exif_transpose(img, in_place=True)  # a copy only when the image must turn
    except Exception:  # noqa: BLE001  a broken EXIF block should not cost us the image
        pass
    mode = img.mode
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.array(img, dtype=np.float32)  # a copy of its own (exact for 16-bit values), changed in place below
        img = None  # released before the copies below
        if mode.startswith("I;16") or arr.max(initial=0) > 255:
            arr /= 257.0  # 16-bit range to 8-bit (in place: one float copy at a time)
        elif mode == "F" and arr.max(initial=0) <= 1.0:
            arr *= 255.0
        np.clip(np.rint(arr, out=arr), 0, 255, out=arr)
        img = Image.fromarray(arr.astype(np.uint8), "L")
        del arr
        mode = "L"
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        if mode != "RGBA":
            img = img.convert("RGBA")
        return _over_white(img)
    if mode != "RGB":
        img = img.convert("RGB")
    return img


_allocator: dict = {}


def _libc():
    if "libc" not in _allocator:
        import ctypes
        import ctypes.util

        try:
            _allocator["libc"] = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        except OSError:
            _allocator["libc"] = None
    return _allocator["libc"]


def _map_large_blocks():
    """From the first large decode on, glibc serves every allocation of 128 KiB and more (Pillow's image blocks,
    numpy's arrays, libjpeg's buffers) from its own mapping, returned to the system when freed: otherwise its
    threshold grows and later blocks come from per-thread heaps that keep the memory, and each large image raised
    resident memory for good. Elsewhere (not glibc) nothing to do."""
    if not _allocator.get("mapped"):
        libc = _libc()
        if libc is not None and hasattr(libc, "mallopt"):
            libc.mallopt(-3, 128 << 10)  # M_MMAP_THRESHOLD: glibc's own starting value, kept from growing
        _allocator["mapped"] = True


def _release():
    """Give free heap pages back to the system after a large decode (glibc's malloc_trim)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def decode(source, size=None, resize=False, fit="squash"):
    """The image as an RGB PIL image (EXIF orientation applied, any mode converted) at its own size, or, for a
    JPEG over the memory budget, decoded smaller but no smaller than `size` (height, width). resize: fitted to
    `size` (FITS) with the contract's bilinear filter, before the full-size image is let go."""
    check_fit(fit)
    box: list = [None]
    box[0], cost, name = _open(source, size)
    if cost <= LARGE:
        return _decoded(box, name, size if resize else None, fit)
    with _turns:  # decoded, converted and resized one at a time: the budget holds for the process, not per thread
        _map_large_blocks()
        try:
            return _decoded(box, name, size if resize else None, fit)
        finally:
            box.clear()
            _release()


def crop_box(width, height, size):
    """(left, top, right, bottom) in whole pixels: the largest box of size's aspect ratio centred in a width x
    height image. Whole pixels, so that any other runtime (a phone's, a browser's) cuts the very same box."""
    h, w = int(size[0]), int(size[1])
    scale = min(width / w, height / h)
    bw, bh = max(1, min(width, round(w * scale))), max(1, min(height, round(h * scale)))
    left, top = (width - bw) // 2, (height - bh) // 2
    return (left, top, left + bw, top + bh)


def _decoded(box, name, size, fit="squash"):
    _load(box[0], name)
    img = _to_rgb(box)
    target = None if size is None else (int(size[1]), int(size[0]))
    if target is None:
        return img
    if fit == "crop":  # cut first, then resize: the filter never reads the borders that were cut away
        width, height = img.size
        region = crop_box(width, height, size)
        if region != (0, 0, width, height):
            img = img.crop(region)
    if img.size != target:
        img = img.resize(target, Image.Resampling.BILINEAR)
    return img


def load_pixels(source, size, fit="squash"):
    """Decode `source` and return uint8 pixels of shape (height, width, 3).

    `size` is (height, width); `fit` how the image is fitted to it (FITS: stretched whole, or its centre
    cropped to the same aspect ratio). Training, export, the benchmark and the device call this one function.
    """
    return np.asarray(decode(source, (int(size[0]), int(size[1])), resize=True, fit=fit), dtype=np.uint8)


def load_batch(sources, size, fit="squash"):
    return np.stack([load_pixels(s, size, fit) for s in sources])
