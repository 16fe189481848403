"""Fixtures for the explanation tests: real London faces at the prepared crop size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

FACE_IDS = ("001", "002", "003", "004")


@pytest.fixture(scope="session")
def faces(london_root: Path) -> list[np.ndarray]:
    """Return four real London faces as 256 px uint8 RGB arrays, the prepared crop size."""
    images = []
    for face_id in FACE_IDS:
        with Image.open(london_root / "neutral" / f"{face_id}_03.jpg") as image:
            images.append(np.asarray(image.convert("RGB").resize((256, 256), Image.BILINEAR)))
    return images
