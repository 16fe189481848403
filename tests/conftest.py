"""Fixtures shared by the whole suite: the real London faces and a private artifacts folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from fer_core.datasets import default_london_root


@pytest.fixture(scope="session")
def london_root() -> Path:
    """Return the London faces folder, found as the product finds it; the suite needs the real photographs."""
    root = default_london_root()
    if root is None or not (root / "neutral").is_dir():
        pytest.fail("London faces not found: set FER_STUDIO_LONDON_DIR to a copy, place them in "
                    "../shared/data/london_faces beside the project, or run 'fer-studio fetch-london'")
    return root


@pytest.fixture()
def artifacts_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the product's artifacts folder at a fresh temporary folder."""
    folder = tmp_path / "artifacts"
    folder.mkdir()
    monkeypatch.setenv("FER_STUDIO_ARTIFACTS", str(folder))
    return folder
