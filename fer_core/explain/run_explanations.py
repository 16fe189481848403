"""Explanations of a trained run: one test image for the dashboard, or whole test folds as a job.

Each image is explained by the model of the fold that held it on its test side, so no map
comes from a model that trained on the image. Maps are cached under
`<run>/explanations/cache/<key>.npz`, keyed by the image's bytes, the fold, the class and
the method settings, so the dashboard and reruns of an interrupted job reuse them.
`explain_test_set` writes one row per image to `<run>/explanations/attribution-<slug>.csv`
and progress events to `<run>/explanations/events.jsonl`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fer_core import runs
from fer_core.constants import MaskType
from fer_core.explain.attribution import attribution_share
from fer_core.explain.cache import cache_key, file_digest, load_arrays, save_arrays
from fer_core.explain.cam import compute_cam
from fer_core.explain.common import check_label, model_device, to_input_tensor
from fer_core.explain.faithfulness import faithfulness_scores, resize_map
from fer_core.explain.lime_explainer import ProgressCallback, explain_lime
from fer_core.explain.settings import ExplainSettings, ExplainTarget
from fer_core.images import ImageReadError, read_image, write_bytes_atomic
from fer_core.splits import MANIFEST_FILE, read_manifest
from fer_core.training import append_event

logger = logging.getLogger(__name__)

EXPLANATIONS_FOLDER = "explanations"
CACHE_FOLDER = "cache"
REQUIRED_COLUMNS = ("image", "label", "predicted", "mask_type", "fold")
# An unmasked crop borrows the outline of a masked copy of the same photograph, in this order,
# so its attribution can be compared with the masked copies region by region.
POLYGON_DONORS = tuple(mask_type.value for mask_type in MaskType.drawn())


# Loads the model of a fold by name; None means the run's first finished fold.
ModelLoader = Callable[[str | None], runs.TrainedModel]


@dataclass(frozen=True)
class Explanation:
    """One image's map at the crop's resolution, for the class `label` (an index into `classes`).

    `heatmap` is in [0, 1] for CAM methods and contains signed superpixel weights for LIME.
    LIME also fills `segments` and `probabilities`.
    """

    image: str
    fold: str | None
    method: str
    layer: str | None
    label: int
    class_name: str
    heatmap: np.ndarray
    segments: np.ndarray | None
    probabilities: np.ndarray | None
    from_cache: bool


def explanations_dir(run_dir: Path | str) -> Path:
    """Return `<run>/explanations`, creating it if needed."""
    folder = Path(run_dir) / EXPLANATIONS_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def attribution_path(run_dir: Path | str, settings: ExplainSettings) -> Path:
    """Return the CSV file that `explain_test_set` writes for these settings."""
    return Path(run_dir) / EXPLANATIONS_FOLDER / f"attribution-{settings.slug()}.csv"


def prepared_dir_of(run_dir: Path | str) -> Path:
    """Return the prepared set a run trained on, from its settings.json."""
    path = Path(run_dir) / runs.SETTINGS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; {run_dir} is not a run folder")
    prepared = json.loads(path.read_text(encoding="utf-8")).get("prepared_dir")
    if not prepared:
        raise ValueError(f"{path} has no prepared_dir; the run cannot find its images")
    prepared_dir = Path(prepared)
    if not (prepared_dir / MANIFEST_FILE).is_file():
        raise FileNotFoundError(f"{prepared_dir / MANIFEST_FILE} not found; the run's prepared set "
                                "was moved or deleted, so prepare the data set again with the same settings")
    return prepared_dir


def attach_polygons(table: pd.DataFrame, manifest: pd.DataFrame) -> pd.DataFrame:
    """Add `polygon` (JSON text) and `polygon_source` to a table with an `image` column.

    `polygon_source` is "own" for masked crops, "borrowed:<mask type>" for an unmasked crop
    that takes the outline of a masked copy of the same photograph, and "none" otherwise.
    """
    missing = [column for column in ("image", "source_id", "mask_type", "polygon") if column not in manifest.columns]
    if missing:
        raise ValueError(f"the manifest lacks columns {missing}; prepare the data set again with this version")
    outlines = manifest[["image", "source_id", "mask_type", "polygon"]].astype({"polygon": "string"})
    own = outlines.set_index("image")["polygon"]
    result = table.copy()
    result["polygon"] = result["image"].map(own).fillna("[]")
    result["polygon_source"] = np.where(result["polygon"].map(_has_points), "own", "none")

    donors = outlines[outlines["mask_type"].isin(POLYGON_DONORS) & outlines["polygon"].map(_has_points)]
    donors = donors.assign(rank=donors["mask_type"].map(POLYGON_DONORS.index)).sort_values("rank")
    first_donor = donors.drop_duplicates("source_id").set_index("source_id")
    if "source_id" in result.columns:
        needs = (result["polygon_source"] == "none") & result["source_id"].isin(first_donor.index)
        donor_rows = first_donor.loc[result.loc[needs, "source_id"]]
        result.loc[needs, "polygon"] = donor_rows["polygon"].to_numpy()
        result.loc[needs, "polygon_source"] = ("borrowed:" + donor_rows["mask_type"].astype(str)).to_numpy()
    return result


def _has_points(polygon: object) -> bool:
    return isinstance(polygon, str) and polygon.strip() not in ("", "[]")


def explain_images(trained: runs.TrainedModel, images: Sequence[np.ndarray], labels: Sequence[int],
                   settings: ExplainSettings, progress: ProgressCallback | None = None) -> list[dict[str, np.ndarray]]:
    """Explain uint8 images with a trained fold and return each image's arrays at its own resolution.

    Each result contains `heatmap`, and for LIME also `segments` and `probabilities`.
    """
    if len(images) != len(labels):
        raise ValueError(f"expected one label per image: {len(images)} images but {len(labels)} labels")
    if settings.is_lime:
        return [_lime_arrays(trained, image, label, settings, progress) for image, label in zip(images, labels)]

    device = model_device(trained.model)
    inputs = _stack_inputs(images, trained, device)
    maps = compute_cam(trained.model, inputs, list(labels), settings.method, settings.layer_for(trained.backbone),
                       batch_size=settings.batch_size)
    if progress is not None:
        progress(len(images), len(images))
    return [{"heatmap": resize_map(heatmap, image.shape[:2])} for heatmap, image in zip(maps, images)]


def _lime_arrays(trained: runs.TrainedModel, image: np.ndarray, label: int, settings: ExplainSettings,
                 progress: ProgressCallback | None) -> dict[str, np.ndarray]:
    result = explain_lime(trained.model, trained, image, label, samples=settings.samples,
                          segmentation=settings.segmentation, n_segments=settings.n_segments, seed=settings.seed,
                          batch_size=settings.batch_size, progress=progress)
    return {"heatmap": result.weights, "segments": result.segments, "probabilities": result.probabilities}


def _stack_inputs(images: Sequence[np.ndarray], trained: runs.TrainedModel, device: torch.device) -> torch.Tensor:
    return torch.cat([to_input_tensor(image, trained, device) for image in images])


def explain_run_image(run_dir: Path | str, image: str | Path, settings: ExplainSettings,
                      label: int | str | None = None, trained: runs.TrainedModel | None = None,
                      progress: ProgressCallback | None = None) -> Explanation:
    """Explain one test image of a run with the model of the fold that tested it, using the cache.

    `image` is the manifest's relative path or an absolute path inside the prepared set.
    `label` is a class index or name. None takes the true or the predicted class, as
    `settings.target` selects. Pass `trained` to reuse a loaded model; it must be the fold
    that tested the image.
    """
    run_dir = Path(run_dir)
    prepared_dir = prepared_dir_of(run_dir)
    relative = _relative_image(prepared_dir, image)
    record = _prediction_record(run_dir, relative)
    fold = record["fold"]

    if trained is None:
        trained = runs.load_trained_model(run_dir, fold=fold, device=settings.device)
    elif fold is not None and str(trained.fold) != str(fold):
        raise ValueError(f"{relative} was tested in fold {fold!r}, but the model passed is fold {trained.fold!r}; "
                         "explain it with the fold that never trained on it")

    label_index = _resolve_label(label, record, trained.classes, settings.target)
    path = prepared_dir / relative
    rgb = read_image(path).rgb
    cache = _cache_file(run_dir / EXPLANATIONS_FOLDER / CACHE_FOLDER, path, trained, label_index, settings)

    arrays = load_arrays(cache)
    from_cache = arrays is not None
    if arrays is None:
        arrays = explain_images(trained, [rgb], [label_index], settings, progress)[0]
        save_arrays(cache, arrays)

    return Explanation(
        image=relative, fold=fold, method=settings.method_name, layer=settings.layer_for(trained.backbone),
        label=label_index, class_name=trained.classes[label_index], heatmap=arrays["heatmap"],
        segments=arrays.get("segments"), probabilities=arrays.get("probabilities"), from_cache=from_cache,
    )


def _relative_image(prepared_dir: Path, image: str | Path) -> str:
    path = Path(image)
    if not path.is_absolute():
        return path.as_posix()
    try:
        return path.resolve().relative_to(prepared_dir.resolve()).as_posix()
    except ValueError:
        raise ValueError(f"{path} is not inside the run's prepared set {prepared_dir}") from None


def _prediction_record(run_dir: Path, relative: str) -> dict[str, object]:
    predictions = runs.load_predictions(run_dir)
    matches = predictions[predictions["image"] == relative]
    if matches.empty:
        raise ValueError(f"{relative} is in no finished fold's test data of run {run_dir.name}; "
                         "pick an image from the run's predictions")
    record = matches.iloc[0].to_dict()
    record["fold"] = None if pd.isna(record.get("fold")) else str(record["fold"])
    return record


def _resolve_label(label: int | str | None, record: dict[str, object], classes: list[str],
                   target: ExplainTarget) -> int:
    if label is None:
        label = record["label"] if target is ExplainTarget.TRUE else record["predicted"]
    if isinstance(label, str):
        if label not in classes:
            raise ValueError(f"class {label!r} is not one of the model's classes {classes}")
        return classes.index(label)
    return check_label(label, len(classes))


def _cache_file(cache_dir: Path, image_path: Path, trained: runs.TrainedModel, label: int,
                settings: ExplainSettings) -> Path:
    # NOTE: the key names the fold, not its weights file, so retraining a run in place
    # would need the cache folder deleted.
    parts = {"image": file_digest(image_path), "fold": str(trained.fold), "label": label,
             **settings.method_parts(trained.backbone)}
    return cache_dir / f"{cache_key(parts)}.npz"


def explain_table(table: pd.DataFrame, prepared_dir: Path, load_model: ModelLoader, settings: ExplainSettings,
                  cache_dir: Path, progress: ProgressCallback | None = None) -> pd.DataFrame:
    """Explain every row of a predictions table and return one row of attribution shares per image.

    `table` needs the `REQUIRED_COLUMNS` plus `polygon` (see `attach_polygons`), and its
    images are read from `prepared_dir`. `load_model(fold)` returns the trained fold that tested
    those rows. An unreadable image or an unknown class fills the row's `error` and the run
    continues. Rows without a fold are explained with `load_model(None)`. `progress(done,
    total)` is called after every batch.
    """
    missing = [column for column in (*REQUIRED_COLUMNS, "polygon") if column not in table.columns]
    if missing:
        raise ValueError(f"the table lacks columns {missing}; call attach_polygons on the predictions first")

    rows: list[dict[str, object]] = []
    total = len(table)
    step = 1 if settings.is_lime else settings.batch_size
    for fold, group in _fold_groups(table):
        trained = load_model(fold)
        logger.info("explaining %d images of fold %s with %s", len(group), fold, settings.method_name)
        for start in range(0, len(group), step):
            rows.extend(_explain_rows(group.iloc[start:start + step], trained, Path(prepared_dir), settings,
                                      cache_dir))
            if progress is not None:
                progress(len(rows), total)
    return pd.DataFrame(rows)


def _fold_groups(table: pd.DataFrame) -> Iterator[tuple[str | None, pd.DataFrame]]:
    folds = table["fold"].astype("string")
    for fold in pd.unique(folds):
        if pd.isna(fold):
            yield None, table[folds.isna()]
        else:
            yield str(fold), table[folds == fold]


@dataclass
class _Item:
    row: dict[str, object]
    rgb: np.ndarray
    label: int
    polygon: str
    cache: Path
    arrays: dict[str, np.ndarray] | None = None


def _explain_rows(chunk: pd.DataFrame, trained: runs.TrainedModel, prepared_dir: Path, settings: ExplainSettings,
                  cache_dir: Path) -> list[dict[str, object]]:
    rows, items = [], []
    for record in chunk.to_dict("records"):
        row = _base_row(record, trained, settings)
        rows.append(row)
        try:
            path = prepared_dir / str(record["image"])
            rgb = read_image(path).rgb
            label = _resolve_label(None, record, trained.classes, settings.target)
        except (ImageReadError, ValueError, OSError) as error:
            logger.warning("skipping %s of fold %s: %s", record["image"], trained.fold, error)
            row["error"] = str(error)
            continue
        row["explained_class"] = trained.classes[label]
        items.append(_Item(row, rgb, label, str(record["polygon"]), _cache_file(cache_dir, path, trained, label,
                                                                                 settings)))
    if not items:
        return rows

    _fill_maps(items, trained, settings)
    for item in items:
        item.row.update(attribution_share(item.arrays["heatmap"], item.polygon, item.rgb.shape).as_dict())
    if settings.faithfulness:
        _add_faithfulness(items, trained, settings)
    return rows


def _base_row(record: dict[str, object], trained: runs.TrainedModel, settings: ExplainSettings) -> dict[str, object]:
    row = {column: record.get(column) for column in
           ("image", "source_id", "subject", "label", "predicted", "mask_type", "fold", "polygon_source")}
    row.update(backbone=trained.backbone, method=settings.method_name, layer=settings.layer_for(trained.backbone),
               target=settings.target.value, explained_class=None, error=None)
    return row


def _fill_maps(items: list[_Item], trained: runs.TrainedModel, settings: ExplainSettings) -> None:
    for item in items:
        item.arrays = load_arrays(item.cache)
    pending = [item for item in items if item.arrays is None]
    if not pending:
        return

    computed = explain_images(trained, [item.rgb for item in pending], [item.label for item in pending], settings)
    for item, arrays in zip(pending, computed):
        item.arrays = arrays
        save_arrays(item.cache, arrays)


def _add_faithfulness(items: list[_Item], trained: runs.TrainedModel, settings: ExplainSettings) -> None:
    size = (int(trained.input_size), int(trained.input_size))
    inputs = _stack_inputs([item.rgb for item in items], trained, model_device(trained.model))
    heatmaps = np.stack([resize_map(item.arrays["heatmap"], size) for item in items])
    labels = [item.label for item in items]
    try:
        scores = faithfulness_scores(trained.model, inputs, heatmaps, labels, batch_size=settings.batch_size,
                                     seed=settings.seed)
    except (RuntimeError, ValueError) as error:
        logger.warning("faithfulness scores failed for %d images of fold %s: %s", len(items), trained.fold, error)
        for item in items:
            item.row.update(deletion_auc=math.nan, insertion_auc=math.nan, road_combined=math.nan,
                            error=f"faithfulness failed: {error}")
        return
    for item, score in zip(items, scores):
        item.row.update(deletion_auc=score.deletion_auc, insertion_auc=score.insertion_auc,
                        road_combined=score.road_combined)


def explain_test_set(run_dir: Path | str, settings: ExplainSettings,
                     progress: ProgressCallback | None = None) -> pd.DataFrame:
    """Explain every test image of a run (or of `settings.fold`) and write the attribution CSV.

    Returns the table that `attribution_path(run_dir, settings)` now contains.
    """
    run_dir = Path(run_dir)
    predictions = runs.load_predictions(run_dir)
    if settings.fold is not None:
        folds = sorted(predictions["fold"].dropna().astype(str).unique())
        predictions = predictions[predictions["fold"] == settings.fold]
        if predictions.empty:
            raise ValueError(f"run {run_dir.name} has no test predictions for fold {settings.fold!r}; "
                             f"folds with predictions: {folds}")

    without_fold = predictions["fold"].isna()
    if without_fold.any():
        # The testing fold is unknown, so any model might have trained on these images.
        logger.warning("skipping %d predictions of run %s without a fold", int(without_fold.sum()), run_dir.name)
        predictions = predictions[~without_fold]

    prepared_dir = prepared_dir_of(run_dir)
    manifest = read_manifest(prepared_dir)
    table = attach_polygons(predictions, manifest)

    def load_model(fold: str | None) -> runs.TrainedModel:
        return runs.load_trained_model(run_dir, fold=fold, device=settings.device)

    result = explain_table(table, prepared_dir, load_model, settings,
                           explanations_dir(run_dir) / CACHE_FOLDER, progress)
    path = attribution_path(run_dir, settings)
    write_bytes_atomic(path, result.to_csv(index=False).encode("utf-8"))
    failed = int(result["error"].notna().sum()) if "error" in result else 0
    logger.info("wrote %s: %d images, %d with errors", path, len(result), failed)
    return result


def run_explain_job(run_dir: Path | str, settings: ExplainSettings) -> Path:
    """Run `explain_test_set` with start, progress, end and error events in explanations/events.jsonl.

    Returns the attribution CSV. Re-raises any error after recording it as an event.
    """
    run_dir = Path(run_dir)
    events = explanations_dir(run_dir)
    append_event(events, "explain_start", method=settings.method_name, layer=settings.layer,
                 target=settings.target.value, fold=settings.fold, slug=settings.slug())

    def report(done: int, total: int) -> None:
        append_event(events, "progress", done=done, total=total)

    try:
        result = explain_test_set(run_dir, settings, progress=report)
    except Exception as error:
        append_event(events, "error", message=f"{type(error).__name__}: {error}")
        raise
    path = attribution_path(run_dir, settings)
    failed = int(result["error"].notna().sum()) if "error" in result else 0
    append_event(events, "explain_end", images=len(result), failed=failed, table=str(path))
    return path
