"""Metrics from a run's test predictions: overall, per class, per mask type, per fold and per group.

Accuracy, precision, recall (sensitivity), F1 and the confusion matrix come from
scikit-learn; specificity is TN / (TN + FP) per class. A per-class value that is undefined
(no test image of the class, or no prediction of it) is reported as null. Macro averages
follow scikit-learn's default and count an undefined precision, recall or F1 as 0, over the
classes present in the true or predicted labels.

AUC is one-vs-rest per class. The macro AUC averages the classes present in the true labels.
For two classes it is the AUC of the second class (the positive class), which equals that of
the first. It is null when fewer than two classes are present.

`evaluate_run(run_dir)` writes metrics.json, folds.csv and confusion.csv into the run folder.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support, roc_auc_score

from fer_core.constants import MaskType, Protocol
from fer_core.files import write_csv_atomic
from fer_core.runs import (
    METRICS_FILE,
    PREDICTIONS_FILE,
    SETTINGS_FILE,
    load_predictions,
    read_training_record,
    write_json_atomic,
)
from fer_core.splits import read_manifest

logger = logging.getLogger(__name__)

FOLDS_FILE = "folds.csv"
CONFUSION_FILE = "confusion.csv"
PROBABILITY_PREFIX = "prob_"
# Metadata columns broken down when the manifest has them; age is grouped into bands.
METADATA_COLUMNS = ("gender", "ethnicity")
AGE_COLUMN = "age"
# Lower edges of the age bands in years; the last band is open-ended.
AGE_BAND_EDGES = (18, 25, 35, 45, 55, 65)
# Line numbers listed in an error message, so it stays one readable line.
EXAMPLES_SHOWN = 5
LEAKY_NOTE = ("LEAKY split: masked copies of each test photograph were trained on, so this accuracy is "
              "inflated. It measures the leak, not the model; compare it with a PD run.")


# ---------------------------------------------------------------------------------------------
# Metrics from labels and probabilities


def _number(value: float | np.floating | None) -> float | None:
    """Return a JSON-safe float: None for NaN, infinite or missing values."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else value


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator) / float(denominator) if denominator > 0 else None


def specificity_per_class(confusion: np.ndarray) -> list[float | None]:
    """Return TN / (TN + FP) for each class of a square confusion matrix (true rows, predicted columns)."""
    confusion = np.asarray(confusion, dtype=float)
    total = confusion.sum()
    values = []
    for i in range(len(confusion)):
        false_positive = confusion[:, i].sum() - confusion[i, i]
        true_negative = total - confusion[i, :].sum() - false_positive
        values.append(_ratio(true_negative, true_negative + false_positive))
    return values


def auc_per_class(true_index: np.ndarray, probabilities: np.ndarray) -> list[float | None]:
    """Return the one-vs-rest ROC AUC of each class; None when the class or its complement is absent."""
    values = []
    for i in range(probabilities.shape[1]):
        positive = true_index == i
        if positive.all() or not positive.any():
            values.append(None)
            continue
        values.append(float(roc_auc_score(positive, probabilities[:, i])))
    return values


def macro_auc(per_class: Sequence[float | None], true_index: np.ndarray) -> float | None:
    """Return the macro AUC over classes present in the true labels; the positive class's for two classes."""
    if len(per_class) == 2:
        return per_class[1]
    present = [value for i, value in enumerate(per_class) if (true_index == i).any() and value is not None]
    return float(np.mean(present)) if len(present) >= 2 else None


