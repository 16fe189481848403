"""Locations of the product's outputs.

Everything the tool writes (prepared sets, runs, jobs, decoded data sets, the data set
registry) lives under one artifacts folder, git-ignored. FER_STUDIO_ARTIFACTS overrides
its location, which tests use to work in a temporary folder.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def artifacts_root() -> Path:
    """Return the artifacts folder, creating it if needed."""
    root = Path(os.environ.get("FER_STUDIO_ARTIFACTS", PROJECT_ROOT / "artifacts")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def prepared_root() -> Path:
    """Return the folder of prepared (masked and cropped) sets."""
    return artifacts_root() / "prepared"


def runs_root() -> Path:
    """Return the folder of training runs."""
    return artifacts_root() / "runs"


def jobs_root() -> Path:
    """Return the folder of background job records."""
    return artifacts_root() / "jobs"
