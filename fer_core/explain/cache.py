"""On-disk cache of explanation maps, one compressed .npz file per image and setting."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from fer_core.images import write_bytes_atomic

logger = logging.getLogger(__name__)

# Bump when the stored arrays change meaning, so older cache files are no longer matched.
CACHE_FORMAT = 1
_DIGEST_CHUNK = 1 << 20


def file_digest(path: Path | str) -> str:
    """Return the SHA-256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(_DIGEST_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_key(parts: Mapping[str, object]) -> str:
    """Return a stable 24-character key for the settings that determine an explanation."""
    text = json.dumps({**parts, "format": CACHE_FORMAT}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def load_arrays(path: Path) -> dict[str, np.ndarray] | None:
    """Return the arrays stored at `path`, or None when the file is missing or unreadable."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            return {name: stored[name] for name in stored.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        logger.warning("ignoring unreadable explanation cache file %s (%s); it will be recomputed", path, error)
        return None


def save_arrays(path: Path, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write arrays as a compressed .npz file atomically and return its path."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{name: np.asarray(value) for name, value in arrays.items()})
    return write_bytes_atomic(path, buffer.getvalue())
