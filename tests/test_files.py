"""Atomic writers: complete files, usual mode, nothing left behind on failure."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from fer_core.files import atomic_path, write_csv_atomic, write_json_atomic, write_text_atomic


def _umask_now() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_json_round_trip(tmp_path: Path):
    path = write_json_atomic(tmp_path / "a.json", {"accuracy": 0.5})

    assert json.loads(path.read_text()) == {"accuracy": 0.5}


def test_csv_has_no_index(tmp_path: Path):
    path = write_csv_atomic(pd.DataFrame({"label": ["happy"]}), tmp_path / "a.csv")

    assert path.read_text().splitlines() == ["label", "happy"]


def test_parent_folders_created(tmp_path: Path):
    path = write_text_atomic(tmp_path / "new" / "folder" / "a.txt", "text")

    assert path.read_text() == "text"


def test_usual_file_mode(tmp_path: Path):
    path = write_text_atomic(tmp_path / "a.txt", "text")

    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask_now()


def test_failure_keeps_old_file_and_no_temporary(tmp_path: Path):
    path = write_text_atomic(tmp_path / "a.txt", "old")

    with pytest.raises(RuntimeError), atomic_path(path) as temporary:
        temporary.write_text("half")
        raise RuntimeError("disk full")

    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_nan_rejected(tmp_path: Path):
    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "a.json", {"auc": float("nan")})
