"""Tests for fer_core.masks on real London faces with landmarks from the real MTCNN and dlib."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_core.constants import CHIN, LEFT_EYE, MOUTH, NOSE_TIP, RIGHT_EYE, MaskType
from fer_core.faces import FaceAnalyzer
from fer_core.masks import (
    ClothPattern,
    MaskStyle,
    MaskedFace,
    mask_outline,
    polygon_area_mask,
    render_mask,
)

FACE_NAMES = (
    "neutral/001_03.jpg",
    "neutral/021_03.jpg",
    "neutral/045_03.jpg",
    "neutral/097_03.jpg",
    "neutral/144_03.jpg",
    "smiling/003_08.jpg",
    "smiling/010_08.jpg",
    "smiling/033_08.jpg",
    "smiling/066_08.jpg",
    "smiling/086_08.jpg",
    "smiling/113_08.jpg",
)
COVERAGES = (0.0, 0.6, 1.0)
# Landmarks that every mask covers: the nose tip and the whole mouth.
COVERED = (NOSE_TIP, *MOUTH)
# Jaw landmarks from below the ears round the chin to below the other ear.
LOWER_JAW = tuple(range(4, 13))
# A colour far from every skin tone, so that covered pixels must change.
TEST_COLOR = (20, 110, 230)

Face = tuple[str, np.ndarray, np.ndarray]


def read_rgb(path: Path, size: int = 256) -> np.ndarray:
    image = cv2.imread(str(path))
    if image is None:
        raise FileNotFoundError(f"cannot read London face {path}")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def inside(polygon: np.ndarray, point: np.ndarray) -> bool:
    return cv2.pointPolygonTest(polygon.reshape(-1, 1, 2), (float(point[0]), float(point[1])), False) > 0


def rotate(image: np.ndarray, degrees: float) -> np.ndarray:
    height, width = image.shape[:2]
    rotation = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
    return cv2.warpAffine(image, rotation, (width, height), borderMode=cv2.BORDER_REPLICATE)


def luminance(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float64)


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    return FaceAnalyzer()


@pytest.fixture(scope="module")
def faces(london_root: Path, analyzer: FaceAnalyzer) -> list[Face]:
    """Return (name, 256 x 256 RGB image, detected landmarks) for every test face."""
    result = []
    for name in FACE_NAMES:
        image = read_rgb(london_root / name)
        result.append((name, image, analyzer.analyze(image).landmarks))
    return result


@pytest.fixture(scope="module")
def face(faces: list[Face]) -> Face:
    return faces[0]


@pytest.mark.parametrize("coverage", COVERAGES)
@pytest.mark.parametrize("mask_type", MaskType.drawn())
def test_outline_covers_nose_tip_and_mouth(faces: list[Face], mask_type: MaskType, coverage: float) -> None:
    for name, _, landmarks in faces:
        polygon = mask_outline(landmarks, mask_type, coverage)
        for index in COVERED:
            assert inside(polygon, landmarks[index]), f"{name}: landmark {index} outside the {mask_type.value} mask"


@pytest.mark.parametrize("coverage", COVERAGES)
@pytest.mark.parametrize("mask_type", MaskType.drawn())
def test_outline_reaches_chin_and_jaw(faces: list[Face], mask_type: MaskType, coverage: float) -> None:
    for name, _, landmarks in faces:
        polygon = mask_outline(landmarks, mask_type, coverage)
        assert inside(polygon, landmarks[CHIN]), f"{name}: chin outside the {mask_type.value} mask"
        for index in LOWER_JAW:
            assert inside(polygon, landmarks[index]), f"{name}: jaw landmark {index} outside the {mask_type.value} mask"


@pytest.mark.parametrize("mask_type", MaskType.drawn())
def test_outline_leaves_eyes_free(faces: list[Face], mask_type: MaskType) -> None:
    for name, _, landmarks in faces:
        polygon = mask_outline(landmarks, mask_type, 1.0)
        for index in (*RIGHT_EYE, *LEFT_EYE):
            message = f"{name}: eye landmark {index} under the {mask_type.value} mask"
            assert not inside(polygon, landmarks[index]), message


@pytest.mark.parametrize("mask_type", MaskType.drawn())
def test_outline_top_rises_with_coverage(face: Face, mask_type: MaskType) -> None:
    _, _, landmarks = face
    tops = [mask_outline(landmarks, mask_type, coverage)[:, 1].min() for coverage in COVERAGES]

    assert tops[0] > tops[1] > tops[2]


def test_outline_shapes_differ(face: Face) -> None:
    _, image, landmarks = face
    areas = {
        mask_type: polygon_area_mask(mask_outline(landmarks, mask_type, 0.6), image.shape[:2])
        for mask_type in MaskType.drawn()
    }

    for first in MaskType.drawn():
        for second in MaskType.drawn():
            if first is second:
                continue
            union = np.logical_or(areas[first], areas[second]).sum()
            intersection = np.logical_and(areas[first], areas[second]).sum()
            assert intersection / union < 0.97, f"{first.value} and {second.value} outlines nearly equal"


@pytest.mark.parametrize("coverage", COVERAGES)
@pytest.mark.parametrize("mask_type", MaskType.drawn())
def test_render_changes_covered_pixels(faces: list[Face], mask_type: MaskType, coverage: float) -> None:
    style = MaskStyle(coverage=coverage, color=TEST_COLOR, pattern=ClothPattern.PLAIN, seed=1)
    for name, image, landmarks in faces:
        masked = render_mask(image, landmarks, mask_type, style).image
        for index in COVERED:
            x, y = np.round(landmarks[index]).astype(int)
            change = np.abs(masked[y, x].astype(int) - image[y, x].astype(int)).sum()
            assert change > 30, f"{name}: pixel of landmark {index} unchanged by the {mask_type.value} mask"


@pytest.mark.parametrize("mask_type", MaskType.drawn())
def test_render_keeps_far_pixels(face: Face, mask_type: MaskType) -> None:
    _, image, landmarks = face
    masked = render_mask(image, landmarks, mask_type).image

    assert np.array_equal(masked[:20], image[:20])


@pytest.mark.parametrize("mask_type", MaskType.drawn())
def test_render_returns_polygon(face: Face, mask_type: MaskType) -> None:
    _, image, landmarks = face
    masked = render_mask(image, landmarks, mask_type, MaskStyle(coverage=0.3))

    assert isinstance(masked, MaskedFace)
    assert masked.mask_type is mask_type
    assert masked.polygon.dtype == np.float32
    assert np.allclose(masked.polygon, mask_outline(landmarks, mask_type, 0.3))


@pytest.mark.parametrize("mask_type", MaskType.drawn())
def test_render_leaves_input_unchanged(face: Face, mask_type: MaskType) -> None:
    _, image, landmarks = face
    before = image.copy()

    render_mask(image, landmarks, mask_type)

    assert np.array_equal(image, before)


@pytest.mark.parametrize("mask_type", MaskType.drawn())
def test_render_greyscale_photo(face: Face, mask_type: MaskType) -> None:
    _, image, landmarks = face
    grey = np.repeat(luminance(image).astype(np.uint8)[..., np.newaxis], 3, axis=2)

    masked = render_mask(grey, landmarks, mask_type, MaskStyle(seed=4)).image

    assert np.array_equal(masked[..., 0], masked[..., 1])
    assert np.array_equal(masked[..., 1], masked[..., 2])
    assert not np.array_equal(masked, grey)


@pytest.mark.parametrize("shape", ["2d", "1-channel"])
def test_render_greyscale_keeps_shape(face: Face, shape: str) -> None:
    _, image, landmarks = face
    grey = luminance(image).astype(np.uint8)
    if shape == "1-channel":
        grey = grey[..., np.newaxis]

    masked = render_mask(grey, landmarks, MaskType.SURGICAL).image

    assert masked.shape == grey.shape
    assert masked.dtype == np.uint8


def test_render_greyscale_flag_on_colour_photo(face: Face) -> None:
    _, image, landmarks = face
    masked = render_mask(image, landmarks, MaskType.CLOTH, MaskStyle(seed=2), greyscale=True).image
    x, y = np.round(landmarks[NOSE_TIP]).astype(int)

    assert masked[y, x, 0] == masked[y, x, 1] == masked[y, x, 2]
    assert np.array_equal(masked[:20], image[:20])


@pytest.mark.parametrize("mask_type", MaskType.drawn())
def test_render_same_seed_identical(face: Face, mask_type: MaskType) -> None:
    _, image, landmarks = face
    first = render_mask(image, landmarks, mask_type, MaskStyle(seed=11)).image
    second = render_mask(image, landmarks, mask_type, MaskStyle(seed=11)).image

    assert np.array_equal(first, second)


def test_render_cloth_seeds_change_colour(face: Face) -> None:
    _, image, landmarks = face
    area = polygon_area_mask(mask_outline(landmarks, MaskType.CLOTH, 0.6), image.shape[:2])
    colours = [
        render_mask(image, landmarks, MaskType.CLOTH, MaskStyle(seed=seed)).image[area].mean(axis=0)
        for seed in range(6)
    ]

    for first in range(len(colours)):
        for second in range(first + 1, len(colours)):
            difference = np.abs(colours[first] - colours[second]).max()
            assert difference > 8, f"seeds {first} and {second} give nearly the same cloth colour"


def test_render_cloth_patterns_differ(face: Face) -> None:
    _, image, landmarks = face
    images = [
        render_mask(image, landmarks, MaskType.CLOTH, MaskStyle(pattern=pattern, seed=3)).image
        for pattern in ClothPattern
    ]

    for first in range(len(images)):
        for second in range(first + 1, len(images)):
            assert not np.array_equal(images[first], images[second])


def test_render_uses_given_colour(face: Face) -> None:
    _, image, landmarks = face
    masked = render_mask(image, landmarks, MaskType.KN95, MaskStyle(color=TEST_COLOR)).image
    area = polygon_area_mask(mask_outline(landmarks, MaskType.KN95, 0.6), image.shape[:2])
    mean = masked[area].mean(axis=0)

    assert mean[2] > mean[1] > mean[0]


@pytest.mark.parametrize("mask_type", MaskType.drawn())
def test_render_dark_photo_darker_mask(face: Face, mask_type: MaskType) -> None:
    _, image, landmarks = face
    dark = (image * 0.4).astype(np.uint8)
    area = polygon_area_mask(mask_outline(landmarks, mask_type, 0.6), image.shape[:2])

    bright_mask = luminance(render_mask(image, landmarks, mask_type).image)[area].mean()
    dark_mask = luminance(render_mask(dark, landmarks, mask_type).image)[area].mean()

    assert dark_mask < 0.6 * bright_mask


@pytest.mark.parametrize("mask_type", MaskType.drawn())
def test_render_side_light_shades_mask(face: Face, mask_type: MaskType) -> None:
    _, image, landmarks = face
    ramp = np.linspace(0.1, 1.0, image.shape[1])[np.newaxis, :, np.newaxis]
    side_lit = (image * ramp).astype(np.uint8)
    area = polygon_area_mask(mask_outline(landmarks, mask_type, 0.6), image.shape[:2])
    centre = int(np.round(landmarks[NOSE_TIP][0]))
    left, right = area.copy(), area.copy()
    left[:, centre:] = False
    right[:, :centre] = False

    evenly_lit = luminance(render_mask(image, landmarks, mask_type).image)
    shaded = luminance(render_mask(side_lit, landmarks, mask_type).image)
    left_ratio = shaded[left].mean() / evenly_lit[left].mean()
    right_ratio = shaded[right].mean() / evenly_lit[right].mean()

    assert left_ratio < 0.9 * right_ratio


@pytest.mark.parametrize("mask_type", MaskType.drawn())
def test_render_rolled_face_covered(london_root: Path, analyzer: FaceAnalyzer, mask_type: MaskType) -> None:
    rolled = rotate(read_rgb(london_root / "smiling/010_08.jpg"), 20)
    landmarks = analyzer.analyze(rolled).landmarks

    polygon = render_mask(rolled, landmarks, mask_type, MaskStyle(coverage=0.0)).polygon

    for index in (*COVERED, CHIN):
        assert inside(polygon, landmarks[index]), f"landmark {index} outside the {mask_type.value} mask"


def test_outline_follows_roll(london_root: Path, analyzer: FaceAnalyzer) -> None:
    upright = read_rgb(london_root / "smiling/010_08.jpg")
    rolled = rotate(upright, -20)
    upright_polygon = mask_outline(analyzer.analyze(upright).landmarks, MaskType.SURGICAL, 0.6)
    rolled_polygon = mask_outline(analyzer.analyze(rolled).landmarks, MaskType.SURGICAL, 0.6)

    back = cv2.getRotationMatrix2D((128, 128), 20, 1.0)
    unrolled = np.hstack([rolled_polygon, np.ones((len(rolled_polygon), 1))]) @ back.T
    first = polygon_area_mask(upright_polygon, (256, 256))
    second = polygon_area_mask(unrolled, (256, 256))
    overlap = np.logical_and(first, second).sum() / np.logical_or(first, second).sum()

    assert overlap > 0.85


def test_outline_follows_yaw(face: Face) -> None:
    _, _, landmarks = face
    turned = landmarks.copy()
    eye_distance = np.linalg.norm(landmarks[list(LEFT_EYE)].mean(0) - landmarks[list(RIGHT_EYE)].mean(0))
    turned[27:36, 0] += 0.3 * eye_distance
    turned[48:68, 0] += 0.2 * eye_distance

    frontal = mask_outline(landmarks, MaskType.KN95, 0.6)
    yawed = mask_outline(turned, MaskType.KN95, 0.6)
    frontal_point = frontal[np.argmax(frontal[:, 1])]
    yawed_point = yawed[np.argmax(yawed[:, 1])]

    assert yawed_point[0] - frontal_point[0] > 0.1 * eye_distance


@pytest.mark.parametrize("coverage", [-0.1, 1.5, float("nan")])
def test_style_rejects_bad_coverage(coverage: float) -> None:
    with pytest.raises(ValueError, match=str(coverage)):
        MaskStyle(coverage=coverage)


def test_outline_rejects_bad_coverage(face: Face) -> None:
    _, _, landmarks = face

    with pytest.raises(ValueError, match="1.2"):
        mask_outline(landmarks, MaskType.N95, 1.2)


def test_style_rejects_bad_colour() -> None:
    with pytest.raises(ValueError, match="300"):
        MaskStyle(color=(300, 0, 0))


def test_style_rejects_unknown_pattern() -> None:
    with pytest.raises(ValueError, match="tartan"):
        MaskStyle(pattern="tartan")


def test_style_rejects_negative_seed() -> None:
    with pytest.raises(ValueError, match="-3"):
        MaskStyle(seed=-3)


def test_render_rejects_wrong_landmark_shape(face: Face) -> None:
    _, image, landmarks = face

    with pytest.raises(ValueError, match=r"\(67, 2\)"):
        render_mask(image, landmarks[:67], MaskType.SURGICAL)


def test_render_rejects_float_image(face: Face) -> None:
    _, image, landmarks = face

    with pytest.raises(ValueError, match="float64"):
        render_mask(image / 255.0, landmarks, MaskType.SURGICAL)


def test_render_rejects_unmasked_type(face: Face) -> None:
    _, image, landmarks = face

    with pytest.raises(ValueError, match="'none'"):
        render_mask(image, landmarks, MaskType.NONE)


@pytest.mark.parametrize("mask_type", MaskType.drawn())
def test_render_face_cut_by_border(london_root: Path, analyzer: FaceAnalyzer, mask_type: MaskType) -> None:
    cut = read_rgb(london_root / "smiling/010_08.jpg")[:190]
    landmarks = analyzer.analyze(cut).landmarks

    masked = render_mask(cut, landmarks, mask_type).image
    x, y = np.round(landmarks[NOSE_TIP]).astype(int)

    assert masked.shape == cut.shape
    assert not np.array_equal(masked[y, x], cut[y, x])


@pytest.mark.parametrize("mask_type", MaskType.drawn())
def test_render_tiny_greyscale_face(london_root: Path, analyzer: FaceAnalyzer, mask_type: MaskType) -> None:
    face = luminance(read_rgb(london_root / "smiling/010_08.jpg", 512)[150:400, 131:381]).astype(np.uint8)
    tiny = cv2.resize(face, (48, 48), interpolation=cv2.INTER_AREA)
    landmarks = analyzer.analyze(tiny).landmarks

    masked = render_mask(tiny, landmarks, mask_type, MaskStyle(color=(255, 255, 255))).image
    columns, rows = np.round(landmarks[list(MOUTH)]).astype(int).T

    assert masked.shape == (48, 48)
    assert masked[rows, columns].mean() > tiny[rows, columns].mean() + 20


def test_render_mask_outside_image(face: Face) -> None:
    _, image, landmarks = face
    far_away = landmarks + 5000

    masked = render_mask(image, far_away, MaskType.N95).image

    assert np.array_equal(masked, image)


def test_polygon_area_mask_square() -> None:
    square = np.array([[2, 2], [12, 2], [12, 12], [2, 12]], dtype=np.float32)

    area = polygon_area_mask(square, (20, 30))

    assert area.shape == (20, 30)
    assert area.dtype == bool
    assert area.sum() == pytest.approx(100, abs=22)
    assert area[7, 7]
    assert not area[15, 15]


def test_polygon_area_mask_rejects_bad_polygon() -> None:
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        polygon_area_mask(np.zeros((2, 2)), (10, 10))
