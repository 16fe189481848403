"""Tests for run folders: creation, provenance, status, the run list, trained models and predictions."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from PIL import Image

from fer_core import runs
from fer_core.constants import Backbone, MaskType, Protocol
from fer_core.training import TrainSettings, train
from test_training import write_prepared_set


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory: pytest.TempPathFactory, london_root: Path) -> Path:
    return write_prepared_set(tmp_path_factory.mktemp("prepared"), london_root, subjects=4,
                              mask_types=(MaskType.NONE, MaskType.SURGICAL))


def tiny_settings(prepared: Path, **changes: object) -> TrainSettings:
    values = {"prepared_dir": prepared, "backbone": Backbone.SQUEEZENET, "protocol": Protocol.PD, "epochs": 1,
              "batch_size": 4, "folds": 2, "pretrained": False, "input_size": 64, "device": "cpu"}
    values.update(changes)
    return TrainSettings(**values)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory, prepared_dir: Path) -> Path:
    settings = tiny_settings(prepared_dir)
    run_dir = runs.create_run(tmp_path_factory.mktemp("runs"), settings)
    train(settings, run_dir)
    return run_dir


# ---------------------------------------------------------------------------------------------
# Creation and provenance


def test_run_id_format(tmp_path: Path, prepared_dir: Path) -> None:
    run_dir = runs.create_run(tmp_path, tiny_settings(prepared_dir), now=datetime(2026, 12, 4, 20, 15, 0))
    assert re.fullmatch(r"20261204-201500-squeezenet1_1-pd-[0-9a-f]{4}", run_dir.name)


def test_run_ids_unique_within_second(tmp_path: Path, prepared_dir: Path) -> None:
    moment = datetime(2026, 12, 4, 20, 15, 0)
    first = runs.create_run(tmp_path, tiny_settings(prepared_dir), now=moment)
    second = runs.create_run(tmp_path, tiny_settings(prepared_dir), now=moment)
    assert first != second


def test_run_settings_file(tmp_path: Path, prepared_dir: Path) -> None:
    settings = tiny_settings(prepared_dir)
    run_dir = runs.create_run(tmp_path, settings)
    stored = json.loads((run_dir / "settings.json").read_text())
    assert TrainSettings.from_dict(stored) == settings


def test_run_starts_queued(tmp_path: Path, prepared_dir: Path) -> None:
    run_dir = runs.create_run(tmp_path, tiny_settings(prepared_dir))
    assert runs.read_status(run_dir)["state"] == "queued"


def test_provenance_versions(tmp_path: Path, prepared_dir: Path) -> None:
    run_dir = runs.create_run(tmp_path, tiny_settings(prepared_dir, seed=11))
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert provenance["packages"]["torch"] == torch.__version__.split("+")[0]
    assert provenance["packages"]["torchvision"] == torchvision.__version__.split("+")[0]
    assert provenance["packages"]["facenet-pytorch"] == "2.6.0"
    assert provenance["seed"] == 11
    assert provenance["device"].startswith("CPU")


def test_provenance_data_hash(tmp_path: Path, prepared_dir: Path) -> None:
    run_dir = runs.create_run(tmp_path, tiny_settings(prepared_dir))
    provenance = json.loads((run_dir / "provenance.json").read_text())
    expected = hashlib.sha256((prepared_dir / "manifest.csv").read_bytes()
                              + (prepared_dir / "settings.json").read_bytes()).hexdigest()
    assert provenance["data_hash"] == expected
    assert provenance["dataset"] == "london-test"


def test_data_hash_follows_manifest(tmp_path: Path, london_root: Path) -> None:
    prepared = write_prepared_set(tmp_path / "set", london_root, subjects=1, mask_types=(MaskType.NONE,))
    before = runs.data_hash(prepared)
    with open(prepared / "manifest.csv", "a") as stream:
        stream.write("\n")
    assert runs.data_hash(prepared) != before


def test_create_run_without_prepared_set(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="manifest.csv not found"):
        runs.create_run(tmp_path / "runs", tiny_settings(tmp_path / "missing"))


# ---------------------------------------------------------------------------------------------
# Status and the run list


def test_update_status_merges(tmp_path: Path) -> None:
    runs.update_status(tmp_path, state="running", epoch=1)
    status = runs.update_status(tmp_path, epoch=2)
    assert status["state"] == "running"
    assert status["epoch"] == 2


def test_dead_process_reads_interrupted(tmp_path: Path) -> None:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    runs.update_status(tmp_path, state="running", pid=int(finished.stdout))
    assert runs.read_status(tmp_path)["state"] == "interrupted"


def test_live_process_reads_running(tmp_path: Path) -> None:
    import os

    runs.update_status(tmp_path, state="running", pid=os.getpid())
    assert runs.read_status(tmp_path)["state"] == "running"


def test_list_runs_empty(tmp_path: Path) -> None:
    table = runs.list_runs(tmp_path / "nothing")
    assert table.empty
    assert list(table.columns) == runs.RUN_LIST_COLUMNS


def test_list_runs_reports_trained_run(trained_run: Path) -> None:
    table = runs.list_runs(trained_run.parent)
    row = table[table["run_id"] == trained_run.name].iloc[0]
    assert row["status"] == "succeeded"
    assert row["backbone"] == "squeezenet1_1"
    assert row["protocol"] == "pd"
    assert row["dataset"] == "london-test"
    assert 0.0 <= row["accuracy"] <= 1.0
    assert row["duration_seconds"] >= 0
    assert pd.isna(row["problem"])


def test_list_runs_tolerates_broken_folders(tmp_path: Path, prepared_dir: Path) -> None:
    good = runs.create_run(tmp_path, tiny_settings(prepared_dir))
    (tmp_path / "empty").mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "settings.json").write_text("{not json")
    (broken / "status.json").write_text("[]")

    table = runs.list_runs(tmp_path).set_index("run_id")
    assert pd.isna(table.loc[good.name, "problem"])
    assert "settings.json unreadable" in table.loc["broken", "problem"]
    assert "status.json missing" in table.loc["empty", "problem"]


# ---------------------------------------------------------------------------------------------
# Trained models and predictions


def test_load_model_in_eval_mode(trained_run: Path) -> None:
    loaded = runs.load_trained_model(trained_run, fold="fold-02")
    assert loaded.model.training is False
    assert loaded.fold == "fold-02"
    assert loaded.classes == ["happy", "neutral"]
    assert loaded.input_size == 64


def test_load_model_default_fold(trained_run: Path) -> None:
    assert runs.load_trained_model(trained_run).fold == "fold-01"


def test_load_model_unknown_fold(trained_run: Path) -> None:
    with pytest.raises(ValueError, match=r"no fold 'fold-09'; its folds are \['fold-01', 'fold-02'\]"):
        runs.load_trained_model(trained_run, fold="fold-09")


def test_loaded_model_reproduces_predictions(trained_run: Path, prepared_dir: Path) -> None:
    predictions = runs.load_predictions(trained_run)
    row = predictions[predictions["fold"] == "fold-02"].iloc[0]
    loaded = runs.load_trained_model(trained_run, fold="fold-02")
    with Image.open(prepared_dir / row["image"]) as image, torch.inference_mode():
        probabilities = torch.softmax(loaded.model(loaded.preprocess(image)), dim=1)[0].numpy()
    assert np.allclose(probabilities, [row["prob_happy"], row["prob_neutral"]], atol=1e-5)


def test_load_predictions_keeps_ids_as_text(trained_run: Path) -> None:
    assert set(runs.load_predictions(trained_run)["subject"]) == {"001", "002", "003", "004"}


def test_fold_of_image(trained_run: Path) -> None:
    predictions = runs.load_predictions(trained_run)
    row = predictions[predictions["fold"] == "fold-02"].iloc[0]
    assert runs.fold_of_image(trained_run, row["image"]) == "fold-02"


def test_fold_of_image_absolute_path(trained_run: Path, prepared_dir: Path) -> None:
    predictions = runs.load_predictions(trained_run)
    row = predictions[predictions["fold"] == "fold-01"].iloc[0]
    assert runs.fold_of_image(trained_run, prepared_dir / row["image"]) == "fold-01"


def test_fold_of_unknown_image(trained_run: Path) -> None:
    with pytest.raises(ValueError, match="in no finished fold's test data"):
        runs.fold_of_image(trained_run, "images/none/elsewhere.png")


def test_fold_of_image_outside_prepared_set(trained_run: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not inside the run's prepared set"):
        runs.fold_of_image(trained_run, tmp_path / "face.png")
