"""Read face images robustly and write them atomically.

`read_image` turns any supported file into an upright 8-bit RGB array. It applies the
EXIF orientation, expands palette images, composites transparency on white and converts
CMYK. It scales 16-bit greyscale to 8 bits over the full range, because Pillow's own
conversion to mode L clips every value above 255. Every failure raises `ImageReadError`,
whose `reason` classifies the problem, so callers can record it and go on with the next
file.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import stat
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fer_core import files

logger = logging.getLogger(__name__)

# Animated GIF and WebP files are read as their first frame.
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".gif"}
)
# Image formats that Pillow cannot decode without plug-ins; data set loaders report such
# files instead of passing over them.
UNSUPPORTED_IMAGE_SUFFIXES = frozenset(
    {".heic", ".heif", ".avif", ".jxl", ".jp2", ".j2k", ".psd", ".svg", ".raw", ".cr2", ".nef", ".dng", ".arw"}
)
MIN_IMAGE_SIDE = 32

_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_COLOUR_MODES = frozenset({"RGB", "RGBX", "CMYK", "YCbCr", "HSV"})
_UINT16_MAX = 65535
_UINT8_PER_UINT16 = 257  # 65535 / 255, so 16-bit white maps to 8-bit white exactly


class ImageProblem(str, enum.Enum):
    """Reason an image file cannot be used."""

    NOT_FOUND = "file not found"
    NO_PERMISSION = "permission denied"
    EMPTY = "zero bytes"
    NOT_IMAGE = "not an image"
    CORRUPT = "truncated or corrupt"
    TOO_SMALL = "too small"
    TOO_LARGE = "too large"
    UNSUPPORTED_MODE = "unsupported mode"


_ADVICE = {
    ImageProblem.NOT_FOUND: "Check the path, or reload the data set if the file was moved.",
    ImageProblem.NO_PERMISSION: "Make the file readable for this user (chmod a+r) or copy it to a readable folder.",
    ImageProblem.EMPTY: "Copy the file again from its original source.",
    ImageProblem.NOT_IMAGE: "Remove it from the image folder or give it its real extension.",
    ImageProblem.CORRUPT: "Copy the file again from its original source; the copy is damaged.",
    ImageProblem.TOO_SMALL: f"Use images at least {MIN_IMAGE_SIDE} pixels on each side.",
    ImageProblem.TOO_LARGE: "Downscale the image before adding it.",
    ImageProblem.UNSUPPORTED_MODE: "Convert it to 8-bit RGB or greyscale, for example as PNG.",
}


class ImageReadError(ValueError):
    """Error raised when an image file cannot be read; `reason` classifies it."""

    def __init__(self, path: Path, reason: ImageProblem, detail: str) -> None:
        self.path = Path(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"Cannot read image {self.path}: {reason.value} ({detail}). {self.advice}")

    @property
    def advice(self) -> str:
        """Return what the user can do about this problem."""
        return _ADVICE[self.reason]

    def describe(self) -> str:
        """Return the reason, detail and advice without the path, for per-file reports."""
        return f"{self.reason.value}: {self.detail}. {self.advice}"


@dataclass(frozen=True)
class LoadedImage:
    """An upright 8-bit RGB image with the file it came from."""

    rgb: np.ndarray  # uint8, shape (height, width, 3)
    greyscale: bool
    path: Path


def is_image_file(path: Path) -> bool:
    """Return True when the file name ends in one of IMAGE_SUFFIXES, in any case."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def read_image(path: Path | str, *, draft_size: int | None = None) -> LoadedImage:
    """Decode an image file fully into an upright uint8 RGB array.

    `draft_size` lets JPEGs decode at the smallest libjpeg scale (1/2, 1/4 or 1/8)
    that keeps both sides at least that many pixels. The whole file is still decoded,
    so truncation is still detected; use it when only validity matters. Other formats
    ignore it.

    >>> read_image("face.jpg").rgb.shape  # doctest: +SKIP
    (512, 512, 3)
    """
    path = Path(path)
    check_image_file(path)

    # Pillow releases the pixels when the file closes, so convert inside the block.
    try:
        with Image.open(path) as opened:
            image = _decode(opened, path, draft_size)
            greyscale = image.mode in _GREY_MODES
            rgb = _to_rgb_array(image, path)
    except ImageReadError:
        raise
    except UnidentifiedImageError as error:
        raise ImageReadError(path, ImageProblem.NOT_IMAGE, "Pillow does not recognise the format") from error
    except Image.DecompressionBombError as error:
        raise ImageReadError(path, ImageProblem.TOO_LARGE, str(error)) from error
    except PermissionError as error:
        raise ImageReadError(path, ImageProblem.NO_PERMISSION, error.strerror or str(error)) from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageReadError(path, ImageProblem.CORRUPT, str(error) or type(error).__name__) from error

    if not greyscale:
        greyscale = _channels_equal(rgb)
    return LoadedImage(rgb=rgb, greyscale=greyscale, path=path)