def classification_metrics(true_labels: Sequence[str], predicted_labels: Sequence[str], classes: Sequence[str],
                           probabilities: np.ndarray | None = None) -> dict:
    """Return accuracy, macro and per-class metrics and the confusion matrix.

    `probabilities` has one column per entry of `classes`; without it AUC is null.

    >>> m = classification_metrics(["a", "a", "b"], ["a", "b", "b"], ["a", "b"])
    >>> m["accuracy"], m["per_class"]["a"]["recall"], m["per_class"]["b"]["precision"]
    (0.6666666666666666, 0.5, 0.5)
    """
    classes = list(classes)
    true_labels = np.asarray(true_labels, dtype=object)
    predicted_labels = np.asarray(predicted_labels, dtype=object)
    if len(true_labels) == 0:
        raise ValueError("no predictions to evaluate")
    unknown = sorted((set(true_labels) | set(predicted_labels)) - set(classes))
    if unknown:
        raise ValueError(f"labels {unknown} are not among the classes {classes}")

    confusion = confusion_matrix(true_labels, predicted_labels, labels=classes)
    precision, recall, f1, support = precision_recall_fscore_support(
        true_labels, predicted_labels, labels=classes, average=None, zero_division=np.nan)
    macro_precision, macro_recall, macro_f1, _ = precision_recall_fscore_support(
        true_labels, predicted_labels, average="macro", zero_division=0.0)
    specificity = specificity_per_class(confusion)

    true_index = np.array([classes.index(label) for label in true_labels])
    if probabilities is not None:
        aucs = auc_per_class(true_index, np.asarray(probabilities, dtype=float))
        auc = macro_auc(aucs, true_index)
    else:
        aucs = [None] * len(classes)
        auc = None

    present = sorted(set(true_labels) | set(predicted_labels), key=classes.index)
    defined_specificity = [specificity[classes.index(c)] for c in present if specificity[classes.index(c)] is not None]
    per_class = {
        name: {"precision": _number(precision[i]), "recall": _number(recall[i]),
               "specificity": specificity[i], "f1": _number(f1[i]), "auc": aucs[i], "support": int(support[i])}
        for i, name in enumerate(classes)
    }
    return {
        "accuracy": float(accuracy_score(true_labels, predicted_labels)),
        "n_images": int(len(true_labels)),
        "macro": {"precision": _number(macro_precision), "recall": _number(macro_recall),
                  "specificity": _number(np.mean(defined_specificity)) if defined_specificity else None,
                  "f1": _number(macro_f1), "auc": auc},
        "per_class": per_class,
        "confusion": {"labels": classes, "counts": confusion.astype(int).tolist(),
                      "row_normalised": _row_normalised(confusion)},
    }


def _row_normalised(confusion: np.ndarray) -> list[list[float | None]]:
    rows = []
    for row in np.asarray(confusion, dtype=float):
        total = row.sum()
        rows.append([float(value / total) if total > 0 else None for value in row])
    return rows


def _group_summary(frame: pd.DataFrame) -> dict:
    return {"n_images": int(len(frame)),
            "accuracy": float((frame["label"] == frame["predicted"]).mean()),
            "macro_f1": float(f1_score(frame["label"], frame["predicted"], average="macro", zero_division=0.0))}


def mask_type_metrics(predictions: pd.DataFrame) -> dict:
    """Return accuracy, macro F1 and image count per mask type (`none` is the unmasked copy)."""
    order = [m.value for m in MaskType]
    groups = predictions.groupby(predictions["mask_type"].astype(str), sort=False)
    found = {name: _group_summary(group) for name, group in groups}
    return {name: found[name] for name in sorted(found, key=lambda n: order.index(n) if n in order else len(order))}


