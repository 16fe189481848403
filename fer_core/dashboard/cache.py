"""Cached loaders for the dashboard: models once per process, tables once per change.

Detectors and trained models use `st.cache_resource`, so every session of the server shares
one instance. Tables use `st.cache_data`, keyed by the folder and its modification time so a
changed file is read again without a manual refresh. Engine modules are imported inside the
loaders so a page pays for torch only when it needs it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import streamlit as st

from fer_core.paths import artifacts_root, prepared_root, runs_root

if TYPE_CHECKING:
    import numpy as np

    from fer_core.datasets import DatasetSpec, DatasetTable
    from fer_core.faces import FaceAnalyzer, FaceDetection
    from fer_core.images import LoadedImage
    from fer_core.prepare import PreparedSet
    from fer_core.runs import TrainedModel
    from fer_core.splits import SplitSettings

logger = logging.getLogger(__name__)

# Seconds a run list stays cached; live pages refresh every 2 seconds.
RUNS_TTL_SECONDS = 2
DATASETS_TTL_SECONDS = 60


def folder_stamp(folder: Path, names: tuple[str, ...]) -> tuple[float, ...]:
    """Return the modification times of the named files in a folder (0 when missing).

    Cached loaders take this as an argument, so a rewritten file changes the cache key.
    """
    stamps = []
    for name in names:
        path = Path(folder) / name
        stamps.append(path.stat().st_mtime if path.exists() else 0.0)
    return tuple(stamps)


# ---------------------------------------------------------------------------------------------
# Models, once per process


@st.cache_resource(show_spinner="Loading the face detector (MTCNN) and the 68-point landmark model...")
def face_analyzer(selection: str = "largest") -> FaceAnalyzer:
    """Return the shared FaceAnalyzer (MTCNN plus dlib landmarks) for previews."""
    from fer_core.faces import FaceAnalyzer, FaceSelection
    from fer_core.models import pick_device

    return FaceAnalyzer(device=pick_device("auto"), selection=FaceSelection(selection))


@st.cache_resource(show_spinner="Loading the trained model...", max_entries=8)
def _trained_model(run_dir: str, fold: str | None, stamp: float) -> TrainedModel:
    from fer_core.runs import load_trained_model

    return load_trained_model(Path(run_dir), fold)


def trained_model(run_dir: Path, fold: str | None = None) -> TrainedModel:
    """Return a run's TrainedModel for one fold (the first finished one for None), on the CPU.

    The cache key includes the models folder's modification time, so retrained weights load again.
    """
    models = Path(run_dir) / "models"
    stamp = models.stat().st_mtime if models.exists() else 0.0
    return _trained_model(str(run_dir), fold, stamp)


@st.cache_resource(show_spinner="Looking for a GPU...")
def compute_device() -> tuple[str, str, bool]:
    """Return the automatic device's type, a readable name and whether CUDA is available."""
    import torch

    from fer_core.models import describe_device, pick_device

    device = pick_device("auto")
    return device.type, describe_device(device), bool(torch.cuda.is_available())


# ---------------------------------------------------------------------------------------------
# Data sets


@st.cache_data(ttl=DATASETS_TTL_SECONDS, show_spinner=False)
def dataset_specs(artifacts: str) -> list[DatasetSpec]:
    """Return the registered and built-in data set specs (see `datasets.available_datasets`)."""
    from fer_core.datasets import available_datasets

    return list(available_datasets(Path(artifacts)))


def current_dataset_specs() -> list[DatasetSpec]:
    """Return the data set specs of the current artifacts folder."""
    return dataset_specs(str(artifacts_root()))


@st.cache_data(show_spinner="Reading the data set...", max_entries=16)
def dataset_table(name: str, artifacts: str, check_images: bool = False) -> DatasetTable:
    """Load a data set by name; raise DatasetError or KeyError when it cannot be read."""
    from fer_core.datasets import load_dataset

    specs = {spec.name: spec for spec in dataset_specs(artifacts)}
    if name not in specs:
        raise KeyError(f"data set {name!r} is not registered; add it on the Data sets page")
    return load_dataset(specs[name], check_images=check_images, artifacts_root=Path(artifacts))


def load_table(name: str, check_images: bool = False) -> DatasetTable:
    """Load a data set of the current artifacts folder by name (cached)."""
    return dataset_table(name, str(artifacts_root()), check_images)


def clear_dataset_caches() -> None:
    """Forget cached data set lists and tables, after a data set was added."""
    dataset_specs.clear()
    dataset_table.clear()


# ---------------------------------------------------------------------------------------------
# Prepared sets


@st.cache_data(show_spinner=False, max_entries=8)
def _prepared_set(folder: str, stamp: tuple[float, ...]) -> PreparedSet:
    from fer_core.prepare import load_prepared

    return load_prepared(Path(folder))


def prepared_set(folder: Path) -> PreparedSet:
    """Return the PreparedSet in `folder` (cached until its manifest or report changes)."""
    return _prepared_set(str(folder), folder_stamp(folder, ("manifest.csv", "report.csv", "settings.json")))


