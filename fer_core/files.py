"""Atomic file writing: readers see the old file or the complete new one, never a part.

Every writer puts its data in a uniquely named temporary file in the target folder and renames
it into place, so a crash, a full disk or two threads writing at once leave no half-written
file behind. The temporary file is removed when writing fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd


def _current_umask() -> int:
    # os.umask can only be read by setting it; restore it at once.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed.

    Missing parent folders are created.
    The temporary name keeps the target's suffix, so writers that pick the format from the
    name (cv2.imwrite) work. The file gets the usual mode (0666 less the umask), not
    mkstemp's owner-only mode.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~_current_umask())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path | str, data: bytes, *, fsync: bool = False) -> Path:
    """Write bytes atomically; `fsync` also flushes them to disk before the rename."""
    path = Path(path)
    with atomic_path(path) as temporary, open(temporary, "wb") as stream:
        stream.write(data)
        if fsync:
            stream.flush()
            os.fsync(stream.fileno())
    return path


def write_text_atomic(path: Path | str, text: str) -> Path:
    """Write UTF-8 text atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path | str, payload: object, *, indent: int = 2) -> Path:
    """Write JSON atomically; values JSON cannot hold are written as strings, NaN is rejected."""
    return write_text_atomic(path, json.dumps(payload, indent=indent, allow_nan=False, default=str))


def write_csv_atomic(frame: pd.DataFrame, path: Path | str) -> Path:
    """Write a data frame as CSV without its index, atomically."""
    path = Path(path)
    with atomic_path(path) as temporary:
        frame.to_csv(temporary, index=False)
    return path
