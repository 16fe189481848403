"""Tables the Runs, Results and Compare pages draw from a run's files.

Inputs are the parsed `metrics.json` (see `fer_core.evaluation`), `settings.json` and the
events of `events.jsonl` (see `fer_core.training`); outputs are pandas tables and plain values.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

PER_CLASS_COLUMNS = ["class", "precision", "recall", "specificity", "f1", "auc", "support"]
EPOCH_COLUMNS = ["fold", "epoch", "epochs", "train_loss", "train_accuracy", "test_loss", "test_accuracy",
                 "images_per_second", "eta_seconds"]
# Settings that differ between a PD and a PI run of the same configuration: the protocol, its
# epochs and fold scheme, and where and how fast the run was computed.
PROTOCOL_KEYS = frozenset({"protocol", "epochs", "folds", "pi_scheme", "test_fraction", "max_folds", "device",
                           "num_workers"})


def per_class_frame(metrics: Mapping) -> pd.DataFrame:
    """Return one row per class with precision, recall, specificity, F1, AUC and support."""
    rows = [{"class": name, **{key: values.get(key) for key in PER_CLASS_COLUMNS[1:]}}
            for name, values in metrics.get("per_class", {}).items()]
    return pd.DataFrame(rows, columns=PER_CLASS_COLUMNS)


def confusion_counts(metrics: Mapping) -> tuple[np.ndarray, list[str]]:
    """Return the confusion counts (true rows, predicted columns) and the class labels."""
    confusion = metrics["confusion"]
    return np.asarray(confusion["counts"], dtype=float), list(confusion["labels"])


def confusion_table(metrics: Mapping, normalised: bool) -> pd.DataFrame:
    """Return the confusion matrix as a labelled table of counts or row shares."""
    counts, labels = confusion_counts(metrics)
    values = np.asarray(metrics["confusion"]["row_normalised"], dtype=float) if normalised else counts.astype(int)
    table = pd.DataFrame(values, index=labels, columns=labels)
    table.index.name = "true \\ predicted"
    return table.reset_index()


def mask_type_accuracy(metrics: Mapping) -> dict[str, float]:
    """Return accuracy per mask type, with `none` for the unmasked copies."""
    return {name: values["accuracy"] for name, values in metrics.get("by_mask_type", {}).items()}


def mask_type_frame(metrics: Mapping) -> pd.DataFrame:
    """Return accuracy, macro F1 and image count per mask type."""
    rows = [{"mask type": name, **values} for name, values in metrics.get("by_mask_type", {}).items()]
    return pd.DataFrame(rows, columns=["mask type", "n_images", "accuracy", "macro_f1"])


def fold_frame(metrics: Mapping) -> pd.DataFrame:
    """Return the per-fold table: fold, n_images, accuracy, macro_f1, test_subjects."""
    return pd.DataFrame(metrics.get("folds", {}).get("table", []),
                        columns=["fold", "n_images", "accuracy", "macro_f1", "test_subjects"])


def format_mean_std(mean: float | None, std: float | None) -> str:
    """Return "74.2 ± 3.1 %" style text; "n/a" without a mean."""
    if mean is None:
        return "n/a"
    return f"{mean:.1%}" if std is None else f"{mean * 100:.1f} ± {std * 100:.1f} %"


def epoch_frame(events: Sequence[Mapping]) -> pd.DataFrame:
    """Return one row per finished epoch and fold; a repeated epoch keeps its latest event."""
    rows = [{column: event.get(column) for column in EPOCH_COLUMNS} for event in events
            if event.get("event") == "epoch"]
    frame = pd.DataFrame(rows, columns=EPOCH_COLUMNS)
    if frame.empty:
        return frame
    frame["fold"] = frame["fold"].astype(str)
    return frame.drop_duplicates(["fold", "epoch"], keep="last").reset_index(drop=True)


def progress_summary(events: Sequence[Mapping]) -> dict:
    """Return a run's progress: fold position, epoch, latest loss and accuracy, ETA and error."""
    summary: dict = {"fold": None, "fold_position": None, "folds": None, "epoch": 0, "epochs": None,
                     "eta_seconds": None, "train_loss": None, "test_accuracy": None, "error": None,
                     "finished": False}
    for event in events:
        kind = event.get("event")
        if kind == "run_start":
            summary["folds"] = len(event.get("folds", [])) or None
            summary["epochs"] = event.get("epochs")
        elif kind == "fold_start":
            summary.update(fold=event.get("fold"), fold_position=event.get("position"), folds=event.get("folds"),
                           epoch=event.get("resumed_from_epoch") or 0)
        elif kind == "epoch":
            summary.update({key: event.get(key) for key in ("epoch", "epochs", "eta_seconds", "train_loss",
                                                             "test_accuracy")})
        elif kind == "error":
            summary["error"] = event.get("message")
        elif kind == "run_end":
            summary["finished"] = True
    return summary


