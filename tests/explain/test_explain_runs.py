"""Run-level explanations on a run folder in the layout that fer_core.runs reads.

The folder contains real London faces as prepared crops, two folds of random-init SqueezeNet
weights at 64 px, and predictions that put two photographs (four crops) in each fold.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from explain_support import tiny_model
from PIL import Image

from fer_core.constants import Backbone
from fer_core.explain.__main__ import main
from fer_core.explain.run_explanations import (
    attach_polygons,
    attribution_path,
    explain_run_image,
    explain_test_set,
    run_explain_job,
)
from fer_core.explain.settings import ExplainSettings
from fer_core.models import get_spec
from fer_core.runs import load_trained_model
from fer_core.training import read_events

CLASSES = ["happy", "neutral"]
FOLDS = ("f1", "f2")
MASK_POLYGON = [[60, 150], [196, 150], [196, 240], [60, 240]]
# EigenCAM projects centred activations, so its maps have positive values and every readable
# image gets finite shares. Class-specific maps of random-init models can legitimately be empty.
SETTINGS = ExplainSettings(method="eigencam", batch_size=4, device="cpu")


def _write_prepared(folder: Path, faces: list[np.ndarray]) -> pd.DataFrame:
    rows = []
    for index, face in enumerate(faces):
        source_id = f"neutral/{index + 1:03d}_03"
        for mask_type, polygon in (("none", []), ("surgical", MASK_POLYGON)):
            image = f"images/{mask_type}/{source_id.replace('/', '__')}.png"
            crop = np.array(face)
            if polygon:
                crop[150:241, 60:197] = (170, 200, 230)
            (folder / image).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(crop).save(folder / image)
            rows.append({"image": image, "source_id": source_id, "subject": f"{index + 1:03d}",
                         "label": CLASSES[index % 2], "mask_type": mask_type, "polygon": json.dumps(polygon),
                         "greyscale": False})
    manifest = pd.DataFrame(rows)
    manifest.to_csv(folder / "manifest.csv", index=False)
    return manifest


def _write_run(run: Path, prepared: Path, manifest: pd.DataFrame) -> None:
    spec = get_spec(Backbone.SQUEEZENET)
    (run / "models").mkdir(parents=True)
    (run / "settings.json").write_text(json.dumps({"prepared_dir": str(prepared), "backbone": "squeezenet1_1"}))
    (run / "training.json").write_text(json.dumps({
        "backbone": "squeezenet1_1", "classes": CLASSES, "input_size": 64, "mean": list(spec.mean),
        "std": list(spec.std), "folds": [{"name": fold} for fold in FOLDS],
    }))
    for seed, fold in enumerate(FOLDS):
        torch.save(tiny_model(Backbone.SQUEEZENET, seed=seed).state_dict(), run / "models" / f"{fold}.pt")

    predictions = manifest[["image", "source_id", "subject", "label", "mask_type"]].copy()
    predictions["fold"] = [FOLDS[0] if int(subject) <= 2 else FOLDS[1] for subject in predictions["subject"]]
    predictions["predicted"] = ["happy", "neutral"] * (len(predictions) // 2)
    predictions["prob_happy"] = 0.5
    predictions["prob_neutral"] = 0.5
    predictions.to_csv(run / "predictions.csv", index=False)


@pytest.fixture()
def run_dir(tmp_path: Path, faces) -> Path:
    prepared = tmp_path / "prepared"
    manifest = _write_prepared(prepared, faces)
    run = tmp_path / "runs" / "run-1"
    _write_run(run, prepared, manifest)
    return run


def test_test_set_one_row_per_image(run_dir):
    table = explain_test_set(run_dir, SETTINGS)
    assert len(table) == 8
    assert table["error"].isna().all()


def test_test_set_writes_csv(run_dir):
    explain_test_set(run_dir, SETTINGS)
    written = pd.read_csv(attribution_path(run_dir, SETTINGS))
    assert len(written) == 8


def test_test_set_shares_for_masked(run_dir):
    table = explain_test_set(run_dir, SETTINGS)
    masked = table[table["mask_type"] == "surgical"]
    assert masked["upper_share"].notna().all()
    assert np.allclose(masked[["mask_share", "upper_share", "other_share"]].sum(axis=1), 1.0)


def test_test_set_unmasked_borrow_polygon(run_dir):
    table = explain_test_set(run_dir, SETTINGS)
    unmasked = table[table["mask_type"] == "none"]
    assert (unmasked["polygon_source"] == "borrowed:surgical").all()
    assert unmasked["mask_area"].notna().all()


def test_test_set_explains_predicted_class(run_dir):
    table = explain_test_set(run_dir, SETTINGS)
    assert (table["explained_class"] == table["predicted"]).all()


def test_test_set_true_class_target(run_dir):
    table = explain_test_set(run_dir, ExplainSettings(method="gradcam", target="true", device="cpu"))
    assert (table["explained_class"] == table["label"]).all()


def test_test_set_fold_filter(run_dir):
    table = explain_test_set(run_dir, ExplainSettings(method="gradcam", fold="f2", device="cpu"))
    assert set(table["fold"]) == {"f2"}


def test_test_set_unknown_fold_raises(run_dir):
    with pytest.raises(ValueError, match="folds with predictions"):
        explain_test_set(run_dir, ExplainSettings(fold="f9", device="cpu"))


def test_test_set_missing_image_recorded(run_dir):
    prepared = Path(json.loads((run_dir / "settings.json").read_text())["prepared_dir"])
    (prepared / "images" / "surgical" / "neutral__003_03.png").unlink()

    table = explain_test_set(run_dir, SETTINGS)

    failed = table[table["error"].notna()]
    assert list(failed["image"]) == ["images/surgical/neutral__003_03.png"]
    assert table["upper_share"].notna().sum() == 7


def test_test_set_lime_with_faithfulness(run_dir):
    settings = ExplainSettings(method="lime", samples=20, n_segments=20, batch_size=20, fold="f1",
                               faithfulness=True, device="cpu")
    table = explain_test_set(run_dir, settings)
    assert len(table) == 4
    assert table[["deletion_auc", "insertion_auc", "road_combined"]].notna().all().all()


def test_test_set_fills_cache(run_dir):
    explain_test_set(run_dir, SETTINGS)
    assert len(list((run_dir / "explanations" / "cache").glob("*.npz"))) == 8


def test_run_image_uses_testing_fold(run_dir):
    explanation = explain_run_image(run_dir, "images/none/neutral__004_03.png", SETTINGS)
    assert explanation.fold == "f2"
    assert explanation.heatmap.shape == (256, 256)


def test_run_image_cached_second_time(run_dir):
    first = explain_run_image(run_dir, "images/none/neutral__001_03.png", SETTINGS)
    second = explain_run_image(run_dir, "images/none/neutral__001_03.png", SETTINGS)
    assert not first.from_cache
    assert second.from_cache
    assert np.array_equal(first.heatmap, second.heatmap)


def test_run_image_chosen_class(run_dir):
    explanation = explain_run_image(run_dir, "images/none/neutral__001_03.png", SETTINGS, label="neutral")
    assert explanation.label == CLASSES.index("neutral")


def test_run_image_wrong_fold_model_raises(run_dir):
    other_fold = load_trained_model(run_dir, fold="f2")
    with pytest.raises(ValueError, match="tested in fold 'f1'"):
        explain_run_image(run_dir, "images/none/neutral__001_03.png", SETTINGS, trained=other_fold)


def test_run_image_not_in_test_data_raises(run_dir):
    with pytest.raises(ValueError, match="no finished fold"):
        explain_run_image(run_dir, "images/none/neutral__099_03.png", SETTINGS)


def test_job_events_start_and_end(run_dir):
    run_explain_job(run_dir, SETTINGS)
    events = read_events(run_dir / "explanations")
    assert events[0]["event"] == "explain_start"
    assert events[-1]["event"] == "explain_end"
    assert events[-2] == {**events[-2], "event": "progress", "done": 8, "total": 8}


def test_job_error_event(run_dir):
    (run_dir / "predictions.csv").unlink()
    with pytest.raises(FileNotFoundError):
        run_explain_job(run_dir, SETTINGS)
    assert read_events(run_dir / "explanations")[-1]["event"] == "error"


def test_module_entry_point(run_dir):
    status = main([str(run_dir), "--method", "gradcam++", "--fold", "f1", "--device", "cpu"])
    settings = ExplainSettings(method="gradcam++", fold="f1", device="cpu")
    assert status == 0
    assert attribution_path(run_dir, settings).is_file()


def test_module_entry_point_failure_status(tmp_path):
    assert main([str(tmp_path / "missing-run"), "--device", "cpu"]) == 1


def test_attach_polygons_keeps_own():
    manifest = pd.DataFrame({"image": ["a.png"], "source_id": ["s"], "mask_type": ["n95"],
                             "polygon": [json.dumps(MASK_POLYGON)]})
    table = attach_polygons(manifest[["image", "source_id"]], manifest)
    assert table.loc[0, "polygon_source"] == "own"


def test_attach_polygons_none_without_donor():
    manifest = pd.DataFrame({"image": ["a.png"], "source_id": ["s"], "mask_type": ["none"], "polygon": ["[]"]})
    table = attach_polygons(manifest[["image", "source_id"]], manifest)
    assert table.loc[0, "polygon_source"] == "none"


def test_settings_unknown_method_raises():
    with pytest.raises(ValueError, match="lime"):
        ExplainSettings(method="gradcam+++")


def test_settings_slug_names_method_and_fold():
    assert ExplainSettings(method="gradcam++", layer="features.12", fold="f1").slug() == \
        "gradcamplusplus-features.12-predicted-fold_f1"


def test_lime_row_shares_nan_free(run_dir):
    settings = ExplainSettings(method="lime", samples=20, n_segments=20, batch_size=20, fold="f2", device="cpu")
    table = explain_test_set(run_dir, settings)
    assert not any(math.isnan(value) for value in table.loc[table["mask_type"] == "surgical", "upper_share"])
