"""Reading one image file into a Pillow image: the one reader of training, ``thaw predict`` (PyTorch and
ONNX) and ``thaw evaluate``. Torch-free, so ``thaw predict model.onnx`` uses it without importing torch.

Awkward images: 16-bit (and 32-bit, float) images are decoded at full depth and scaled per image, from
their darkest to their brightest pixel, to 0-255 (Pillow's own conversion would clip a 12-bit scan to
near white). Per-image min-max rather than the full 0-65535 range: a 12-bit scanner stored in 16 bits
would use only 1/16 of the range and come out nearly black. DICOM files go through their rescale
slope/intercept and an optional window (``--dicom-window``) first. An image more than ``MAX_ASPECT`` times
longer than wide (or the reverse) is center-cropped to that ratio, so no strip of pixels becomes a tensor
of gigabytes.

Huge images: one over ``LARGE_PIXELS`` is decoded reduced to what the model needs (``target``, the
shorter side the model resizes to, kept at least ``KEEP`` times over): a JPEG by decoding at 1/2, 1/4 or
1/8 scale (Pillow's ``draft``), any other by ``reduce`` right after decoding, before any conversion
copies it. Images under ``LARGE_PIXELS`` decode exactly as before. One whose decoded pixels would take
more than ``MAX_DECODED_BYTES``, or over Pillow's decompression-bomb limit, is refused by name (a
``ValueError``: an error row in ``predict``, skipped in training), never with Pillow's raw warning.
"""

from __future__ import annotations

import warnings

import numpy as np
from PIL import Image, ImageOps

from thaw.core.errors import ThawError

MAX_ASPECT = 4
LARGE_PIXELS = 40_000_000
"""Images with more pixels than this are decoded reduced; smaller ones exactly as they are."""
KEEP = 2
"""A reduced image keeps at least ``KEEP`` times the shorter side the model resizes to."""
MAX_DECODED_BYTES = 1 << 30
"""The most memory one decoded image (at its native depth, before reduction) may take."""
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
"""What a broken, truncated, foreign or oversized file raises: such a file is skipped by name."""
DICOM_EXTENSIONS = (".dcm", ".dicom")
BYTES_PER_BAND = {"I": 4, "F": 4, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2, "1": 1}


