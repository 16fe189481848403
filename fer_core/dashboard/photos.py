"""Single photographs for the mask preview: uploads, camera shots and display sizes."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import cv2
import numpy as np

from fer_core.faces import FaceDetection, face_crop_box
from fer_core.images import IMAGE_SUFFIXES, ImageProblem, ImageReadError, LoadedImage, read_image

logger = logging.getLogger(__name__)

# Maximum side length of a photograph in the preview, in pixels. Phone photos are shrunk to it
# so detection, the four mask renderings and the page stay fast.
PREVIEW_MAX_SIDE = 1024
# Margin around the face box, as a fraction of its side, when the preview zooms to the face.
FACE_VIEW_MARGIN = 0.35
UPLOAD_TYPES = sorted(suffix.lstrip(".") for suffix in IMAGE_SUFFIXES)


def read_uploaded_image(data: bytes, file_name: str) -> LoadedImage:
    """Decode uploaded image bytes with the same checks as files on disk.

    Raises ImageReadError, whose `describe()` explains the problem without the temporary path.
    """
    suffix = Path(file_name).suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise ImageReadError(Path(file_name), ImageProblem.NOT_IMAGE,
                             f"{suffix or 'no extension'} is not one of {', '.join(UPLOAD_TYPES)}")

    with tempfile.TemporaryDirectory(prefix="fer-upload-") as folder:
        path = Path(folder) / f"upload{suffix}"
        path.write_bytes(data)
        loaded = read_image(path)
    return LoadedImage(rgb=loaded.rgb, greyscale=loaded.greyscale, path=Path(file_name))


def shrink_to_fit(rgb: np.ndarray, max_side: int = PREVIEW_MAX_SIDE) -> np.ndarray:
    """Return the image scaled down so its longest side is at most `max_side` pixels."""
    height, width = rgb.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return rgb
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def face_view(rgb: np.ndarray, detection: FaceDetection, margin: float = FACE_VIEW_MARGIN) -> np.ndarray:
    """Return the square region around the detected face, clipped to the image, for display."""
    x1, y1, x2, y2 = face_crop_box(detection, margin)
    height, width = rgb.shape[:2]
    return rgb[max(0, y1):min(height, y2), max(0, x1):min(width, x2)]