@st.cache_data(ttl=DATASETS_TTL_SECONDS, show_spinner=False)
def _prepared_summaries(root: str, stamp: float) -> pd.DataFrame:
    from fer_core.prepare import list_prepared

    rows = []
    for prepared in list_prepared(Path(root)):
        info = prepared.info
        rows.append({
            "folder": str(prepared.folder),
            "data set": prepared.dataset_name,
            "photographs": info.get("source_images"),
            "face crops": len(prepared.manifest),
            "skipped": info.get("skipped_sources"),
            "mask types": ", ".join(m.value for m in prepared.settings.mask_types),
            "coverage": prepared.settings.coverage,
            "crop size": prepared.settings.crop_size,
            "has subjects": bool(info.get("has_subjects", False)),
        })
    return pd.DataFrame(rows, columns=["folder", "data set", "photographs", "face crops", "skipped",
                                       "mask types", "coverage", "crop size", "has subjects"])


def prepared_summaries() -> pd.DataFrame:
    """Return one row per finished prepared set, newest first."""
    root = prepared_root()
    stamp = root.stat().st_mtime if root.is_dir() else 0.0
    return _prepared_summaries(str(root), stamp)


def clear_prepared_caches() -> None:
    """Forget cached prepared set lists, after a preparation finished."""
    _prepared_summaries.clear()


# ---------------------------------------------------------------------------------------------
# Runs


@st.cache_data(ttl=RUNS_TTL_SECONDS, show_spinner=False)
def _runs_table(root: str) -> pd.DataFrame:
    from fer_core.runs import list_runs

    return list_runs(Path(root))


def runs_table() -> pd.DataFrame:
    """Return the run list of the current artifacts folder (cached for 2 seconds)."""
    return _runs_table(str(runs_root()))


@st.cache_data(show_spinner=False, max_entries=64)
def _json_file(path: str, stamp: float) -> dict:
    return json.loads(Path(path).read_text())


def read_json(path: Path) -> dict | None:
    """Return a JSON file's content (cached until it changes), or None when it is missing."""
    path = Path(path)
    if not path.is_file():
        return None
    return _json_file(str(path), path.stat().st_mtime)


@st.cache_data(show_spinner=False, max_entries=64)
def _events(run_dir: str, stamp: float) -> list[dict]:
    from fer_core.training import read_events

    return read_events(Path(run_dir))


def run_events(run_dir: Path) -> list[dict]:
    """Return a run's progress events (cached until events.jsonl grows)."""
    path = Path(run_dir) / "events.jsonl"
    stamp = path.stat().st_mtime if path.exists() else 0.0
    return _events(str(run_dir), stamp)


# ---------------------------------------------------------------------------------------------
# Single images


@st.cache_data(show_spinner="Finding the face and its landmarks...", max_entries=32)
def detect_face(rgb: np.ndarray, selection: str = "largest") -> FaceDetection:
    """Return the FaceDetection of an image (cached by its pixels); raise NoFaceError without a face."""
    return face_analyzer(selection).analyze(rgb)


@st.cache_data(show_spinner=False, max_entries=32)
def read_image_file(path: str, stamp: float) -> LoadedImage:
    """Read an image file into a LoadedImage (cached until the file changes)."""
    from fer_core.images import read_image

    return read_image(path)


@st.cache_data(show_spinner=False, max_entries=8)
def _training_manifest(folder: str, stamp: tuple[float, ...]) -> pd.DataFrame:
    from fer_core.splits import read_manifest

    return read_manifest(Path(folder))


def training_manifest(folder: Path) -> pd.DataFrame:
    """Return a prepared set's manifest exactly as training reads it (cached until it changes)."""
    return _training_manifest(str(folder), folder_stamp(folder, ("manifest.csv",)))


@st.cache_data(show_spinner="Checking the split into training and test data...", max_entries=64)
def _split_problem(folder: str, stamp: tuple[float, ...], split: SplitSettings, dataset_name: str) -> str | None:
    from fer_core.dashboard.forms import split_problem

    return split_problem(training_manifest(Path(folder)), split, dataset_name)


def split_problem(folder: Path, split: SplitSettings, dataset_name: str) -> str | None:
    """Return why a prepared set cannot be split with these SplitSettings, or None (cached)."""
    return _split_problem(str(folder), folder_stamp(folder, ("manifest.csv",)), split, dataset_name)


@st.cache_data(show_spinner=False, max_entries=16)
def _predictions(run_dir: str, stamp: float) -> pd.DataFrame:
    from fer_core.runs import load_predictions

    return load_predictions(Path(run_dir))


def run_predictions(run_dir: Path) -> pd.DataFrame:
    """Return a run's predictions.csv (cached until it changes); raise FileNotFoundError before the first fold ends."""
    path = Path(run_dir) / "predictions.csv"
    stamp = path.stat().st_mtime if path.exists() else 0.0
    return _predictions(str(run_dir), stamp)