def read_image(
    path: str,
    channels: int = 3,
    window: tuple[float, float] | None = None,
    target: int | None = None,
) -> tuple[Image.Image, bool]:
    """The image at ``path`` in ``L`` (``channels`` 1) or ``RGB``: EXIF rotation applied, the first frame
    of an animation, 16-bit depth scaled per image, the long side at most ``MAX_ASPECT`` times the short,
    a huge image reduced towards ``target`` (the shorter side the model needs); and whether the source had
    more than 8 bits per channel (and was scaled). DICOM: rescale slope/intercept, then ``window``."""
    mode = "L" if channels == 1 else "RGB"
    if str(path).lower().endswith(DICOM_EXTENSIONS):
        img, deep = dicom_image(str(path), window)
        return bounded(img).convert(mode), deep
    with warnings.catch_warnings():  # the size is checked here, by name; Pillow's own warning is noise
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            opened = Image.open(path)
        except Image.DecompressionBombError as err:
            raise ValueError(f"too large to decode ({_first_line(err)})") from None
        with opened as img:
            img.seek(0)  # first frame of a GIF
            check_size(img)
            if target and img.format == "JPEG" and pixels(img) > LARGE_PIXELS:
                w, h = img.size
                factor = max(1, min(w, h) // (KEEP * target))
                img.draft(img.mode, (max(1, w // factor), max(1, h // factor)))
            img = reduced(img, target)
            img = ImageOps.exif_transpose(img)
            deep = img.mode in ("I", "F") or img.mode.startswith("I;16")
            return bounded(to_8bit(img, str(path))).convert(mode), deep


def pixels(img: Image.Image) -> int:
    return img.size[0] * img.size[1]


def check_size(img: Image.Image) -> None:
    """Refuse an image whose decoded pixels would take more than ``MAX_DECODED_BYTES``."""
    need = pixels(img) * len(img.getbands()) * BYTES_PER_BAND.get(img.mode, 1)
    if need > MAX_DECODED_BYTES:
        w, h = img.size
        raise ValueError(
            f"image of {w}x{h} pixels would take {need / 2**20:.0f} MiB to decode, over thaw's cap of "
            f"{MAX_DECODED_BYTES / 2**20:.0f} MiB; downscale it first"
        )


def reduced(img: Image.Image, target: int | None) -> Image.Image:
    """``img`` decoded, and when it is over ``LARGE_PIXELS`` with a ``target``, reduced by a whole factor
    that keeps its shorter side at least ``KEEP * target`` (block averaging: no aliasing)."""
    img.load()
    if not target or pixels(img) <= LARGE_PIXELS:
        return img
    factor = min(img.size) // (KEEP * target)
    if factor < 2:
        return img
    if img.mode.startswith("I;16"):
        img = img.convert("I")
    elif img.mode in ("P", "1", "PA"):
        img = img.convert("RGBA" if "transparency" in img.info or img.mode == "PA" else "RGB")
    out = img.reduce(factor)
    out.info = img.info  # the EXIF orientation is applied after
    return out


def dicom_image(path: str, window: tuple[float, float] | None = None) -> tuple[Image.Image, bool]:
    """A DICOM file's first frame: stored values through the modality LUT (rescale slope and intercept,
    e.g. to Hounsfield units), clipped to ``window`` (center, width) if given, then scaled to 0-255 (the
    window's range, else the image's own minimum to maximum); MONOCHROME1 (white = 0) is inverted."""

    try:
        import pydicom
    except ImportError:
        raise ThawError(
            f"{path} is a DICOM file: install pydicom to read it (pip install 'thaw-transfer[dicom]')"
        ) from None
    try:
        ds = pydicom.dcmread(path)
    except Exception as err:  # pydicom raises many kinds for truncated or foreign files
        raise ValueError(f"not a readable DICOM file ({_first_line(err)})") from err
    try:
        return _dicom_pixels(ds, path, window)
    except ValueError:
        raise
    except Exception as err:  # an element pydicom parses lazily, found damaged only now
        raise ValueError(f"damaged DICOM file ({type(err).__name__}: {_first_line(err)})") from err


def _dicom_pixels(ds, path: str, window: tuple[float, float] | None) -> tuple[Image.Image, bool]:
    from pydicom.pixels import apply_modality_lut

    if "PixelData" not in ds:
        raise ValueError("DICOM file has no pixel data (no PixelData element): a report or structured file")
    try:
        pixels = ds.pixel_array
    except Exception as err:  # pydicom raises many kinds for compressed data it cannot decode
        raise ValueError(f"DICOM pixel data cannot be decoded ({_first_line(err)})") from err
    colour = getattr(ds, "SamplesPerPixel", 1) == 3
    if pixels.ndim == (4 if colour else 3):  # several frames (declared, or more pixel data than one)
        pixels = pixels[0]
    if pixels.ndim != (3 if colour else 2) or colour and pixels.shape[2] != 3 or 0 in pixels.shape:
        raise ValueError(f"DICOM pixel data has shape {pixels.shape}, not one {ds.Rows}x{ds.Columns} image")
    if colour:
        return Image.fromarray(np.asarray(pixels, dtype=np.uint8)), False
    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    if window is not None:
        center, width = window
        low, high = center - width / 2, center + width / 2
        values = (np.clip(values, low, high) - low) * (255.0 / (high - low))
        img = Image.fromarray(np.round(values).astype(np.uint8), mode="L")
    else:
        img = scale_to_8bit(values, path)
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        img = ImageOps.invert(img)
    return img, True


def to_8bit(img: Image.Image, key: str) -> Image.Image:
    """Images deeper than 8 bits per channel (``I;16*``, ``I``, ``F``) scaled from their own minimum to
    their maximum onto 0-255; others unchanged."""
    if img.mode not in ("I", "F") and not img.mode.startswith("I;16"):
        return img
    return scale_to_8bit(np.asarray(img, dtype=np.float64), key)


def scale_to_8bit(array: np.ndarray, key: str) -> Image.Image:
    """A 2-D array of any depth, from its minimum (0) to its maximum (255), as an ``L`` image."""
    array = np.asarray(array, dtype=np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"{key} holds NaN or infinite pixel values")
    low, high = float(array.min()), float(array.max())
    scaled = (array - low) * (255.0 / (high - low)) if high > low else np.zeros_like(array)
    return Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")


def bounded(img: Image.Image) -> Image.Image:
    """Center-crop the long side to at most ``MAX_ASPECT`` times the short side."""
    w, h = img.size
    if w > MAX_ASPECT * h:
        left = (w - MAX_ASPECT * h) // 2
        return img.crop((left, 0, left + MAX_ASPECT * h, h))
    if h > MAX_ASPECT * w:
        top = (h - MAX_ASPECT * w) // 2
        return img.crop((0, top, w, top + MAX_ASPECT * w))
    return img


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
