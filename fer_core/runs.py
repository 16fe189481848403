"""Run folders: creation with provenance, status, the run list, trained models and predictions.

A run folder `<runs root>/<run id>/` holds:

- `settings.json`: the `TrainSettings` of the run;
- `provenance.json`: library versions, seed, device, git commit and the data hash;
- `status.json`: state, start and end times, current fold and epoch, error;
- `events.jsonl`: progress events, one JSON object per line (see `fer_core.training`);
- `training.json`: classes, input size, normalisation and the folds with their test subjects;
- `checkpoints/<fold>.pt`, `models/<fold>.pt`: resumable checkpoints and final fold weights;
- `predictions.csv`, `metrics.json`, `folds.csv`, `confusion.csv`: results.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch
from PIL import Image
from torch import nn

from fer_core.constants import LifecycleState
from fer_core.files import write_json_atomic
from fer_core.models import build_model, describe_device, get_spec, pick_device

if TYPE_CHECKING:
    from fer_core.training import TrainSettings

logger = logging.getLogger(__name__)

SETTINGS_FILE = "settings.json"
PROVENANCE_FILE = "provenance.json"
STATUS_FILE = "status.json"
TRAINING_FILE = "training.json"
PREDICTIONS_FILE = "predictions.csv"
METRICS_FILE = "metrics.json"
MODELS_DIR = "models"
# Libraries whose versions change results; importlib.metadata names them as PyPI does.
TRACKED_PACKAGES = ("torch", "torchvision", "facenet-pytorch", "numpy", "scikit-learn", "pandas", "pillow")
PROJECT_ROOT = Path(__file__).resolve().parent.parent
GIT_TIMEOUT_SECONDS = 5
# Columns of predictions.csv besides one prob_<class> column per class.
PREDICTION_COLUMNS = ("image", "source_id", "subject", "label", "mask_type", "fold", "predicted")
RUN_LIST_COLUMNS = ["run_id", "status", "dataset", "backbone", "protocol", "started", "duration_seconds",
                    "accuracy", "problem"]


RunState = LifecycleState


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _read_json(path: Path) -> dict:
    value = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(value, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return value


# ---------------------------------------------------------------------------------------------
# Creation and provenance


def create_run(runs_root: Path, settings: "TrainSettings", now: datetime | None = None) -> Path:
    """Create a run folder with settings.json, provenance.json and a queued status; return it.

    The run id reads `<local time>-<backbone>-<protocol>-<hash>`, for example
    `20261204-201500-squeezenet1_1-pd-3f2a`. Raises FileNotFoundError when the prepared set
    is missing and ValueError when the requested device is not available.
    """
    now = now or datetime.now().astimezone()
    runs_root = Path(runs_root)
    runs_root.mkdir(parents=True, exist_ok=True)
    provenance = collect_provenance(settings)

    settings_values = settings.to_dict()
    run_dir = None
    for attempt in range(100):
        digest = hashlib.sha256(
            json.dumps([settings_values, now.isoformat(), attempt], sort_keys=True).encode("utf-8")).hexdigest()
        candidate = runs_root / (f"{now:%Y%m%d-%H%M%S}-{settings.backbone.value}-"
                                 f"{settings.protocol.value}-{digest[:4]}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        run_dir = candidate
        break
    if run_dir is None:
        raise FileExistsError(f"could not find a free run id under {runs_root} for {now:%Y%m%d-%H%M%S}")

    try:
        write_json_atomic(run_dir / SETTINGS_FILE, settings_values)
        write_json_atomic(run_dir / PROVENANCE_FILE, provenance)
        write_json_atomic(run_dir / STATUS_FILE, {"state": RunState.QUEUED.value, "created_at": _now().isoformat(
            timespec="seconds"), "started_at": None, "finished_at": None, "error": None})
    except BaseException:
        # The folder was created above and contains only these files, so a half-made run leaves nothing behind.
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    logger.info("created run %s", run_dir)
    return run_dir


def collect_provenance(settings: "TrainSettings") -> dict:
    """Return library versions, seed, device, git commit and the hash of the prepared data."""
    device = pick_device(settings.device)
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: _package_version(name) for name in TRACKED_PACKAGES},
        "seed": settings.seed,
        "device": describe_device(device),
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "git_commit": git_commit(),
        "prepared_dir": str(settings.prepared_dir),
        "dataset": _prepared_dataset_name(settings.prepared_dir),
        "data_hash": data_hash(settings.prepared_dir),
        "host": socket.gethostname(),
        "command": sys.argv,
    }


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    """Return the project's git commit, with "-dirty" when files changed, or None outside git."""
    try:
        commit = subprocess.run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=GIT_TIMEOUT_SECONDS, check=True).stdout.strip()
        changes = subprocess.run(["git", "-C", str(PROJECT_ROOT), "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=GIT_TIMEOUT_SECONDS, check=True).stdout
    except (OSError, subprocess.SubprocessError) as error:
        logger.info("no git commit recorded: %s", error)
        return None
    return f"{commit}-dirty" if changes.strip() else commit


def data_hash(prepared_dir: Path) -> str:
    """Return the SHA-256 of the prepared set's manifest.csv followed by its settings.json.

    The manifest names every crop and its labels; the settings hold the preparation
    settings and the source data set's fingerprint. Raises FileNotFoundError when the
    manifest is missing.
    """
    prepared_dir = Path(prepared_dir)
    manifest = prepared_dir / "manifest.csv"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} not found; prepare the data set first (fer-studio prepare)")
    digest = hashlib.sha256()
    for path in (manifest, prepared_dir / SETTINGS_FILE):
        if path.is_file():
            with open(path, "rb") as stream:
                for block in iter(lambda: stream.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def _prepared_dataset_name(prepared_dir: Path) -> str:
    path = Path(prepared_dir) / SETTINGS_FILE
    try:
        name = _read_json(path).get("dataset")
    except (OSError, ValueError):
        name = None
    return str(name) if name else Path(prepared_dir).name


# ---------------------------------------------------------------------------------------------
# Status


def read_status(run_dir: Path) -> dict:
    """Return status.json; a running run whose process is gone on this host reads as interrupted.

    Raises FileNotFoundError when the run has no status.json.
    """
    status = _read_json(Path(run_dir) / STATUS_FILE)
    if status.get("state") == RunState.RUNNING.value and _process_gone(status):
        status["state"] = RunState.INTERRUPTED.value
    return status


def _process_gone(status: dict) -> bool:
    pid = status.get("pid")
    if not isinstance(pid, int) or status.get("host") != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def update_status(run_dir: Path, **fields: object) -> dict:
    """Merge `fields` into status.json atomically and return the new status."""
    path = Path(run_dir) / STATUS_FILE
    try:
        status = _read_json(path)
    except FileNotFoundError:
        status = {}
    except ValueError as error:
        logger.warning("replacing unreadable %s: %s", path, error)
        status = {}
    status.update(fields)
    if "pid" in fields:
        status["host"] = socket.gethostname()
    status["updated_at"] = _now().isoformat(timespec="seconds")
    write_json_atomic(path, status)
    return status


# ---------------------------------------------------------------------------------------------
# The run list


def list_runs(runs_root: Path) -> pd.DataFrame:
    """Return one row per run folder, newest first; broken folders appear with a `problem`.

    Columns: run_id, status, dataset, backbone, protocol, started (ISO time), duration_seconds,
    accuracy and problem (None for a healthy folder).
    """
    runs_root = Path(runs_root)
    if runs_root.exists() and not runs_root.is_dir():
        raise NotADirectoryError(f"{runs_root} is a file, but runs are kept in a folder of that name; "
                                 "move the file away")
    if not runs_root.is_dir():
        return pd.DataFrame(columns=RUN_LIST_COLUMNS)

    rows = []
    for run_dir in sorted((p for p in runs_root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                          key=lambda p: p.name, reverse=True):
        rows.append(_run_row(run_dir))
    return pd.DataFrame(rows, columns=RUN_LIST_COLUMNS)


def _run_row(run_dir: Path) -> dict:
    row: dict = {column: None for column in RUN_LIST_COLUMNS}
    row["run_id"] = run_dir.name
    problems = []

    try:
        settings = _read_json(run_dir / SETTINGS_FILE)
        row["backbone"] = settings.get("backbone")
        row["protocol"] = settings.get("protocol")
        row["dataset"] = Path(str(settings.get("prepared_dir", ""))).name or None
    except (OSError, ValueError) as error:
        problems.append(_file_problem("settings.json", error))

    try:
        provenance = _read_json(run_dir / PROVENANCE_FILE)
        row["dataset"] = provenance.get("dataset") or row["dataset"]
    except (OSError, ValueError) as error:
        problems.append(_file_problem("provenance.json", error))

    try:
        status = read_status(run_dir)
        row["status"] = status.get("state")
        row["started"] = status.get("started_at")
        row["duration_seconds"] = _duration(status)
        row["accuracy"] = status.get("accuracy")
    except (OSError, ValueError) as error:
        problems.append(_file_problem("status.json", error))

    if row["accuracy"] is None:
        row["accuracy"] = _metrics_accuracy(run_dir, problems)
    row["problem"] = "; ".join(problems) or None
    if problems:
        logger.warning("run folder %s is incomplete: %s", run_dir, row["problem"])
    return row


def _file_problem(name: str, error: Exception) -> str:
    if isinstance(error, FileNotFoundError):
        return f"{name} missing"
    return f"{name} unreadable ({error})"


def _duration(status: dict) -> float | None:
    started = _parse_time(status.get("started_at"))
    if started is None:
        return None
    finished = _parse_time(status.get("finished_at"))
    if finished is None and status.get("state") == RunState.RUNNING.value:
        finished = _now()
    if finished is None:
        return None
    return max(0.0, (finished - started).total_seconds())


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _metrics_accuracy(run_dir: Path, problems: list[str]) -> float | None:
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return None
    try:
        return _read_json(path).get("accuracy")
    except (OSError, ValueError) as error:
        problems.append(f"metrics.json unreadable ({error})")
        return None


# ---------------------------------------------------------------------------------------------
# Trained models and predictions


@dataclass
class TrainedModel:
    """A fold's trained network in eval mode, with what is needed to feed it."""

    model: nn.Module
    backbone: str
    classes: list[str]
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    fold: str
    device: torch.device

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """Return the image as a normalised 1 x 3 x size x size tensor on the model's device."""
        from fer_core.training import build_transform

        transform = build_transform(self.input_size, self.mean, self.std, augment=False)
        return transform(image.convert("RGB")).unsqueeze(0).to(self.device)


def read_training_record(run_dir: Path) -> dict:
    """Return training.json: backbone, classes, input size, mean, std and the folds."""
    path = Path(run_dir) / TRAINING_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; the run has not started training yet")
    return _read_json(path)


def load_trained_model(run_dir: Path, fold: str | None = None, device: str = "cpu") -> TrainedModel:
    """Load a fold's final weights in eval mode.

    `fold=None` takes the first fold, in split order, whose weights exist. Raises
    FileNotFoundError when the fold (or every fold) has no saved weights yet.
    """
    run_dir = Path(run_dir)
    record = read_training_record(run_dir)
    fold_names = [entry["name"] for entry in record["folds"]]
    if fold is None:
        finished = [name for name in fold_names if (run_dir / MODELS_DIR / f"{name}.pt").is_file()]
        if not finished:
            raise FileNotFoundError(f"{run_dir} has no finished fold yet; wait for the first fold to end")
        fold = finished[0]
    elif fold not in fold_names:
        raise ValueError(f"{run_dir} has no fold {fold!r}; its folds are {fold_names}")

    path = run_dir / MODELS_DIR / f"{fold}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; fold {fold} has not finished training")

    target = pick_device(device)
    model = build_model(record["backbone"], len(record["classes"]), pretrained=False)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    model.to(target).eval()
    spec = get_spec(record["backbone"])
    logger.info("loaded %s fold %s from %s", spec.display_name, fold, path)
    return TrainedModel(model=model, backbone=spec.backbone.value, classes=list(record["classes"]),
                        input_size=int(record["input_size"]), mean=tuple(record["mean"]), std=tuple(record["std"]),
                        fold=fold, device=target)


def load_predictions(run_dir: Path) -> pd.DataFrame:
    """Return predictions.csv with ids as strings; raises FileNotFoundError before the first fold ends."""
    path = Path(run_dir) / PREDICTIONS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; no fold of this run has finished yet")
    text_columns = {column: "string" for column in PREDICTION_COLUMNS}
    try:
        predictions = pd.read_csv(path, dtype=text_columns, keep_default_na=False, na_values=[""])
    except ValueError as error:  # pandas' parser errors and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{path} is not a readable CSV file ({error}); restore it from a backup "
                         "or train a new run") from error
    missing = [column for column in PREDICTION_COLUMNS if column not in predictions.columns]
    if missing:
        raise ValueError(f"{path} lacks the columns {missing}; found {list(predictions.columns)}. "
                         "Restore it from a backup or train a new run")
    return predictions


def fold_of_image(run_dir: Path, image: str | Path) -> str:
    """Return the fold whose test side held the image, so it is explained by a model that never saw it.

    `image` is the manifest's relative path, or an absolute path inside the prepared set.
    Raises ValueError when no finished fold tested the image.
    """
    run_dir = Path(run_dir)
    relative = _relative_image(run_dir, image)
    predictions = load_predictions(run_dir)
    matches = predictions.loc[predictions["image"] == relative, "fold"]
    if matches.empty:
        raise ValueError(f"image {relative!r} is in no finished fold's test data of {run_dir.name}; "
                         "it was used for training, or its fold has not finished")
    return str(matches.iloc[0])


def _relative_image(run_dir: Path, image: str | Path) -> str:
    path = Path(image)
    if not path.is_absolute():
        return path.as_posix()
    prepared_dir = Path(str(_read_json(run_dir / SETTINGS_FILE).get("prepared_dir", "")))
    try:
        return path.resolve().relative_to(prepared_dir.resolve()).as_posix()
    except ValueError:
        raise ValueError(f"{path} is not inside the run's prepared set {prepared_dir}") from None
