"""Tests for the metrics: hand-computed cases, undefined values, and run folder evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fer_core.evaluation import (
    age_band,
    auc_per_class,
    classification_metrics,
    evaluate_run,
    format_report,
    specificity_per_class,
)

# A 3-class case worked out by hand. Rows are true classes, columns predictions:
#            angry happy sad
#   angry      2     1    0
#   happy      0     1    1
#   sad        1     0    3
CLASSES = ["angry", "happy", "sad"]
TRUE = ["angry"] * 3 + ["happy"] * 2 + ["sad"] * 4
PREDICTED = ["angry", "angry", "happy", "happy", "sad", "sad", "sad", "angry", "sad"]


@pytest.fixture()
def three_class() -> dict:
    return classification_metrics(TRUE, PREDICTED, CLASSES)


def test_confusion_counts(three_class: dict) -> None:
    assert three_class["confusion"]["counts"] == [[2, 1, 0], [0, 1, 1], [1, 0, 3]]


def test_confusion_row_normalised(three_class: dict) -> None:
    assert three_class["confusion"]["row_normalised"][1] == [0.0, 0.5, 0.5]


def test_accuracy(three_class: dict) -> None:
    assert three_class["accuracy"] == pytest.approx(6 / 9)


def test_precision_per_class(three_class: dict) -> None:
    precision = [three_class["per_class"][name]["precision"] for name in CLASSES]
    assert precision == pytest.approx([2 / 3, 1 / 2, 3 / 4])


def test_recall_per_class(three_class: dict) -> None:
    recall = [three_class["per_class"][name]["recall"] for name in CLASSES]
    assert recall == pytest.approx([2 / 3, 1 / 2, 3 / 4])


def test_specificity_per_class(three_class: dict) -> None:
    specificity = [three_class["per_class"][name]["specificity"] for name in CLASSES]
    assert specificity == pytest.approx([5 / 6, 6 / 7, 4 / 5])


def test_macro_f1(three_class: dict) -> None:
    assert three_class["macro"]["f1"] == pytest.approx(23 / 36)


def test_macro_specificity(three_class: dict) -> None:
    assert three_class["macro"]["specificity"] == pytest.approx((5 / 6 + 6 / 7 + 4 / 5) / 3)


def test_support(three_class: dict) -> None:
    assert [three_class["per_class"][name]["support"] for name in CLASSES] == [3, 2, 4]


def test_auc_without_probabilities(three_class: dict) -> None:
    assert three_class["macro"]["auc"] is None


def test_specificity_single_class_undefined() -> None:
    assert specificity_per_class(np.array([[3]])) == [None]


def test_binary_auc_uses_positive_class() -> None:
    probabilities = np.array([[0.9, 0.1], [0.4, 0.6], [0.6, 0.4], [0.1, 0.9]])
    metrics = classification_metrics(["happy", "happy", "neutral", "neutral"],
                                     ["happy", "neutral", "happy", "neutral"], ["happy", "neutral"], probabilities)
    assert metrics["macro"]["auc"] == pytest.approx(0.75)


def test_multiclass_auc_perfect() -> None:
    probabilities = np.eye(3)[[0, 0, 1, 2]] * 0.8 + 0.2 / 3
    metrics = classification_metrics(["angry", "angry", "happy", "sad"], ["angry", "angry", "happy", "sad"],
                                     CLASSES, probabilities)
    assert metrics["macro"]["auc"] == pytest.approx(1.0)


def test_auc_undefined_for_absent_class() -> None:
    probabilities = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1]])
    assert auc_per_class(np.array([0, 0]), probabilities) == [None, None, None]


def test_auc_undefined_is_null() -> None:
    probabilities = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1]])
    metrics = classification_metrics(["angry", "angry"], ["angry", "angry"], CLASSES, probabilities)
    assert metrics["macro"]["auc"] is None


def test_precision_undefined_is_null() -> None:
    metrics = classification_metrics(["angry", "happy"], ["angry", "angry"], CLASSES)
    assert metrics["per_class"]["happy"]["precision"] is None


def test_recall_undefined_is_null() -> None:
    metrics = classification_metrics(["angry", "happy"], ["angry", "angry"], CLASSES)
    assert metrics["per_class"]["sad"]["recall"] is None


def test_absent_row_normalised_is_null() -> None:
    metrics = classification_metrics(["angry", "happy"], ["angry", "angry"], CLASSES)
    assert metrics["confusion"]["row_normalised"][2] == [None, None, None]


def test_unknown_label_rejected() -> None:
    with pytest.raises(ValueError, match=r"labels \['joy'\] are not among the classes"):
        classification_metrics(["joy"], ["angry"], CLASSES)


def test_empty_predictions_rejected() -> None:
    with pytest.raises(ValueError, match="no predictions"):
        classification_metrics([], [], CLASSES)


@pytest.mark.parametrize(("age", "band"), [(17, "under 18"), (18, "18-24"), (24, "18-24"), (25, "25-34"),
                                           (64, "55-64"), (70, "65+"), (None, None), ("n/a", None)])
def test_age_band(age: object, band: str | None) -> None:
    assert age_band(age) == band


# ---------------------------------------------------------------------------------------------
# Run folders


def write_run(root: Path, protocol: str = "pi") -> Path:
    """Write a run folder by hand: 2 of 3 planned folds finished, one subject each.

    fold-A (subject 001) gets 3 of 4 images right, fold-B (subject 002) 2 of 4. Unmasked
    copies: 3 of 4 right; surgical copies: 2 of 4.
    """
    prepared = root / "prepared"
    prepared.mkdir(parents=True)
    rows = []
    predictions = []
    # (subject, gender, age, fold, label, mask type, predicted, probability of happy)
    cases = [
        ("001", "female", 24, "fold-A", "happy", "none", "happy", 0.9),
        ("001", "female", 24, "fold-A", "neutral", "none", "neutral", 0.2),
        ("001", "female", 24, "fold-A", "happy", "surgical", "happy", 0.7),
        ("001", "female", 24, "fold-A", "neutral", "surgical", "happy", 0.6),
        ("002", "male", 38, "fold-B", "happy", "none", "happy", 0.8),
        ("002", "male", 38, "fold-B", "neutral", "none", "happy", 0.55),
        ("002", "male", 38, "fold-B", "happy", "surgical", "neutral", 0.3),
        ("002", "male", 38, "fold-B", "neutral", "surgical", "neutral", 0.1),
    ]
    for subject, gender, age, fold, label, mask_type, predicted, happy in cases:
        photo = "smiling" if label == "happy" else "neutral"
        image = f"images/{mask_type}/{photo}__{subject}.png"
        rows.append({"image": image, "source_id": f"{photo}/{subject}", "subject": subject, "label": label,
                     "mask_type": mask_type, "polygon": "[]", "greyscale": False, "age": age, "gender": gender})
        predictions.append({"image": image, "source_id": f"{photo}/{subject}", "subject": subject, "label": label,
                            "mask_type": mask_type, "fold": fold, "predicted": predicted,
                            "prob_happy": happy, "prob_neutral": 1 - happy})
    pd.DataFrame(rows).to_csv(prepared / "manifest.csv", index=False)

    run_dir = root / "run"
    run_dir.mkdir()
    pd.DataFrame(predictions).to_csv(run_dir / "predictions.csv", index=False)
    (run_dir / "settings.json").write_text(json.dumps({"prepared_dir": str(prepared), "protocol": protocol,
                                                       "backbone": "squeezenet1_1"}))
    (run_dir / "training.json").write_text(json.dumps({
        "backbone": "squeezenet1_1", "classes": ["happy", "neutral"], "input_size": 224,
        "mean": [0.5] * 3, "std": [0.5] * 3,
        "folds": [{"name": "fold-A", "test_subjects": ["001"]}, {"name": "fold-B", "test_subjects": ["002"]},
                  {"name": "fold-C", "test_subjects": ["003"]}]}))
    return run_dir


@pytest.fixture()
def evaluated(tmp_path: Path) -> tuple[Path, dict]:
    run_dir = write_run(tmp_path)
    return run_dir, evaluate_run(run_dir)


def test_run_accuracy(evaluated: tuple[Path, dict]) -> None:
    assert evaluated[1]["accuracy"] == pytest.approx(5 / 8)


def test_run_accuracy_per_mask_type(evaluated: tuple[Path, dict]) -> None:
    by_mask = evaluated[1]["by_mask_type"]
    assert by_mask["none"]["accuracy"] == pytest.approx(3 / 4)
    assert by_mask["surgical"]["accuracy"] == pytest.approx(2 / 4)


def test_run_unmasked_accuracy(evaluated: tuple[Path, dict]) -> None:
    assert evaluated[1]["unmasked_accuracy"] == pytest.approx(3 / 4)
    assert evaluated[1]["masked_accuracy"] == pytest.approx(2 / 4)


def test_run_fold_mean_and_std(evaluated: tuple[Path, dict]) -> None:
    folds = evaluated[1]["folds"]
    assert folds["accuracy_mean"] == pytest.approx((3 / 4 + 2 / 4) / 2)
    assert folds["accuracy_std"] == pytest.approx(np.std([0.75, 0.5], ddof=1))


def test_run_incomplete_flag(evaluated: tuple[Path, dict]) -> None:
    assert evaluated[1]["complete"] is False
    assert evaluated[1]["folds_planned"] == ["fold-A", "fold-B", "fold-C"]


def test_run_metrics_by_gender(evaluated: tuple[Path, dict]) -> None:
    gender = evaluated[1]["by_metadata"]["gender"]
    assert gender["female"]["accuracy"] == pytest.approx(3 / 4)
    assert gender["male"]["n_images"] == 4


def test_run_metrics_by_age_band(evaluated: tuple[Path, dict]) -> None:
    assert set(evaluated[1]["by_metadata"]["age_band"]) == {"18-24", "35-44"}


def test_run_metrics_file(evaluated: tuple[Path, dict]) -> None:
    run_dir, metrics = evaluated
    written = json.loads((run_dir / "metrics.json").read_text())
    assert written["classes"] == ["happy", "neutral"]
    assert written["accuracy"] == metrics["accuracy"]


def test_run_folds_file(evaluated: tuple[Path, dict]) -> None:
    folds = pd.read_csv(evaluated[0] / "folds.csv", dtype={"test_subjects": str})
    assert folds["fold"].tolist() == ["fold-A", "fold-B"]
    assert folds["test_subjects"].tolist() == ["001", "002"]
    assert folds["accuracy"].tolist() == pytest.approx([0.75, 0.5])


def test_run_confusion_file(evaluated: tuple[Path, dict]) -> None:
    confusion = pd.read_csv(evaluated[0] / "confusion.csv")
    happy_as_neutral = confusion[(confusion["true"] == "happy") & (confusion["predicted"] == "neutral")]
    assert happy_as_neutral["count"].item() == 1
    assert happy_as_neutral["row_fraction"].item() == pytest.approx(0.25)


def test_run_binary_auc(evaluated: tuple[Path, dict]) -> None:
    # neutral is the positive class. Neutral probabilities of the neutral images are 0.8, 0.4,
    # 0.45 and 0.9, of the happy images 0.1, 0.3, 0.2 and 0.7: 14 of the 16 pairs are ordered right.
    assert evaluated[1]["macro"]["auc"] == pytest.approx(14 / 16)


def test_run_leaky_note(tmp_path: Path) -> None:
    metrics = evaluate_run(write_run(tmp_path, protocol="leaky"))
    assert metrics["leaky"] is True
    assert "inflated" in metrics["note"]


def test_run_without_manifest(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path)
    (tmp_path / "prepared" / "manifest.csv").unlink()
    assert evaluate_run(run_dir)["by_metadata"] == {}


def test_run_without_predictions(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path)
    (run_dir / "predictions.csv").unlink()
    with pytest.raises(FileNotFoundError, match="no fold of this run has finished"):
        evaluate_run(run_dir)


def test_report_text(evaluated: tuple[Path, dict]) -> None:
    report = format_report(evaluated[0])
    assert "Accuracy 62.5%" in report
    assert "(incomplete)" in report


def test_report_shows_confusion_matrix(evaluated: tuple[Path, dict]) -> None:
    report = format_report(evaluated[0])
    labels = evaluated[1]["confusion"]["labels"]

    assert "Confusion matrix (rows: true class, columns: predicted class)" in report
    assert all(label in report.split("Confusion matrix")[1] for label in labels)