def check_image_file(path: Path) -> None:
    """Raise ImageReadError when the path is not an existing, non-empty file; decode nothing."""
    try:
        status = path.stat()
    except PermissionError as error:
        raise ImageReadError(path, ImageProblem.NO_PERMISSION, error.strerror or str(error)) from error
    except OSError as error:
        raise ImageReadError(path, ImageProblem.NOT_FOUND, _missing_detail(path, error)) from error

    if stat.S_ISDIR(status.st_mode):
        raise ImageReadError(path, ImageProblem.NOT_FOUND, "the path is a folder, not a file")
    if not stat.S_ISREG(status.st_mode):
        raise ImageReadError(path, ImageProblem.NOT_FOUND, "the path is a device, pipe or socket, not a file")
    if status.st_size == 0:
        raise ImageReadError(path, ImageProblem.EMPTY, "the file is empty")


def _missing_detail(path: Path, error: OSError) -> str:
    """Describe why stat failed: no such file, a broken symbolic link or a symbolic link loop."""
    if error.errno == errno.ELOOP:
        return "the symbolic link points to itself in a loop"
    if path.is_symlink():
        return f"the symbolic link points to {os.readlink(path)}, which does not exist"
    return "no such file"


def _decode(opened: Image.Image, path: Path, draft_size: int | None) -> Image.Image:
    """Check the size, decode every pixel and apply the EXIF orientation."""
    width, height = opened.size
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ImageReadError(
            path,
            ImageProblem.TOO_SMALL,
            f"{width}x{height} pixels, the minimum side is {MIN_IMAGE_SIDE}",
        )

    if draft_size is not None and opened.format == "JPEG":
        opened.draft(opened.mode, (draft_size, draft_size))

    # load() decodes the whole file, so truncated data raises here and not later.
    opened.load()
    return _apply_orientation(opened, path)


def _apply_orientation(image: Image.Image, path: Path) -> Image.Image:
    """Rotate or flip the image as its EXIF orientation tag specifies; keep it as is on bad EXIF."""
    try:
        upright = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError, KeyError, TypeError) as error:
        logger.warning("Ignoring unreadable EXIF orientation in %s: %s", path, error)
        return image
    return upright if upright is not None else image


def _to_rgb_array(image: Image.Image, path: Path) -> np.ndarray:
    """Convert an image in any supported mode to a contiguous uint8 (H, W, 3) array."""
    mode = image.mode

    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        grey = _scale_to_uint8(np.asarray(image), mode, path)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))

    if mode == "P":
        has_alpha = "transparency" in image.info or image.palette.mode == "RGBA"
        image = image.convert("RGBA" if has_alpha else "RGB")
        mode = image.mode

    if mode in _ALPHA_MODES:
        image = _composite_on_white(image)
    elif mode in ("1", "L"):
        image = image.convert("RGB")
    elif mode in _COLOUR_MODES:
        image = image.convert("RGB")
    else:
        raise ImageReadError(path, ImageProblem.UNSUPPORTED_MODE, f"Pillow mode {mode}")

    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))


def _scale_to_uint8(values: np.ndarray, mode: str, path: Path) -> np.ndarray:
    """Map 16-bit (or 32-bit integer holding 16-bit) greyscale values to 0..255."""
    values = values.astype(np.int64)
    if values.min() < 0 or values.max() > _UINT16_MAX:
        raise ImageReadError(
            path,
            ImageProblem.UNSUPPORTED_MODE,
            f"Pillow mode {mode} with values from {values.min()} to {values.max()}, "
            f"outside the 16-bit range 0..{_UINT16_MAX}",
        )
    scaled = (values + _UINT8_PER_UINT16 // 2) // _UINT8_PER_UINT16
    return scaled.astype(np.uint8)


def _composite_on_white(image: Image.Image) -> Image.Image:
    """Flatten an image with an alpha channel onto a white background."""
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _channels_equal(rgb: np.ndarray) -> bool:
    """Return True when all three channels are identical, so the image is grey."""
    return bool(np.array_equal(rgb[:, :, 0], rgb[:, :, 1]) and np.array_equal(rgb[:, :, 1], rgb[:, :, 2]))


def write_bytes_atomic(path: Path | str, data: bytes) -> Path:
    """Write bytes atomically and flush them to disk before the rename."""
    return files.write_bytes_atomic(path, data, fsync=True)


def write_image_atomic(path: Path | str, rgb: np.ndarray) -> Path:
    """Encode a uint8 RGB (H, W, 3) or greyscale (H, W) array as PNG and write it atomically."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"write_image_atomic writes PNG files; expected a .png path, received {path}")
    if rgb.dtype != np.uint8:
        raise ValueError(f"expected a uint8 array for {path}, received dtype {rgb.dtype}")
    if not (rgb.ndim == 2 or (rgb.ndim == 3 and rgb.shape[2] == 3)):
        raise ValueError(f"expected shape (H, W) or (H, W, 3) for {path}, received {rgb.shape}")

    buffer = BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format="PNG")
    return write_bytes_atomic(path, buffer.getvalue())