def overall_progress(summary: Mapping) -> float:
    """Return the share of all epochs of all folds that have finished, from 0 to 1."""
    folds, epochs = summary.get("folds"), summary.get("epochs")
    position, epoch = summary.get("fold_position"), summary.get("epoch") or 0
    if not folds or not epochs or not position:
        return 1.0 if summary.get("finished") else 0.0
    done = (position - 1) * epochs + epoch
    return min(1.0, max(0.0, done / (folds * epochs)))


def format_seconds(seconds: float | None) -> str:
    """Return a duration such as "1 h 05 min", "4 min 10 s" or "12 s"."""
    if seconds is None or pd.isna(seconds):
        return ""
    seconds = int(round(float(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def summary_row(run_id: str, metrics: Mapping | None, settings: Mapping) -> dict:
    """Return the headline numbers of one run for a comparison table."""
    metrics = metrics or {}
    folds = metrics.get("folds", {})
    macro = metrics.get("macro", {})
    return {
        "run": run_id,
        "backbone": settings.get("backbone"),
        "protocol": settings.get("protocol"),
        "accuracy": metrics.get("accuracy"),
        "fold mean": folds.get("accuracy_mean"),
        "fold std": folds.get("accuracy_std"),
        "macro F1": macro.get("f1"),
        "macro AUC": macro.get("auc"),
        "unmasked accuracy": metrics.get("unmasked_accuracy"),
        "masked accuracy": metrics.get("masked_accuracy"),
        "test images": metrics.get("n_images"),
    }


def settings_diff(settings_by_run: Mapping[str, Mapping]) -> pd.DataFrame:
    """Return the settings keys whose values differ between runs, one column per run."""
    keys = sorted({key for settings in settings_by_run.values() for key in settings})
    rows = []
    for key in keys:
        values = {run: _display(settings.get(key)) for run, settings in settings_by_run.items()}
        if len(set(values.values())) > 1:
            rows.append({"setting": key, **values})
    return pd.DataFrame(rows, columns=["setting", *settings_by_run])


def _display(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(str(item) for item in value)
    return "" if value is None else str(value)


def configuration_key(settings: Mapping) -> tuple:
    """Return the settings that define a configuration regardless of the protocol."""
    return tuple(sorted((key, _display(value)) for key, value in settings.items() if key not in PROTOCOL_KEYS))


def counterpart_runs(run_id: str, settings_by_run: Mapping[str, Mapping]) -> dict[str, str]:
    """Return, per other protocol, the newest run with the same configuration as `run_id`.

    Run ids start with their creation time, so the largest id is the newest.
    """
    own = settings_by_run[run_id]
    key = configuration_key(own)
    found: dict[str, str] = {}
    for other, settings in sorted(settings_by_run.items(), reverse=True):
        protocol = settings.get("protocol")
        if other == run_id or protocol == own.get("protocol") or protocol in found:
            continue
        if configuration_key(settings) == key:
            found[protocol] = other
    return found


def misclassified(predictions: pd.DataFrame, mask_type: str | None = None, limit: int = 24) -> pd.DataFrame:
    """Return up to `limit` wrong predictions, most confident first, optionally of one mask type."""
    wrong = predictions[predictions["label"].astype(str) != predictions["predicted"].astype(str)]
    if mask_type is not None:
        wrong = wrong[wrong["mask_type"].astype(str) == mask_type]
    confidence = [f"prob_{name}" for name in wrong["predicted"].astype(str)]
    if all(column in wrong.columns for column in set(confidence)) and len(wrong):
        values = [wrong.iloc[i][column] for i, column in enumerate(confidence)]
        wrong = wrong.assign(confidence=values).sort_values("confidence", ascending=False)
    return wrong.head(limit)

