"""Tests for fer_core.faces with the real MTCNN, the real dlib model and real London faces."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import cv2
import dlib
import numpy as np
import pytest
from facenet_pytorch import MTCNN

from fer_core.constants import LEFT_EYE, RIGHT_EYE
from fer_core.faces import (
    FaceAnalyzer,
    FaceDetection,
    FaceSelection,
    NoFaceError,
    draw_detection,
    face_crop_box,
    landmark_model_path,
)

FACE_NAMES = (
    "neutral/001_03.jpg",
    "smiling/010_08.jpg",
    "neutral/045_03.jpg",
    "smiling/086_08.jpg",
    "neutral/144_03.jpg",
)
# dlib places the chin and jaw landmarks up to about 8 % of the box size outside MTCNN's box.
BOX_TOLERANCE = 0.1


LoadFace = Callable[..., np.ndarray]


@pytest.fixture(scope="module")
def load_london(london_root: Path) -> LoadFace:
    """Return a reader of London faces as RGB, optionally resized to size x size."""

    def load(name: str, size: int | None = None) -> np.ndarray:
        image = cv2.imread(str(london_root / name))
        if image is None:
            raise FileNotFoundError(f"cannot read London face {london_root / name}")
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        if size is not None:
            image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        return image

    return load


def eye_line_degrees(landmarks: np.ndarray) -> float:
    right_eye = landmarks[list(RIGHT_EYE)].mean(axis=0)
    left_eye = landmarks[list(LEFT_EYE)].mean(axis=0)
    return math.degrees(math.atan2(left_eye[1] - right_eye[1], left_eye[0] - right_eye[0]))


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    return FaceAnalyzer()


@pytest.mark.parametrize("name", FACE_NAMES)
def test_analyze_finds_one_face(analyzer: FaceAnalyzer, name: str, load_london: LoadFace) -> None:
    detection = analyzer.analyze(load_london(name))

    assert detection.face_count == 1
    assert detection.selection == "only face"
    assert detection.probability > 0.9
    assert detection.landmarks.shape == (68, 2)
    assert detection.landmarks.dtype == np.float32


@pytest.mark.parametrize("name", FACE_NAMES)
def test_analyze_landmarks_inside_box(analyzer: FaceAnalyzer, name: str, load_london: LoadFace) -> None:
    detection = analyzer.analyze(load_london(name, 256))
    x1, y1, x2, y2 = detection.box
    slack_x, slack_y = BOX_TOLERANCE * (x2 - x1), BOX_TOLERANCE * (y2 - y1)
    xs, ys = detection.landmarks[:, 0], detection.landmarks[:, 1]

    assert xs.min() >= x1 - slack_x
    assert xs.max() <= x2 + slack_x
    assert ys.min() >= y1 - slack_y
    assert ys.max() <= y2 + slack_y


def test_analyze_landmarks_match_hog_box(analyzer: FaceAnalyzer, load_london: LoadFace) -> None:
    image = load_london("smiling/033_08.jpg")
    detection = analyzer.analyze(image)

    hog_box = dlib.get_frontal_face_detector()(image, 0)[0]
    shape = dlib.shape_predictor(str(landmark_model_path()))(image, hog_box)
    reference = np.array([(part.x, part.y) for part in shape.parts()], dtype=np.float32)
    eye_distance = np.linalg.norm(reference[list(LEFT_EYE)].mean(0) - reference[list(RIGHT_EYE)].mean(0))
    mean_error = np.linalg.norm(detection.landmarks - reference, axis=1).mean() / eye_distance

    assert mean_error < 0.03


def test_analyze_matches_facenet_detect(analyzer: FaceAnalyzer, load_london: LoadFace) -> None:
    image = load_london("neutral/045_03.jpg", 256)
    detection = analyzer.analyze(image)

    reference = MTCNN(keep_all=True, min_face_size=analyzer.min_face_pixels(image.shape))
    boxes, probabilities = reference.detect(image)

    assert len(boxes) == 1
    assert np.allclose(detection.box, np.asarray(boxes[0], dtype=float), atol=0.5)
    assert detection.probability == pytest.approx(float(probabilities[0]), abs=1e-4)


def test_analyze_large_image_box_scales(analyzer: FaceAnalyzer, load_london: LoadFace) -> None:
    small = analyzer.analyze(load_london("smiling/033_08.jpg", 256))
    large = analyzer.analyze(load_london("smiling/033_08.jpg", 1024))

    assert np.allclose(np.array(large.box) / 4, small.box, atol=4)
    assert np.allclose(large.landmarks / 4, small.landmarks, atol=4)


def test_analyze_blank_raises(analyzer: FaceAnalyzer) -> None:
    blank = np.full((256, 256, 3), 128, dtype=np.uint8)

    with pytest.raises(NoFaceError, match="no face found in the 256x256 image"):
        analyzer.analyze(blank)


def test_analyze_noise_raises(analyzer: FaceAnalyzer) -> None:
    noise = np.random.default_rng(0).integers(0, 256, size=(240, 320, 3), dtype=np.uint8)

    with pytest.raises(NoFaceError, match="lower min_face_size"):
        analyzer.analyze(noise)


def two_faces_side_by_side(load_london: LoadFace) -> np.ndarray:
    """Return a 512 x 1024 image: a full-size face on the left, a 3/4-size face on the right."""
    large = load_london("neutral/004_03.jpg")
    small = load_london("neutral/020_03.jpg", 384)
    right = np.full_like(large, 200)
    right[64:448, 64:448] = small
    return np.concatenate([large, right], axis=1)


def test_analyze_two_faces_counts_both(analyzer: FaceAnalyzer, load_london: LoadFace) -> None:
    detection = analyzer.analyze(two_faces_side_by_side(load_london))

    assert detection.face_count == 2
    assert detection.selection == "largest of 2 faces"


def test_analyze_two_faces_picks_largest(analyzer: FaceAnalyzer, load_london: LoadFace) -> None:
    detection = analyzer.analyze(two_faces_side_by_side(load_london))
    x1, _, x2, _ = detection.box

    assert (x1 + x2) / 2 < 512


def test_analyze_most_confident_rule(load_london: LoadFace) -> None:
    analyzer = FaceAnalyzer(selection=FaceSelection.MOST_CONFIDENT)
    image = two_faces_side_by_side(load_london)
    detection = analyzer.analyze(image)
    other_side = image.copy()
    box_centre = (detection.box[0] + detection.box[2]) / 2
    if box_centre < 512:
        other_side[:, :512] = 200
    else:
        other_side[:, 512:] = 200
    other = analyzer.analyze(other_side)

    assert detection.selection == "most confident of 2 faces"
    assert detection.probability >= other.probability


@pytest.mark.parametrize("shape", ["2d", "1-channel"])
def test_analyze_greyscale(analyzer: FaceAnalyzer, shape: str, load_london: LoadFace) -> None:
    grey = cv2.cvtColor(load_london("smiling/061_08.jpg", 256), cv2.COLOR_RGB2GRAY)
    image = grey if shape == "2d" else grey[:, :, np.newaxis]

    detection = analyzer.analyze(image)

    assert detection.face_count == 1
    assert detection.landmarks.shape == (68, 2)


def test_analyze_follows_roll(analyzer: FaceAnalyzer, load_london: LoadFace) -> None:
    image = load_london("neutral/030_03.jpg", 256)
    rotation = cv2.getRotationMatrix2D((128, 128), -20, 1.0)
    rolled = cv2.warpAffine(image, rotation, (256, 256), borderMode=cv2.BORDER_REPLICATE)

    detection = analyzer.analyze(rolled)

    assert eye_line_degrees(detection.landmarks) == pytest.approx(20, abs=5)


def test_analyze_rejects_float_image(analyzer: FaceAnalyzer, load_london: LoadFace) -> None:
    image = load_london("neutral/001_03.jpg", 128).astype(np.float32) / 255

    with pytest.raises(ValueError, match="float32"):
        analyzer.analyze(image)


def test_analyze_rejects_alpha_channel(analyzer: FaceAnalyzer) -> None:
    image = np.zeros((64, 64, 4), dtype=np.uint8)

    with pytest.raises(ValueError, match=r"\(64, 64, 4\)"):
        analyzer.analyze(image)


def test_analyze_rejects_tiny_image(analyzer: FaceAnalyzer) -> None:
    with pytest.raises(ValueError, match="too small"):
        analyzer.analyze(np.zeros((8, 8, 3), dtype=np.uint8))


def test_analyzer_rejects_bad_thresholds() -> None:
    with pytest.raises(ValueError, match="thresholds"):
        FaceAnalyzer(thresholds=(0.6, 1.2, 0.7))


def test_analyzer_rejects_bad_device() -> None:
    with pytest.raises(ValueError, match="invalid torch device 'gpu0'"):
        FaceAnalyzer(device="gpu0")


def test_analyzer_rejects_bad_selection() -> None:
    with pytest.raises(ValueError, match="biggest"):
        FaceAnalyzer(selection="biggest")


def test_min_face_pixels_scales_with_image(analyzer: FaceAnalyzer) -> None:
    assert analyzer.min_face_pixels((1000, 2000, 3)) == pytest.approx(200)
    assert analyzer.min_face_pixels((100, 100, 3)) == pytest.approx(40)
    assert analyzer.min_face_pixels((30, 30)) == pytest.approx(30)


def test_landmark_model_path_exists() -> None:
    path = landmark_model_path()

    assert path.name == "shape_predictor_68_face_landmarks.dat"
    assert path.is_file()


def sample_detection() -> FaceDetection:
    return FaceDetection(
        box=(10.0, 20.0, 50.0, 80.0),
        probability=0.99,
        landmarks=np.zeros((68, 2), dtype=np.float32),
        face_count=1,
        selection="only face",
    )


def test_face_crop_box_is_square() -> None:
    x1, y1, x2, y2 = face_crop_box(sample_detection(), 0.25)

    assert x2 - x1 == y2 - y1
    assert x2 - x1 == 90


def test_face_crop_box_centred() -> None:
    x1, y1, x2, y2 = face_crop_box(sample_detection(), 0.25)

    assert (x1 + x2) / 2 == pytest.approx(30, abs=0.5)
    assert (y1 + y2) / 2 == pytest.approx(50, abs=0.5)


def test_face_crop_box_rejects_negative_margin() -> None:
    with pytest.raises(ValueError, match="-0.1"):
        face_crop_box(sample_detection(), -0.1)


def test_draw_detection_leaves_input(analyzer: FaceAnalyzer, load_london: LoadFace) -> None:
    image = load_london("smiling/010_08.jpg", 256)
    before = image.copy()
    detection = analyzer.analyze(image)

    preview = draw_detection(image, detection)

    assert np.array_equal(image, before)
    assert preview.shape == image.shape
    assert not np.array_equal(preview, image)


def test_draw_detection_marks_landmarks(analyzer: FaceAnalyzer, load_london: LoadFace) -> None:
    image = load_london("smiling/010_08.jpg", 256)
    detection = analyzer.analyze(image)

    preview = draw_detection(image, detection)
    x, y = np.round(detection.landmarks[30]).astype(int)

    assert tuple(preview[y, x]) == (255, 60, 60)