def fold_table(predictions: pd.DataFrame, test_subjects: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """Return one row per fold: fold, n_images, accuracy, macro_f1, test_subjects."""
    rows = []
    for name, group in predictions.groupby(predictions["fold"].astype(str), sort=False):
        summary = _group_summary(group)
        subjects = (test_subjects or {}).get(name) or sorted(group["subject"].dropna().astype(str).unique())
        rows.append({"fold": name, **summary, "test_subjects": " ".join(subjects)})
    return pd.DataFrame(rows, columns=["fold", "n_images", "accuracy", "macro_f1", "test_subjects"])


def _mean_std(values: pd.Series) -> tuple[float | None, float | None]:
    """Return the mean and the sample standard deviation (ddof=1); std is None below two values."""
    values = values.dropna().astype(float)
    if values.empty:
        return None, None
    std = float(values.std(ddof=1)) if len(values) >= 2 else None
    return float(values.mean()), std


def age_band(age: object) -> str | None:
    """Return the age band of an age in years, such as "25-34" or "65+"; None when unknown."""
    try:
        years = float(age)
    except (TypeError, ValueError):
        return None
    if math.isnan(years):
        return None
    if years < AGE_BAND_EDGES[0]:
        return f"under {AGE_BAND_EDGES[0]}"
    for lower, upper in zip(AGE_BAND_EDGES, AGE_BAND_EDGES[1:]):
        if lower <= years < upper:
            return f"{lower}-{upper - 1}"
    return f"{AGE_BAND_EDGES[-1]}+"


def metadata_metrics(predictions: pd.DataFrame, manifest: pd.DataFrame) -> dict:
    """Return accuracy and macro F1 per group of gender, ethnicity and age band, where the manifest has them."""
    columns = [c for c in METADATA_COLUMNS if c in manifest.columns]
    if AGE_COLUMN in manifest.columns:
        columns.append(AGE_COLUMN)
    if not columns:
        return {}

    metadata = manifest[["image", *columns]].drop_duplicates("image").copy()
    metadata["image"] = metadata["image"].astype(str)
    if AGE_COLUMN in columns:
        metadata["age_band"] = metadata[AGE_COLUMN].map(age_band)
        columns = [c for c in columns if c != AGE_COLUMN] + ["age_band"]
    joined = predictions.merge(metadata, on="image", how="left")

    result = {}
    for column in columns:
        known = joined[joined[column].notna()]
        if known.empty:
            continue
        result[column] = {str(name): _group_summary(group)
                          for name, group in sorted(known.groupby(known[column].astype(str)), key=lambda kv: kv[0])}
    return result


def probability_matrix(predictions: pd.DataFrame, classes: Sequence[str]) -> np.ndarray | None:
    """Return the prob_<class> columns as an array, or None when any is missing."""
    columns = [f"{PROBABILITY_PREFIX}{name}" for name in classes]
    if not all(column in predictions.columns for column in columns):
        return None
    return predictions[columns].to_numpy(dtype=float)


def evaluate_predictions(predictions: pd.DataFrame, classes: Sequence[str],
                         manifest: pd.DataFrame | None = None,
                         test_subjects: dict[str, list[str]] | None = None) -> dict:
    """Return every metric of a predictions table (the columns of predictions.csv)."""
    if predictions.empty:
        raise ValueError("no predictions to evaluate")
    metrics = classification_metrics(predictions["label"].astype(str), predictions["predicted"].astype(str),
                                     classes, probability_matrix(predictions, classes))

    by_mask = mask_type_metrics(predictions)
    masked = predictions[predictions["mask_type"].astype(str) != MaskType.NONE.value]
    metrics["by_mask_type"] = by_mask
    metrics["unmasked_accuracy"] = by_mask.get(MaskType.NONE.value, {}).get("accuracy")
    metrics["masked_accuracy"] = float((masked["label"] == masked["predicted"]).mean()) if len(masked) else None

    table = fold_table(predictions, test_subjects)
    accuracy_mean, accuracy_std = _mean_std(table["accuracy"])
    f1_mean, f1_std = _mean_std(table["macro_f1"])
    metrics["folds"] = {"table": table.to_dict(orient="records"), "accuracy_mean": accuracy_mean,
                        "accuracy_std": accuracy_std, "macro_f1_mean": f1_mean, "macro_f1_std": f1_std,
                        "std_note": "sample standard deviation over folds (ddof=1)"}
    metrics["by_metadata"] = metadata_metrics(predictions, manifest) if manifest is not None else {}
    return metrics


# ---------------------------------------------------------------------------------------------
# Run folders


def evaluate_run(run_dir: Path) -> dict:
    """Compute a run's metrics from predictions.csv and write metrics.json, folds.csv and confusion.csv.

    Works on a partial run too (`complete` is then false). Raises FileNotFoundError when no
    fold has finished yet.
    """
    run_dir = Path(run_dir)
    predictions = load_predictions(run_dir)
    settings = _read_json_object(run_dir / SETTINGS_FILE, "restore the run's settings from a backup or train a new run")
    record = _training_record(run_dir)
    classes = record.get("classes") or _classes_from_columns(predictions)
    _check_predictions(predictions, classes, run_dir / PREDICTIONS_FILE)
    planned = [fold["name"] for fold in record.get("folds", [])]
    test_subjects = {fold["name"]: fold.get("test_subjects", []) for fold in record.get("folds", [])}

    manifest = _manifest_or_none(Path(str(settings.get("prepared_dir", ""))))
    metrics = evaluate_predictions(predictions, classes, manifest, test_subjects)
    evaluated = list(dict.fromkeys(predictions["fold"].astype(str)))
    protocol = settings.get("protocol")
    header = {
        "run_id": run_dir.name,
        "backbone": settings.get("backbone"),
        "protocol": protocol,
        "classes": list(classes),
        "folds_evaluated": evaluated,
        "folds_planned": planned,
        "complete": bool(planned) and set(planned) <= set(evaluated),
        "leaky": protocol == Protocol.LEAKY.value,
        "note": LEAKY_NOTE if protocol == Protocol.LEAKY.value else None,
    }
    metrics = {**header, **metrics}

    write_json_atomic(run_dir / METRICS_FILE, metrics)
    write_csv_atomic(pd.DataFrame(metrics["folds"]["table"]), run_dir / FOLDS_FILE)
    write_csv_atomic(confusion_frame(metrics["confusion"]), run_dir / CONFUSION_FILE)
    logger.info("evaluated %s: accuracy %.4f over %d images in %d fold(s)", run_dir.name, metrics["accuracy"],
                metrics["n_images"], len(evaluated))
    return metrics


def _read_json_object(path: Path, advice: str) -> dict:
    """Return a JSON object file's content; raise FileNotFoundError or ValueError naming the file and `advice`."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; {advice}")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError
        raise ValueError(f"{path} is not valid JSON ({error}); {advice}") from error
    if not isinstance(value, dict):
        raise ValueError(f"{path} contains a JSON {type(value).__name__}, not an object; {advice}")
    return value


def _check_predictions(predictions: pd.DataFrame, classes: Sequence[str], path: Path) -> None:
    """Raise ValueError, naming the file and its lines, for rows that metrics cannot use."""
    def lines(mask: pd.Series) -> str:
        numbers = (np.flatnonzero(mask.to_numpy()) + 2).tolist()
        return ", ".join(str(n) for n in numbers[:EXAMPLES_SHOWN]) + (" ..." if len(numbers) > EXAMPLES_SHOWN else "")

    for column in ("label", "predicted"):
        unusable = predictions[column].isna() | ~predictions[column].astype(str).isin(list(classes))
        if unusable.any():
            found = sorted(set(predictions.loc[unusable, column].fillna("<empty>").astype(str)))[:EXAMPLES_SHOWN]
            raise ValueError(f"{path} has {column} values {found} that are not among the classes {list(classes)} "
                             f"(lines {lines(unusable)}); restore the file from a backup or train a new run")

    for column in [f"{PROBABILITY_PREFIX}{name}" for name in classes if f"{PROBABILITY_PREFIX}{name}" in predictions]:
        unusable = pd.to_numeric(predictions[column], errors="coerce").isna()
        if unusable.any():
            raise ValueError(f"{path} has missing or non-numeric {column} values (lines {lines(unusable)}); "
                             "restore the file from a backup or train a new run")


def confusion_frame(confusion: dict) -> pd.DataFrame:
    """Return the confusion matrix in long form: true, predicted, count, row_fraction."""
    labels = confusion["labels"]
    rows = []
    for i, true_label in enumerate(labels):
        for j, predicted_label in enumerate(labels):
            rows.append({"true": true_label, "predicted": predicted_label, "count": confusion["counts"][i][j],
                         "row_fraction": confusion["row_normalised"][i][j]})
    return pd.DataFrame(rows, columns=["true", "predicted", "count", "row_fraction"])


def _training_record(run_dir: Path) -> dict:
    try:
        return read_training_record(run_dir)
    except (FileNotFoundError, ValueError) as error:
        logger.warning("%s; class order is taken from predictions.csv", error)
        return {}


def _classes_from_columns(predictions: pd.DataFrame) -> list[str]:
    return [column[len(PROBABILITY_PREFIX):] for column in predictions.columns
            if column.startswith(PROBABILITY_PREFIX)]


def _manifest_or_none(prepared_dir: Path) -> pd.DataFrame | None:
    try:
        return read_manifest(prepared_dir)
    except (FileNotFoundError, ValueError) as error:
        logger.warning("metrics by gender, ethnicity and age are skipped: %s", error)
        return None


def format_report(run_dir: Path) -> str:
    """Return a plain-text summary of a run's metrics.json for the command line."""
    path = Path(run_dir) / METRICS_FILE
    advice = f"recompute it with 'fer-studio evaluate {Path(run_dir).name}'"
    metrics = _read_json_object(path, advice)
    try:
        return _report_lines(metrics)
    except (AttributeError, TypeError) as error:
        raise ValueError(f"{path} does not have the layout that evaluate writes ({error}); {advice}") from error


def _report_lines(metrics: dict) -> str:
    """Format metrics.json; missing entries print as n/a, so an older or edited file still prints."""
    folds = metrics.get("folds") or {}
    macro = metrics.get("macro") or {}
    lines = [f"Run {metrics.get('run_id', '?')}: {metrics.get('backbone', '?')}, "
             f"protocol {metrics.get('protocol', '?')}, {len(metrics.get('folds_evaluated') or [])} fold(s), "
             f"{metrics.get('n_images', '?')} test images"
             + ("" if metrics.get("complete") else " (incomplete)")]
    if metrics.get("note"):
        lines.append(f"NOTE: {metrics['note']}")
    spread = f" (fold mean {_percent(folds.get('accuracy_mean'))} +- {_percent(folds.get('accuracy_std'))})" \
        if folds.get("accuracy_std") is not None else ""
    lines.append(f"Accuracy {_percent(metrics.get('accuracy'))}{spread}; macro F1 {_decimal(macro.get('f1'))}, "
                 f"macro AUC {_decimal(macro.get('auc'))}")
    lines.append("")
    lines.append(f"{'class':<10} {'precision':>9} {'recall':>7} {'specificity':>11} {'F1':>6} {'AUC':>6} {'n':>6}")
    for name, values in (metrics.get("per_class") or {}).items():
        lines.append(f"{name:<10} {_decimal(values.get('precision')):>9} {_decimal(values.get('recall')):>7} "
                     f"{_decimal(values.get('specificity')):>11} {_decimal(values.get('f1')):>6} "
                     f"{_decimal(values.get('auc')):>6} {values.get('support', '?'):>6}")
    lines.append("")
    lines.extend(_confusion_lines(metrics.get("confusion") or {}))
    lines.append("")
    lines.append("Accuracy per mask type: " + ", ".join(
        f"{name} {_percent(values.get('accuracy'))}" for name, values in (metrics.get("by_mask_type") or {}).items()))
    return "\n".join(lines)


def _confusion_lines(confusion: dict) -> list[str]:
    """Format the confusion counts as a table: one row per true class, one column per prediction."""
    labels = confusion.get("labels") or []
    counts = confusion.get("counts") or []
    if not labels or len(counts) != len(labels):
        return ["Confusion matrix: n/a"]
    width = max(8, *(len(str(label)) for label in labels))
    lines = ["Confusion matrix (rows: true class, columns: predicted class)",
             " " * (width + 1) + " ".join(f"{label:>{width}}" for label in labels)]
    for label, row in zip(labels, counts):
        lines.append(f"{label:<{width}} " + " ".join(f"{count:>{width}}" for count in row))
    return lines


def _percent(value: object) -> str:
    number = _number_or_none(value)
    return "n/a" if number is None else f"{number:.1%}"


def _decimal(value: object) -> str:
    number = _number_or_none(value)
    return "n/a" if number is None else f"{number:.3f}"


def _number_or_none(value: object) -> float | None:
    """Return a finite float, or None for missing, NaN, infinite or non-numeric values."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return _number(value)
