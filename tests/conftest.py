"""Fixtures shared by the whole suite: the real London faces and a private artifacts folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
LONDON_ROOT = Path(os.environ.get("FER_STUDIO_LONDON_DIR", REPO_ROOT.parent / "shared" / "data" / "london_faces"))


@pytest.fixture(scope="session")
def london_root() -> Path:
    """Return the London faces folder; the suite needs the real photographs."""
    if not (LONDON_ROOT / "neutral").is_dir():
        pytest.fail(f"London faces not found at {LONDON_ROOT}; set FER_STUDIO_LONDON_DIR to a copy")
    return LONDON_ROOT


@pytest.fixture()
def artifacts_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the product's artifacts folder at a fresh temporary folder."""
    folder = tmp_path / "artifacts"
    folder.mkdir()
    monkeypatch.setenv("FER_STUDIO_ARTIFACTS", str(folder))
    return folder
