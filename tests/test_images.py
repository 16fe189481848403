"""Tests for fer_core.images on real London faces and files broken on purpose."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fer_core.images import (
    IMAGE_SUFFIXES,
    MIN_IMAGE_SIDE,
    ImageProblem,
    ImageReadError,
    is_image_file,
    read_image,
    write_image_atomic,
)

EXIF_ORIENTATION_TAG = 0x0112


@pytest.fixture(scope="module")
def london_file(london_root: Path) -> Path:
    return london_root / "neutral" / "001_03.jpg"


@pytest.fixture(scope="module")
def face(london_file: Path) -> np.ndarray:
    """Return a real face downscaled to 96 x 64 (width x height), so orientation is visible."""
    with Image.open(london_file) as image:
        return np.asarray(image.convert("RGB").resize((96, 64), Image.Resampling.LANCZOS))


def test_read_jpeg_shape(london_file: Path) -> None:
    loaded = read_image(london_file)
    assert loaded.rgb.shape == (512, 512, 3)
    assert loaded.rgb.dtype == np.uint8
    assert loaded.greyscale is False
    assert loaded.path == london_file


def test_read_jpeg_draft(london_file: Path) -> None:
    loaded = read_image(london_file, draft_size=128)
    assert loaded.rgb.shape == (128, 128, 3)


def test_greyscale_png(tmp_path: Path, face: np.ndarray) -> None:
    grey = np.asarray(Image.fromarray(face).convert("L"))
    path = tmp_path / "grey.png"
    Image.fromarray(grey).save(path)

    loaded = read_image(path)
    assert loaded.greyscale is True
    assert np.array_equal(loaded.rgb[:, :, 0], grey)
    assert np.array_equal(loaded.rgb[:, :, 2], grey)


def test_rgb_with_equal_channels_is_greyscale(tmp_path: Path, face: np.ndarray) -> None:
    grey = np.asarray(Image.fromarray(face).convert("L"))
    path = tmp_path / "grey_rgb.png"
    Image.fromarray(np.stack([grey] * 3, axis=2)).save(path)

    assert read_image(path).greyscale is True


def test_grey_palette_tiff(tmp_path: Path, face: np.ndarray) -> None:
    grey = Image.fromarray(face).convert("L")
    palette_image = grey.convert("P")
    path = tmp_path / "KA.AN1.39.tiff"
    palette_image.save(path)
    assert Image.open(path).mode == "P"

    loaded = read_image(path)
    assert loaded.greyscale is True
    assert np.array_equal(loaded.rgb[:, :, 1], np.asarray(palette_image.convert("L")))


def test_colour_palette_png(tmp_path: Path, face: np.ndarray) -> None:
    palette_image = Image.fromarray(face).quantize(colors=64)
    path = tmp_path / "palette.png"
    palette_image.save(path)

    loaded = read_image(path)
    assert loaded.greyscale is False
    assert np.array_equal(loaded.rgb, np.asarray(palette_image.convert("RGB")))


def test_sixteen_bit_png_scaled(tmp_path: Path) -> None:
    row = np.array([0, 1000, 32896, 65535], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(np.tile(row, (40, 10))).save(path)
    assert Image.open(path).mode == "I;16"

    loaded = read_image(path)
    assert loaded.rgb[0, :4, 0].tolist() == [0, 4, 128, 255]
    assert loaded.greyscale is True


def test_sixteen_bit_face_keeps_contrast(tmp_path: Path, face: np.ndarray) -> None:
    grey = np.asarray(Image.fromarray(face).convert("L")).astype(np.uint16) * 257
    path = tmp_path / "deep_face.png"
    Image.fromarray(grey).save(path)

    loaded = read_image(path)
    assert np.array_equal(loaded.rgb[:, :, 0], (grey // 257).astype(np.uint8))


def test_exif_rotation_upright(tmp_path: Path, face: np.ndarray) -> None:
    upright = Image.fromarray(face)
    # Orientation 6 means the stored pixels are shown turned 90 degrees clockwise, so store
    # them turned 90 degrees counter-clockwise.
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = 6
    path = tmp_path / "rotated.jpg"
    stored.save(path, quality=95, exif=exif)

    loaded = read_image(path)
    assert loaded.rgb.shape == face.shape

    difference = np.abs(loaded.rgb.astype(int) - face.astype(int)).mean()
    flipped = np.abs(loaded.rgb.astype(int) - face[::-1, ::-1].astype(int)).mean()
    assert difference < 6
    assert flipped > 3 * difference


def test_rgba_composited_on_white(tmp_path: Path, face: np.ndarray) -> None:
    rgba = np.dstack([face, np.full(face.shape[:2], 255, dtype=np.uint8)])
    rgba[:, :10, 3] = 0
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, mode="RGBA").save(path)

    loaded = read_image(path)
    assert np.all(loaded.rgb[:, :10] == 255)
    assert np.array_equal(loaded.rgb[:, 10:], face[:, 10:])


def test_cmyk_jpeg_to_rgb(tmp_path: Path, face: np.ndarray) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(face).convert("CMYK").save(path, quality=95)
    assert Image.open(path).mode == "CMYK"

    loaded = read_image(path)
    assert loaded.rgb.shape == face.shape
    assert np.abs(loaded.rgb.astype(int) - face.astype(int)).mean() < 8


def _reason(path: Path) -> ImageProblem:
    with pytest.raises(ImageReadError) as caught:
        read_image(path)
    return caught.value.reason


def test_missing_file(tmp_path: Path) -> None:
    assert _reason(tmp_path / "absent.jpg") is ImageProblem.NOT_FOUND


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.touch()
    assert _reason(path) is ImageProblem.EMPTY


def test_text_named_jpg(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("not a picture\n")
    assert _reason(path) is ImageProblem.NOT_IMAGE


def test_truncated_jpeg(tmp_path: Path, london_file: Path) -> None:
    data = london_file.read_bytes()
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data[: len(data) // 2])
    assert _reason(path) is ImageProblem.CORRUPT


def test_truncated_jpeg_draft(tmp_path: Path, london_file: Path) -> None:
    data = london_file.read_bytes()
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError) as caught:
        read_image(path, draft_size=64)
    assert caught.value.reason is ImageProblem.CORRUPT


def test_too_small(tmp_path: Path, face: np.ndarray) -> None:
    path = tmp_path / "tiny.png"
    Image.fromarray(face[: MIN_IMAGE_SIDE - 1, : MIN_IMAGE_SIDE - 1]).save(path)
    assert _reason(path) is ImageProblem.TOO_SMALL


def test_float_tiff_unsupported(tmp_path: Path) -> None:
    path = tmp_path / "float.tiff"
    Image.fromarray(np.ones((40, 40), dtype=np.float32)).save(path)
    assert _reason(path) is ImageProblem.UNSUPPORTED_MODE


def test_error_message_names_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.touch()
    with pytest.raises(ImageReadError) as caught:
        read_image(path)
    message = str(caught.value)
    assert str(path) in message
    assert "Copy the file again" in message
    assert caught.value.path == path


def test_error_is_value_error() -> None:
    assert issubclass(ImageReadError, ValueError)


def test_suffixes_ignore_case() -> None:
    assert is_image_file(Path("KA.AN1.39.TIFF"))
    assert is_image_file(Path("face.JpEg"))
    assert not is_image_file(Path("london_info.csv"))
    assert {".pgm", ".ppm", ".webp", ".bmp"} <= IMAGE_SUFFIXES


def test_write_image_round_trip(tmp_path: Path, face: np.ndarray) -> None:
    path = tmp_path / "out" / "face.png"
    write_image_atomic(path, face)

    assert np.array_equal(read_image(path).rgb, face)
    assert sorted(p.name for p in path.parent.iterdir()) == ["face.png"]


def test_write_image_replaces(tmp_path: Path, face: np.ndarray) -> None:
    path = tmp_path / "face.png"
    write_image_atomic(path, face)
    write_image_atomic(path, face[::-1])

    assert np.array_equal(read_image(path).rgb, face[::-1])
    assert len(list(tmp_path.iterdir())) == 1


def test_write_greyscale_array(tmp_path: Path, face: np.ndarray) -> None:
    path = tmp_path / "grey.png"
    write_image_atomic(path, face[:, :, 0])
    assert read_image(path).greyscale is True


def test_write_rejects_jpeg_name(tmp_path: Path, face: np.ndarray) -> None:
    with pytest.raises(ValueError, match="png"):
        write_image_atomic(tmp_path / "face.jpg", face)


def test_write_rejects_float(tmp_path: Path, face: np.ndarray) -> None:
    with pytest.raises(ValueError, match="uint8"):
        write_image_atomic(tmp_path / "face.png", face.astype(np.float32))
    assert not any(tmp_path.iterdir())


def test_written_png_has_usual_mode(tmp_path):
    path = write_image_atomic(tmp_path / "out.png", np.zeros((8, 8), dtype=np.uint8))

    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask_now()


def _umask_now() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
