"""Face detection with MTCNN and 68-point dlib landmarks inside the MTCNN box.

MTCNN (facenet-pytorch) finds the faces. dlib's 68-point shape predictor then places the
landmarks inside the chosen MTCNN box, so every face that MTCNN finds gets landmarks. dlib's
own HOG detector, which misses faces that are not frontal, is not used.

Example:
    >>> analyzer = FaceAnalyzer()
    >>> detection = analyzer.analyze(image_rgb)
    >>> detection.landmarks.shape
    (68, 2)
"""

from __future__ import annotations

import contextlib
import enum
import importlib.util
import logging
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import dlib
import numpy as np
import torch
from facenet_pytorch import MTCNN
from facenet_pytorch.models.utils.detect_face import detect_face

from fer_core.constants import LANDMARK_COUNT

logger = logging.getLogger(__name__)

LANDMARK_MODEL_FILE = "shape_predictor_68_face_landmarks.dat"
LANDMARK_PACKAGE = "face_recognition_models"

# dlib's 68-point predictor was trained on boxes from dlib's HOG detector, which are wider and
# start lower than MTCNN boxes. These offsets move an MTCNN box onto the HOG box as fractions of
# the MTCNN box width (left, right) and height (top, bottom). They are the mean offsets measured
# on 40 London faces (neutral 001-030, smiling 001-010). On 40 other London faces they halved
# the mean landmark distance to landmarks from the HOG box, from 2.3 % to 1.0 % of the
# inter-ocular distance.
_HOG_BOX_OFFSETS = (-0.075, 0.162, 0.041, -0.012)

# The smallest face that MTCNN's first network (P-Net, a 12 x 12 window) can detect.
_MTCNN_MIN_FACE_PIXELS = 12


class FaceSelection(str, enum.Enum):
    """Rule that chooses one face when MTCNN finds several."""

    LARGEST = "largest"
    MOST_CONFIDENT = "most_confident"


@dataclass(frozen=True)
class FaceDetection:
    """One face chosen in an image, with its MTCNN box and its dlib landmarks.

    Attributes:
        box: MTCNN box (x1, y1, x2, y2) in image pixels.
        probability: MTCNN face probability of the box.
        landmarks: (68, 2) float32 dlib landmarks (x, y) in image pixels.
        face_count: number of faces that MTCNN found in the image.
        selection: "only face", or the rule that chose among several faces.
    """

    box: tuple[float, float, float, float]
    probability: float
    landmarks: np.ndarray
    face_count: int
    selection: str


class NoFaceError(ValueError):
    """Raised when MTCNN finds no face in an image."""


def landmark_model_path() -> Path:
    """Locate dlib's 68-point landmark model in the face-recognition-models package.

    The package is found without importing it, because its __init__ needs pkg_resources,
    which recent setuptools releases no longer provide.

    Raises:
        FileNotFoundError: the package or the model file is missing. The message gives the
            install command.
    """
    install_hint = "install it with: pip install face-recognition-models==0.3.0"
    spec = importlib.util.find_spec(LANDMARK_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"the {LANDMARK_PACKAGE} package with dlib's 68-point landmark model is not "
            f"installed; {install_hint}"
        )

    path = Path(spec.origin).parent / "models" / LANDMARK_MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"dlib's 68-point landmark model is missing at {path}; reinstall: {install_hint}")
    return path


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """Return a C-contiguous (H, W, 3) uint8 view or copy of an RGB or greyscale image.

    Greyscale images of shape (H, W) or (H, W, 1) are stacked to three equal channels.

    Raises:
        ValueError: the array is not uint8 or does not have one of those shapes.
    """
    if not isinstance(image, np.ndarray):
        raise ValueError(f"expected the image as a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(
            f"expected a uint8 image, got dtype {image.dtype}; scale it to 0-255 and convert it with "
            "image.astype(np.uint8)"
        )

    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, np.newaxis], 3, axis=2)

    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"expected an RGB image of shape (H, W, 3) or a greyscale image of shape (H, W), got shape "
            f"{image.shape}; drop an alpha channel before detection"
        )
    if min(image.shape[:2]) < _MTCNN_MIN_FACE_PIXELS:
        raise ValueError(
            f"image of shape {image.shape} is too small for face detection; MTCNN needs at least "
            f"{_MTCNN_MIN_FACE_PIXELS} x {_MTCNN_MIN_FACE_PIXELS} pixels"
        )
    return np.ascontiguousarray(image)


@contextlib.contextmanager
def _torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with count torch CPU threads, then restore the previous count."""
    previous = torch.get_num_threads()
    if count is None or count == previous:
        yield
        return

    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class FaceAnalyzer:
    """Detect faces with MTCNN and place dlib's 68 landmarks on the chosen face.

    Both models load once, in the constructor. The analyzer is safe to share between threads
    because a lock serialises calls to analyze.

    Args:
        device: torch device for MTCNN, such as "cpu" or "cuda:0"; dlib always runs on the CPU.
            NOTE: only the CPU path has been run in the tests so far.
        selection: rule that chooses one face when MTCNN finds several.
        min_face_size: smallest face to detect, in pixels of the input image.
        thresholds: MTCNN's three stage thresholds (P-Net, R-Net, O-Net), each in (0, 1).
        min_face_fraction: smallest face to detect as a fraction of the image's shorter side;
            the larger of this and min_face_size applies. It bounds MTCNN's image pyramid.
            Compared with facenet-pytorch's default minimum of 20 pixels, it cut detection time
            from 45 to 27 ms at 256 x 256 and from 101 to 36 ms at 512 x 512 (one thread).
        detection_size: MTCNN runs on a copy whose shorter side is at most this many pixels.
            Boxes are scaled back, and landmarks are computed on the full-size image.
        pyramid_factor: scale step between MTCNN's pyramid levels, in (0, 1).
        torch_threads: torch CPU threads for MTCNN during each analyze call, restored
            afterwards. None keeps torch's setting. MTCNN's small tensors gain little from more
            threads. On 2 CPU cores shared with other processes, a 256 x 256 image took 19-39 ms
            with 1 thread, while 2 threads took 16 ms in a quiet moment and 150-530 ms when
            the other processes kept the cores busy. One thread suits several worker processes.
    """

    def __init__(
        self,
        device: str | torch.device = "cpu",
        selection: FaceSelection = FaceSelection.LARGEST,
        min_face_size: int = 40,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        min_face_fraction: float = 0.2,
        detection_size: int = 320,
        pyramid_factor: float = 0.709,
        torch_threads: int | None = 1,
    ) -> None:
        self.selection = FaceSelection(selection)
        self.min_face_size = int(min_face_size)
        self.thresholds = tuple(float(value) for value in thresholds)
        self.min_face_fraction = float(min_face_fraction)
        self.detection_size = int(detection_size)
        self.pyramid_factor = float(pyramid_factor)
        self.torch_threads = None if torch_threads is None else int(torch_threads)
        self._validate_settings()

        try:
            self.device = torch.device(device)
        except RuntimeError as error:
            raise ValueError(f"invalid torch device {device!r}: {error}; use 'cpu' or 'cuda:0'") from error

        self._mtcnn = MTCNN(device=self.device, keep_all=True)
        self._mtcnn.eval()
        # MTCNN's ceil-mode max pooling runs many times faster in channels-last layout on CPU.
        # Detection of a 256 x 256 image took 15 ms instead of 30 ms (torch 2.14, one thread),
        # and the boxes agreed to within 1e-4 pixels.
        for network in (self._mtcnn.pnet, self._mtcnn.rnet, self._mtcnn.onet):
            network.to(memory_format=torch.channels_last)

        self._predictor = dlib.shape_predictor(str(landmark_model_path()))
        self._lock = threading.Lock()
        logger.info("loaded MTCNN on %s and dlib's 68-point landmark model", self.device)

    def _validate_settings(self) -> None:
        if self.min_face_size < _MTCNN_MIN_FACE_PIXELS:
            raise ValueError(
                f"min_face_size must be at least {_MTCNN_MIN_FACE_PIXELS} pixels, got {self.min_face_size}"
            )
        if len(self.thresholds) != 3 or not all(0.0 < value < 1.0 for value in self.thresholds):
            raise ValueError(f"thresholds must be three values in (0, 1), got {self.thresholds}")
        if not 0.0 <= self.min_face_fraction <= 1.0:
            raise ValueError(f"min_face_fraction must be in [0, 1], got {self.min_face_fraction}")
        if self.detection_size < 4 * _MTCNN_MIN_FACE_PIXELS:
            raise ValueError(
                f"detection_size must be at least {4 * _MTCNN_MIN_FACE_PIXELS} pixels, got {self.detection_size}"
            )
        if not 0.0 < self.pyramid_factor < 1.0:
            raise ValueError(f"pyramid_factor must be in (0, 1), got {self.pyramid_factor}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"torch_threads must be at least 1 or None, got {self.torch_threads}")

    def min_face_pixels(self, image_shape: tuple[int, ...]) -> float:
        """Return the smallest face size, in input pixels, that analyze detects in such an image."""
        shorter_side = min(image_shape[:2])
        size = max(float(self.min_face_size), self.min_face_fraction * shorter_side)
        return min(size, float(shorter_side))

    def analyze(self, image_rgb: np.ndarray) -> FaceDetection:
        """Detect the faces in an image and place the 68 landmarks on the chosen one.

        Args:
            image_rgb: uint8 RGB image (H, W, 3), or greyscale (H, W) or (H, W, 1).

        Raises:
            NoFaceError: MTCNN found no face.
            ValueError: the image has the wrong dtype or shape.
        """
        image = _as_rgb(image_rgb)

        with self._lock:
            boxes = self._detect_boxes(image)
            if len(boxes) == 0:
                height, width = image.shape[:2]
                raise NoFaceError(
                    f"no face found in the {width}x{height} image (smallest face searched: "
                    f"{self.min_face_pixels(image.shape):.0f} pixels); check that the image shows a "
                    "face, or lower min_face_size and min_face_fraction"
                )

            index, selection = self._choose(boxes)
            box = tuple(float(value) for value in boxes[index, :4])
            landmarks = self._landmarks(image, box)

        return FaceDetection(
            box=box,
            probability=float(boxes[index, 4]),
            landmarks=landmarks,
            face_count=len(boxes),
            selection=selection,
        )

    def _detect_boxes(self, image: np.ndarray) -> np.ndarray:
        """Return MTCNN's (N, 5) boxes with probabilities, in pixels of the input image."""
        scale = min(1.0, self.detection_size / min(image.shape[:2]))
        small = image
        if scale < 1.0:
            size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
            small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)

        min_size = max(_MTCNN_MIN_FACE_PIXELS, self.min_face_pixels(image.shape) * scale)
        min_size = min(min_size, min(small.shape[:2]))

        # MTCNN.detect fixes the minimum face size when the detector is built; calling the
        # detection function that it wraps lets the minimum follow each image's size.
        with torch.inference_mode(), _torch_threads(self.torch_threads):
            batch_boxes, _ = detect_face(
                small,
                min_size,
                self._mtcnn.pnet,
                self._mtcnn.rnet,
                self._mtcnn.onet,
                list(self.thresholds),
                self.pyramid_factor,
                self.device,
            )

        boxes = np.asarray(batch_boxes[0], dtype=np.float64).reshape(-1, 5)
        boxes[:, :4] /= scale
        return boxes

    def _choose(self, boxes: np.ndarray) -> tuple[int, str]:
        """Return the index of the face that the selection rule picks, and the reason."""
        if len(boxes) == 1:
            return 0, "only face"

        if self.selection is FaceSelection.LARGEST:
            areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            return int(np.argmax(areas)), f"largest of {len(boxes)} faces"
        return int(np.argmax(boxes[:, 4])), f"most confident of {len(boxes)} faces"

    def _landmarks(self, image: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
        """Return dlib's (68, 2) landmarks for an MTCNN box."""
        x1, y1, x2, y2 = box
        width, height = x2 - x1, y2 - y1
        left_offset, top_offset, right_offset, bottom_offset = _HOG_BOX_OFFSETS
        rectangle = dlib.rectangle(
            round(x1 + left_offset * width),
            round(y1 + top_offset * height),
            round(x2 + right_offset * width),
            round(y2 + bottom_offset * height),
        )

        shape = self._predictor(image, rectangle)
        points = np.array([(part.x, part.y) for part in shape.parts()], dtype=np.float32)
        if points.shape != (LANDMARK_COUNT, 2):
            raise RuntimeError(f"dlib returned {len(points)} landmarks instead of {LANDMARK_COUNT}")
        return points


def face_crop_box(detection: FaceDetection, margin: float) -> tuple[int, int, int, int]:
    """Return a square box (x1, y1, x2, y2) centred on the face's MTCNN box.

    The side is the longer side of the MTCNN box plus margin times that length on each side.
    The box may extend beyond the image, so the caller pads or clips when cropping.

    Raises:
        ValueError: margin is negative or not finite.
    """
    if not math.isfinite(margin) or margin < 0.0:
        raise ValueError(f"margin must be a finite value of at least 0, got {margin!r}")

    x1, y1, x2, y2 = detection.box
    side = max(x2 - x1, y2 - y1) * (1.0 + 2.0 * margin)
    side_pixels = max(1, round(side))
    left = round((x1 + x2) / 2.0 - side_pixels / 2.0)
    top = round((y1 + y2) / 2.0 - side_pixels / 2.0)
    return left, top, left + side_pixels, top + side_pixels


def draw_detection(image_rgb: np.ndarray, detection: FaceDetection) -> np.ndarray:
    """Draw the MTCNN box, its probability and the 68 landmarks on a copy of the image.

    Greyscale input is stacked to RGB so that the overlay can be coloured.
    """
    canvas = _as_rgb(image_rgb).copy()
    thickness = max(1, round(min(canvas.shape[:2]) / 256))

    x1, y1, x2, y2 = (round(value) for value in detection.box)
    cv2.rectangle(canvas, (x1, y1), (x2, y2), (0, 220, 0), thickness, cv2.LINE_AA)

    label = f"p={detection.probability:.2f}"
    font_scale = 0.4 * thickness
    cv2.putText(canvas, label, (x1, max(y1 - 4 * thickness, 10)), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                (0, 220, 0), thickness, cv2.LINE_AA)

    radius = max(1, thickness)
    for x, y in detection.landmarks:
        cv2.circle(canvas, (round(float(x)), round(float(y))), radius, (255, 60, 60), -1, cv2.LINE_AA)
    return canvas
