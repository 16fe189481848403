"""Computations behind the Explain page: faces, per-run CAM and LIME maps, the exported grid, summaries.

Plain Python (numpy, pandas, Plotly, PIL and the explanation engine) without Streamlit, so the
page only draws. A face is a prepared test crop of a run or an uploaded photograph, cropped the way
preparation crops (MTCNN box plus margin, resized to the crop size) and optionally masked. Each run
explains a crop of its own test data with the model of the fold that tested it. Any other face
goes to the run's first finished fold, and the result names that fold.
"""

from __future__ import annotations

import collections
import enum
import hashlib
import itertools
import json
import logging
import math
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from PIL import Image, ImageDraw, ImageFont

from fer_core import runs
from fer_core.constants import MaskType
from fer_core.dashboard.exports import encode_png
from fer_core.dashboard.figures import MASK_LABELS, PALETTE, order_labels, order_mask_types
from fer_core.explain import (
    LIME_METHOD,
    AttributionShare,
    CamMethod,
    ExplainSettings,
    Segmentation,
    attach_polygons,
    attribution_share,
    draw_polygon,
    explain_images,
    explain_run_image,
    overlay_heatmap,
    summarise_attribution,
)
from fer_core.explain.common import model_device, predict_probabilities, preserved_state, to_input_tensor
from fer_core.explain.lime_explainer import DEFAULT_LIME_SAMPLES, DEFAULT_SEGMENT_COUNT, ProgressCallback
from fer_core.explain.run_explanations import EXPLANATIONS_FOLDER, ModelLoader
from fer_core.faces import FaceDetection
from fer_core.jobs import JobSpec, JobStatus, get_runner
from fer_core.masks import MaskStyle, mask_outline, render_mask
from fer_core.prepare import SETTINGS_FILE as PREPARED_SETTINGS_FILE
from fer_core.prepare import PrepareSettings, crop_face
from fer_core.training import read_events

logger = logging.getLogger(__name__)

EXPLAIN_JOB_KIND = "explain"
# Side of every picture on the page and in the exported grid, in pixels. Prepared crops are
# 256 px by default, so they are shown at their own resolution.
PICTURE_SIZE = 256
# An unmasked face gets the outline of this mask type, so its upper and lower face can be split
# as for a masked copy. The engine borrows outlines of unmasked test crops in the same order.
OUTLINE_MASK_TYPE = MaskType.SURGICAL
# Computed maps kept per dashboard session: four runs times two maps for about eight faces.
MEMO_ENTRIES = 64
OUTLINE_COLOUR = (255, 255, 255)
# Attribution tables are named attribution-<settings slug>.csv by the engine.
ATTRIBUTION_PREFIX = "attribution-"
# Columns that the engine adds to an attribution table when faithfulness scores were requested.
FAITHFULNESS_COLUMNS = ("deletion_auc", "insertion_auc", "road_combined")

_GRID_TEXT_WIDTH = 360
_GRID_HEADER = 40
_GRID_GAP = 8
_GRID_FONT_SIZE = 15
_GRID_LINE = 19
_GRID_BAR_STEP = 17
_UNIFORM_COLOUR = "#555555"


class LabelChoice(str, enum.Enum):
    """Class that the maps explain: the model's prediction, the face's true label, or a chosen class."""

    PREDICTED = "predicted"
    TRUE = "true"
    CHOSEN = "chosen"


# ---------------------------------------------------------------------------------------------
# Runs


@dataclass(frozen=True)
class RunInfo:
    """A run with at least one finished fold, and what the Explain page needs to know about it."""

    run_id: str
    run_dir: Path
    backbone: str
    classes: tuple[str, ...]
    input_size: int
    prepared_dir: Path | None
    dataset: str
    folds: tuple[str, ...]

    @property
    def title(self) -> str:
        """Return "<backbone> · <run id>" for headings and legends."""
        return f"{self.backbone} · {self.run_id}"


def finished_folds(run_dir: Path, record: Mapping) -> list[str]:
    """Return the folds of a training record whose final weights exist, in split order."""
    names = [str(entry["name"]) for entry in record.get("folds", [])]
    return [name for name in names if (Path(run_dir) / runs.MODELS_DIR / f"{name}.pt").is_file()]


def describe_run(run_dir: Path) -> RunInfo:
    """Read a run's training record and settings into a RunInfo.

    Raises FileNotFoundError when the run has not started training or no fold has finished,
    and ValueError when its files cannot be parsed.
    """
    run_dir = Path(run_dir)
    record = runs.read_training_record(run_dir)
    folds = finished_folds(run_dir, record)
    if not folds:
        raise FileNotFoundError(f"run {run_dir.name} has no finished fold yet; its models can be explained "
                                "once the first fold ends")

    settings = _read_json_object(run_dir / runs.SETTINGS_FILE)
    provenance = _read_json_object(run_dir / runs.PROVENANCE_FILE)
    prepared = settings.get("prepared_dir")
    return RunInfo(
        run_id=run_dir.name, run_dir=run_dir, backbone=str(record["backbone"]),
        classes=tuple(str(name) for name in record["classes"]), input_size=int(record["input_size"]),
        prepared_dir=Path(prepared) if prepared else None,
        dataset=str(provenance.get("dataset") or (Path(prepared).name if prepared else "")), folds=tuple(folds),
    )


def default_runs(run_list: Sequence[RunInfo], limit: int) -> list[str]:
    """Return up to `limit` run ids to compare first, all trained on the newest run's prepared set.

    `run_list` is ordered newest first. The newest run of each backbone comes first, then the
    remaining runs on the same prepared set fill the places left.
    """
    if not run_list:
        return []
    same_data = [run for run in run_list if run.prepared_dir == run_list[0].prepared_dir]
    chosen, backbones = [], set()
    for run in same_data:
        if run.backbone not in backbones:
            chosen.append(run.run_id)
            backbones.add(run.backbone)
    chosen += [run.run_id for run in same_data if run.run_id not in chosen]
    return chosen[:limit]


def _read_json_object(path: Path) -> dict:
    if not path.is_file():
        return {}
    value = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(value, dict):
        raise ValueError(f"{path} does not contain a JSON object")
    return value


def weights_stamp(run: RunInfo, fold: str) -> float:
    """Return the modification time of a fold's weights, so retrained weights get new cache keys."""
    path = run.run_dir / runs.MODELS_DIR / f"{fold}.pt"
    return path.stat().st_mtime if path.exists() else 0.0


# ---------------------------------------------------------------------------------------------
# Faces


@dataclass(frozen=True, eq=False)
class Face:
    """One face crop to explain, with its mask outline in crop pixels.

    `polygon` is JSON text of [x, y] points ("[]" without an outline). `polygon_source` is "own"
    for a masked crop, "borrowed:<mask type>" for an unmasked test crop that takes the outline of
    a masked copy of its photograph, "outline:<mask type>" for an unmasked upload, "drawn" for an
    upload with a drawn mask, and "none". `prepared_dir` and `image` locate a prepared test crop
    and are None for uploads.
    """

    rgb: np.ndarray
    name: str
    mask_type: str
    polygon: str = "[]"
    polygon_source: str = "none"
    true_label: str | None = None
    prepared_dir: Path | None = None
    image: str | None = None
    dataset: str = ""

    @property
    def uploaded(self) -> bool:
        """Return True for an uploaded photograph, False for a prepared crop."""
        return self.image is None

    @property
    def key(self) -> str:
        """Return a digest of the pixels and the outline, for cache keys."""
        digest = hashlib.sha256(np.ascontiguousarray(self.rgb).tobytes())
        digest.update(f"{self.rgb.shape}|{self.polygon}".encode("utf-8"))
        return digest.hexdigest()[:24]

    def outline_note(self) -> str:
        """Return one sentence saying where the drawn mask outline comes from."""
        kind, _, mask_type = self.polygon_source.partition(":")
        if kind == "own":
            return f"Outline of the {self.mask_type} mask of this crop."
        if kind == "borrowed":
            return (f"Unmasked crop: the outline is borrowed from the {mask_type} copy of the same photograph, "
                    "so the upper and lower face are split as for the masked copies.")
        if kind == "outline":
            return (f"Unmasked face: the outline is where a {mask_type} mask would sit (not drawn), so the "
                    "upper and lower face can still be split.")
        if kind == "drawn":
            return f"Outline of the {self.mask_type} mask drawn on the upload."
        return "No mask outline, so the upper and lower face shares are not computed."


def faces_table(predictions: pd.DataFrame, manifest: pd.DataFrame) -> pd.DataFrame:
    """Return a run's predictions with each crop's mask outline (`polygon`, `polygon_source`)."""
    return attach_polygons(predictions, manifest)


def face_from_row(rgb: np.ndarray, row: Mapping, prepared_dir: Path, dataset: str) -> Face:
    """Return the Face of one row of `faces_table`, whose pixels the caller has read."""
    return Face(rgb=rgb, name=str(row["image"]), mask_type=str(row["mask_type"]),
                polygon=str(row.get("polygon") or "[]"), polygon_source=str(row.get("polygon_source") or "none"),
                true_label=str(row["label"]), prepared_dir=Path(prepared_dir), image=str(row["image"]),
                dataset=dataset)


def crop_settings(prepared_dir: Path | None) -> PrepareSettings:
    """Return the preparation settings of a prepared set, or the defaults when they cannot be read."""
    if prepared_dir is None:
        return PrepareSettings()
    path = Path(prepared_dir) / PREPARED_SETTINGS_FILE
    try:
        return PrepareSettings.from_dict(_read_json_object(path)["settings"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.info("using the default crop settings, because %s has no readable preparation settings (%s)",
                    path, error)
        return PrepareSettings()


def face_from_photo(rgb: np.ndarray, detection: FaceDetection, name: str, mask_type: MaskType,
                    crop: PrepareSettings, coverage: float, seed: int = 0, greyscale: bool = False) -> Face:
    """Crop a detected face as preparation does and draw a mask on it unless `mask_type` is NONE.

    An unmasked face gets the outline of OUTLINE_MASK_TYPE without drawing it, so its
    attribution can still be split into the upper face, the mask region and the rest.
    """
    # Uploads are cropped exactly as the prepared sets that the models trained on.
    pixels, landmarks, _ = crop_face(rgb, detection, crop.margin, crop.crop_size)
    mask_type = MaskType(mask_type)
    if mask_type is MaskType.NONE:
        polygon = mask_outline(landmarks, OUTLINE_MASK_TYPE, coverage)
        source = f"outline:{OUTLINE_MASK_TYPE.value}"
    else:
        masked = render_mask(pixels, landmarks, mask_type, MaskStyle(coverage=coverage, seed=seed), greyscale=greyscale)
        pixels, polygon, source = masked.image, masked.polygon, "drawn"
    outline = json.dumps(np.round(np.asarray(polygon, dtype=float), 1).tolist())
    return Face(rgb=pixels, name=name, mask_type=mask_type.value, polygon=outline, polygon_source=source)


# ---------------------------------------------------------------------------------------------
# Explanation requests and results


@dataclass(frozen=True)
class ExplainRequest:
    """The Explain page's settings for one grid.

    `layers` contains (backbone, layer) pairs, and a backbone without one uses its default CAM
    layer. `chosen_class` applies to LabelChoice.CHOSEN. LIME runs only when `lime` is set.
    """

    method: CamMethod = CamMethod.GRADCAM
    layers: tuple[tuple[str, str], ...] = ()
    label_choice: LabelChoice = LabelChoice.PREDICTED
    chosen_class: str | None = None
    lime: bool = True
    samples: int = DEFAULT_LIME_SAMPLES
    segmentation: Segmentation = Segmentation.SLIC
    n_segments: int = DEFAULT_SEGMENT_COUNT
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", CamMethod(self.method))
        object.__setattr__(self, "label_choice", LabelChoice(self.label_choice))
        object.__setattr__(self, "segmentation", Segmentation(self.segmentation))
        object.__setattr__(self, "layers", tuple((str(backbone), str(layer)) for backbone, layer in self.layers))
        if self.label_choice is LabelChoice.CHOSEN and not self.chosen_class:
            raise ValueError("label_choice 'chosen' needs chosen_class, the name of the class to explain")
        # ExplainSettings checks the LIME numbers.
        self.lime_settings()

    def layer_for(self, backbone: str) -> str | None:
        """Return the chosen CAM layer of a backbone, or None for its default."""
        return dict(self.layers).get(str(backbone))

    def cam_settings(self, backbone: str) -> ExplainSettings:
        """Return the engine settings of the CAM map for a backbone."""
        return ExplainSettings(method=self.method, layer=self.layer_for(backbone))

    def lime_settings(self) -> ExplainSettings:
        """Return the engine settings of the LIME map."""
        return ExplainSettings(method=LIME_METHOD, samples=self.samples, segmentation=self.segmentation,
                               n_segments=self.n_segments, seed=self.seed)


@dataclass(frozen=True, eq=False)
class RunExplanation:
    """One run's prediction and maps for a face.

    `tested` is True when `fold` is the fold that tested this very crop. `label` is the
    explained class index, or None with the reason in `problem` when the requested class is not
    one of the run's. A map is None when it was not requested or failed, with the failure in
    `cam_error` or `lime_error`.
    """

    run: RunInfo
    fold: str
    tested: bool
    probabilities: np.ndarray
    label: int | None
    problem: str | None = None
    cam: np.ndarray | None = None
    cam_layer: str | None = None
    cam_error: str | None = None
    lime: np.ndarray | None = None
    lime_error: str | None = None
    cam_share: AttributionShare | None = None
    lime_share: AttributionShare | None = None

    @property
    def predicted(self) -> str:
        """Return the class with the highest probability."""
        return self.run.classes[int(np.argmax(self.probabilities))]

    @property
    def class_name(self) -> str | None:
        """Return the explained class, or None when there is none."""
        return None if self.label is None else self.run.classes[self.label]

    def fold_note(self, face: Face) -> str:
        """Return one sentence saying which fold's model explains the face and why."""
        fold = fold_title(self.fold)
        if self.tested:
            return f"Explained by the model of {fold}, which tested this crop and never trained on it."
        if face.uploaded:
            return f"Uploaded face: explained by the model of the run's first finished fold, {fold}."
        if self.run.prepared_dir is not None and face.prepared_dir is not None and _same_folder(
                self.run.prepared_dir, face.prepared_dir):
            return (f"This crop is not in the run's finished test data, so the model of {fold} explains it; "
                    "that model may have trained on this face.")
        return f"Face from another prepared set: explained by the model of the run's first finished fold, {fold}."


def fold_title(fold: str) -> str:
    """Return "fold-01" as it is, and a name such as "subject-002" as "fold subject-002"."""
    return fold if fold.lower().startswith("fold") else f"fold {fold}"


class MapMemo:
    """Least-recently-used store of computed maps and probabilities for one dashboard session.

    Widget clicks rerun the page, and the memo returns what was already computed for the same
    run, fold weights, face and settings.
    """

    def __init__(self, max_entries: int = MEMO_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, received {max_entries}")
        self.max_entries = max_entries
        self._items: collections.OrderedDict[Hashable, np.ndarray] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def get_or_compute(self, key: Hashable, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """Return the stored value of `key`, computing and storing it first when it is missing."""
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = compute()
        self._items[key] = value
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)
        return value


def tested_fold(run: RunInfo, face: Face, predictions: pd.DataFrame | None) -> str | None:
    """Return the finished fold whose test data held this crop, or None when no fold of the run tested it."""
    if face.image is None or face.prepared_dir is None or run.prepared_dir is None or predictions is None:
        return None
    if not _same_folder(face.prepared_dir, run.prepared_dir):
        return None
    folds = predictions.loc[predictions["image"].astype(str) == face.image, "fold"].dropna()
    if folds.empty:
        return None
    fold = str(folds.iloc[0])
    return fold if fold in run.folds else None


def _same_folder(first: Path, second: Path) -> bool:
    return os.path.abspath(first) == os.path.abspath(second) or Path(first).resolve() == Path(second).resolve()


def class_probabilities(trained: runs.TrainedModel, rgb: np.ndarray) -> np.ndarray:
    """Return the model's class probabilities for one uint8 face crop."""
    with preserved_state(trained.model):
        trained.model.eval()
        inputs = to_input_tensor(rgb, trained, model_device(trained.model))
        return predict_probabilities(trained.model, inputs, batch_size=1)[0]


def resolve_label(request: ExplainRequest, classes: Sequence[str], probabilities: np.ndarray,
                  true_label: str | None) -> tuple[int | None, str | None]:
    """Return the class index to explain, or None with the reason why the run cannot explain it."""
    classes = list(classes)
    if request.label_choice is LabelChoice.PREDICTED:
        return int(np.argmax(probabilities)), None
    if request.label_choice is LabelChoice.TRUE:
        if true_label is None:
            return None, "This face has no true label; explain the predicted class or choose a class."
        requested = true_label
    else:
        requested = str(request.chosen_class)
    if requested not in classes:
        return None, f"Class {requested!r} is not one of this run's classes ({', '.join(classes)})."
    return classes.index(requested), None


def explain_for_run(run: RunInfo, face: Face, request: ExplainRequest, predictions: pd.DataFrame | None,
                    load_model: ModelLoader, memo: MapMemo,
                    lime_progress: ProgressCallback | None = None) -> RunExplanation:
    """Explain a face with one run: probabilities, the CAM map and, if requested, the LIME map.

    `load_model(fold)` returns the run's trained fold, the first finished one for None.
    `predictions` (the run's predictions.csv) gives the fold that tested each prepared crop. A map
    that fails is reported in the result and logged, so one run never stops the grid.
    """
    fold = tested_fold(run, face, predictions)
    tested = fold is not None
    trained = load_model(fold)
    fold = str(trained.fold)
    base = (run.run_id, fold, weights_stamp(run, fold), face.key)

    probabilities = memo.get_or_compute(base + ("probabilities",), lambda: class_probabilities(trained, face.rgb))
    label, problem = resolve_label(request, run.classes, probabilities, face.true_label)
    result = {"run": run, "fold": fold, "tested": tested, "probabilities": probabilities, "label": label,
              "problem": problem}
    if label is None:
        return RunExplanation(**result)

    cam_settings = request.cam_settings(run.backbone)
    result["cam_layer"] = cam_settings.layer_for(run.backbone)
    result["cam"], result["cam_error"] = _map_or_error(
        memo, base + ("cam", cam_settings.method_name, result["cam_layer"], label),
        lambda: _compute_map(run, face, trained, cam_settings, label, tested, None), run, "CAM")
    if request.lime:
        lime_settings = request.lime_settings()
        lime_key = base + ("lime", request.samples, request.segmentation.value, request.n_segments, request.seed, label)
        result["lime"], result["lime_error"] = _map_or_error(
            memo, lime_key, lambda: _compute_map(run, face, trained, lime_settings, label, tested, lime_progress),
            run, "LIME")

    result["cam_share"] = _share(result.get("cam"), face)
    result["lime_share"] = _share(result.get("lime"), face)
    return RunExplanation(**result)


def _map_or_error(memo: MapMemo, key: Hashable, compute: Callable[[], np.ndarray], run: RunInfo,
                  method: str) -> tuple[np.ndarray | None, str | None]:
    try:
        return memo.get_or_compute(key, compute), None
    except (ValueError, RuntimeError, OSError) as error:
        logger.warning("%s of run %s failed: %s", method, run.run_id, error)
        return None, f"{method} failed: {error}"


def _compute_map(run: RunInfo, face: Face, trained: runs.TrainedModel, settings: ExplainSettings, label: int,
                 tested: bool, progress: ProgressCallback | None) -> np.ndarray:
    if tested:
        # The engine caches maps of test crops on disk, shared with the batch job.
        explanation = explain_run_image(run.run_dir, face.image, settings, label=label, trained=trained,
                                        progress=progress)
        return explanation.heatmap
    return explain_images(trained, [face.rgb], [label], settings, progress)[0]["heatmap"]


def _share(heatmap: np.ndarray | None, face: Face) -> AttributionShare | None:
    if heatmap is None:
        return None
    return attribution_share(heatmap, face.polygon, face.rgb.shape)


# ---------------------------------------------------------------------------------------------
# Pictures and figures


def picture(face: Face, heatmap: np.ndarray | None = None, size: int = PICTURE_SIZE) -> np.ndarray:
    """Return the face, with the heatmap blended over it if given, at `size` pixels with the mask outline."""
    base = face.rgb if heatmap is None else overlay_heatmap(face.rgb, heatmap)
    interpolation = cv2.INTER_AREA if base.shape[0] > size else cv2.INTER_LINEAR
    resized = cv2.resize(np.ascontiguousarray(base), (size, size), interpolation=interpolation)
    return draw_polygon(resized, face.polygon, OUTLINE_COLOUR, thickness=2, source_shape=face.rgb.shape)


def probability_figure(explanation: RunExplanation) -> go.Figure:
    """Return a small horizontal bar chart of a run's class probabilities; the explained class is outlined."""
    classes = list(explanation.run.classes)
    predicted = int(np.argmax(explanation.probabilities))
    colours = [PALETTE[1] if index == predicted else PALETTE[0] for index in range(len(classes))]
    outlines = [3 if index == explanation.label else 0 for index in range(len(classes))]
    figure = go.Figure(go.Bar(
        x=[float(value) for value in explanation.probabilities], y=classes, orientation="h",
        marker={"color": colours, "line": {"color": "#222222", "width": outlines}},
        text=[f"{value:.0%}" for value in explanation.probabilities], textposition="auto",
        hovertemplate="%{y}: %{x:.1%}<extra></extra>",
    ))
    figure.update_layout(height=60 + 26 * len(classes), margin={"l": 10, "r": 10, "t": 10, "b": 30},
                         xaxis={"range": [0, 1], "tickformat": ".0%"}, yaxis={"autorange": "reversed"},
                         showlegend=False)
    return figure


def share_text(share: AttributionShare | None) -> str:
    """Return "upper face 41% · mask 22% · other 37%" for an attribution share, or ""."""
    if share is None or math.isnan(share.upper_share):
        return ""
    return (f"upper face {share.upper_share:.0%} · mask {share.mask_share:.0%} · "
            f"other {share.other_share:.0%}")


# ---------------------------------------------------------------------------------------------
# Exports


def numbers_table(face: Face, explanations: Sequence[RunExplanation], request: ExplainRequest) -> pd.DataFrame:
    """Return one row per run: prediction, probabilities, explained class and attribution shares."""
    rows = []
    for item in explanations:
        row = {
            "run_id": item.run.run_id, "backbone": item.run.backbone, "dataset": item.run.dataset,
            "face": face.name, "mask_type": face.mask_type, "polygon_source": face.polygon_source,
            "fold": item.fold, "fold_tested_face": item.tested, "true_label": face.true_label,
            "predicted": item.predicted, "explained_class": item.class_name,
            "cam_method": request.method.value, "cam_layer": item.cam_layer,
            "lime_samples": request.samples if request.lime else None,
            "lime_segmentation": request.segmentation.value if request.lime else None,
            "lime_segments": request.n_segments if request.lime else None,
            "lime_seed": request.seed if request.lime else None,
            "problem": "; ".join(filter(None, [item.problem, item.cam_error, item.lime_error])) or None,
        }
        row.update({f"prob_{name}": float(value) for name, value in zip(item.run.classes, item.probabilities)})
        row.update(_share_columns("cam", item.cam_share))
        row.update(_share_columns("lime", item.lime_share))
        rows.append(row)
    return pd.DataFrame(rows)


def _share_columns(prefix: str, share: AttributionShare | None) -> dict[str, float]:
    values = share.as_dict() if share is not None else {}
    columns = ("mask_share", "upper_share", "other_share", "mask_area", "upper_area")
    return {f"{prefix}_{column}": values.get(column, math.nan) for column in columns}


def grid_image(face: Face, explanations: Sequence[RunExplanation], request: ExplainRequest) -> np.ndarray:
    """Compose the grid as one uint8 RGB image: a header, then per run its text, the face, CAM and LIME."""
    size = PICTURE_SIZE
    width = _GRID_TEXT_WIDTH + 3 * (size + _GRID_GAP) + _GRID_GAP
    height = _GRID_HEADER + len(explanations) * (size + _GRID_GAP) + _GRID_GAP
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=_GRID_FONT_SIZE)
    bold = ImageFont.load_default(size=_GRID_FONT_SIZE + 2)

    columns = [f"Face: {face.name}", f"CAM: {request.method.value}",
               f"LIME: {request.samples} samples" if request.lime else "LIME: off"]
    for position, title in enumerate(columns):
        x = _GRID_TEXT_WIDTH + _GRID_GAP + position * (size + _GRID_GAP)
        draw.text((x, 12), _fit(draw, title, bold, size), fill=(0, 0, 0), font=bold)

    face_picture = picture(face)
    for row, item in enumerate(explanations):
        top = _GRID_HEADER + row * (size + _GRID_GAP)
        _draw_run_text(draw, item, face, (_GRID_GAP, top), top + size, font, bold)
        pictures = [face_picture, _map_picture(face, item.cam, item.cam_error or item.problem),
                    _map_picture(face, item.lime, item.lime_error or item.problem or _lime_off(request))]
        for position, image in enumerate(pictures):
            x = _GRID_TEXT_WIDTH + _GRID_GAP + position * (size + _GRID_GAP)
            canvas.paste(Image.fromarray(image), (x, top))
    return np.asarray(canvas)


def grid_png(face: Face, explanations: Sequence[RunExplanation], request: ExplainRequest) -> bytes:
    """Return the grid of `grid_image` as PNG bytes."""
    return encode_png(grid_image(face, explanations, request))


def _lime_off(request: ExplainRequest) -> str | None:
    return None if request.lime else "LIME is switched off"


def _map_picture(face: Face, heatmap: np.ndarray | None, reason: str | None) -> np.ndarray:
    if heatmap is not None:
        return picture(face, heatmap)
    blank = Image.new("RGB", (PICTURE_SIZE, PICTURE_SIZE), (235, 235, 235))
    draw = ImageDraw.Draw(blank)
    font = ImageFont.load_default(size=_GRID_FONT_SIZE - 2)
    for line, text in enumerate(_wrap(draw, reason or "no map", font, PICTURE_SIZE - 16)[:10]):
        draw.text((8, 8 + line * _GRID_LINE), text, fill=(90, 90, 90), font=font)
    return np.asarray(blank)


def _draw_run_text(draw: ImageDraw.ImageDraw, item: RunExplanation, face: Face, origin: tuple[int, int],
                   bottom: int, font: ImageFont.ImageFont, bold: ImageFont.ImageFont) -> None:
    x, y = origin
    limit = _GRID_TEXT_WIDTH - 2 * _GRID_GAP
    probability = float(np.max(item.probabilities))
    lines = [
        (f"{item.run.backbone} · CAM layer {item.cam_layer}" if item.cam_layer else item.run.backbone, bold),
        (item.run.run_id, font),
        (f"{fold_title(item.fold)} ({'tested this crop' if item.tested else 'first finished fold'})", font),
        (f"true {face.true_label or 'unknown'} · predicted {item.predicted} ({probability:.0%})", font),
        (f"explained class: {item.class_name or 'none'}", font),
        (f"CAM {share_text(item.cam_share) or 'no shares'}", font),
        (f"LIME {share_text(item.lime_share) or 'no shares'}", font),
    ]
    for text, line_font in lines:
        draw.text((x, y), _fit(draw, text, line_font, limit), fill=(0, 0, 0), font=line_font)
        y += _GRID_LINE
    _draw_probability_bars(draw, item, (x, y + 4), bottom, font, limit)


def _draw_probability_bars(draw: ImageDraw.ImageDraw, item: RunExplanation, origin: tuple[int, int], bottom: int,
                           font: ImageFont.ImageFont, width: int) -> None:
    x, y = origin
    label_width = 90
    bar_width = width - label_width - 50
    predicted = int(np.argmax(item.probabilities))
    for index, (name, value) in enumerate(zip(item.run.classes, item.probabilities)):
        if y + _GRID_BAR_STEP > bottom:
            # Classes that do not fit beside the pictures are left out; the CSV has every probability.
            break
        draw.text((x, y), _fit(draw, name, font, label_width - 4), fill=(0, 0, 0), font=font)
        colour = PALETTE[1] if index == predicted else PALETTE[0]
        length = max(1, round(bar_width * float(value)))
        draw.rectangle((x + label_width, y + 3, x + label_width + length, y + 14), fill=colour,
                       outline=(0, 0, 0) if index == item.label else None)
        draw.text((x + label_width + bar_width + 6, y), f"{float(value):.0%}", fill=(0, 0, 0), font=font)
        y += _GRID_BAR_STEP


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int) -> list[str]:
    lines, current = [], ""
    for word in text.split():
        candidate = f"{current} {word}".strip()
        if current and draw.textlength(candidate, font=font) > width:
            lines.append(current)
            current = word
        else:
            current = candidate
    return lines + ([current] if current else [])


# ---------------------------------------------------------------------------------------------
# Attribution summaries of whole test sets


def attribution_files(run_dir: Path) -> dict[str, Path]:
    """Return the attribution tables of a run by settings slug, such as "gradcam-default-predicted-all"."""
    folder = Path(run_dir) / EXPLANATIONS_FOLDER
    if not folder.is_dir():
        return {}
    return {path.stem[len(ATTRIBUTION_PREFIX):]: path
            for path in sorted(folder.glob(f"{ATTRIBUTION_PREFIX}*.csv")) if path.is_file()}


def model_names(run_list: Sequence[RunInfo]) -> dict[str, str]:
    """Return a legend name per run id: the backbone, or "<backbone> (<run id>)" when backbones repeat."""
    counts = collections.Counter(run.backbone for run in run_list)
    return {run.run_id: run.backbone if counts[run.backbone] == 1 else f"{run.backbone} ({run.run_id})"
            for run in run_list}


def combine_attribution(tables: Mapping[str, pd.DataFrame], names: Mapping[str, str]) -> pd.DataFrame:
    """Stack per-run attribution tables with `run_id` and `model` columns, dropping rows that failed."""
    frames = []
    for run_id, table in tables.items():
        frame = table.copy()
        if "error" in frame.columns:
            frame = frame[frame["error"].isna()]
        frames.append(frame.assign(run_id=run_id, model=names.get(run_id, run_id)))
    if not frames:
        return pd.DataFrame()
    combined = pd.concat(frames, ignore_index=True)
    for column in ("mask_type", "explained_class"):
        if column in combined.columns:
            combined[column] = combined[column].astype(str)
    return combined


def share_summary(table: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Average the attribution shares over groups, keeping only groups with a mask outline."""
    summary = summarise_attribution(table, by=by)
    return summary[summary["images"] > 0].reset_index(drop=True)


def faithfulness_summary(table: pd.DataFrame) -> pd.DataFrame | None:
    """Return the mean deletion AUC, insertion AUC and ROAD score per model, or None without those columns."""
    columns = [column for column in FAITHFULNESS_COLUMNS if column in table.columns]
    if not columns or table[columns].notna().sum().sum() == 0:
        return None
    summary = table.groupby("model", sort=False)[columns].mean().reset_index()
    summary["images"] = table.groupby("model", sort=False)[columns[0]].count().to_numpy()
    return summary


def region_share_figure(table: pd.DataFrame) -> go.Figure:
    """Return stacked bars of the mean upper-face, mask and other shares per model."""
    summary = share_summary(table, ("model",))
    figure = go.Figure()
    regions = (("upper_share", "upper face"), ("mask_share", "mask region"), ("other_share", "rest of the crop"))
    for colour, (column, name) in zip(PALETTE, regions):
        figure.add_bar(x=summary["model"], y=summary[column], name=name, marker_color=colour,
                       text=[f"{value:.0%}" for value in summary[column]], textposition="inside",
                       hovertemplate=f"%{{x}}<br>{name}: %{{y:.1%}}<extra></extra>")
    _add_uniform_line(figure, summary)
    return _share_layout(figure, "Where positive attribution falls, per model", "model", barmode="stack")


def upper_share_figure(table: pd.DataFrame, column: str, title: str, axis_title: str) -> go.Figure:
    """Return grouped bars of the mean upper-face share per value of `column`, one colour per model."""
    summary = share_summary(table, ("model", column))
    order = order_mask_types(summary[column]) if column == "mask_type" else order_labels(summary[column])
    figure = go.Figure()
    for colour, (model, rows) in zip(itertools.cycle(PALETTE), summary.groupby("model", sort=False)):
        rows = rows.set_index(column).reindex([value for value in order if value in set(rows[column])])
        labels = [MASK_LABELS.get(value, value) for value in rows.index] if column == "mask_type" else list(rows.index)
        figure.add_bar(x=labels, y=rows["upper_share"], name=str(model), marker_color=colour,
                       customdata=np.stack([rows["images"], rows["upper_enrichment"]], axis=1),
                       hovertemplate=("%{x}: %{y:.1%} of the positive attribution on the upper face"
                                      "<br>%{customdata[0]} images, %{customdata[1]:.2f} times a uniform map"
                                      "<extra>" + str(model) + "</extra>"))
    _add_uniform_line(figure, summary)
    figure.update_xaxes(categoryorder="array",
                        categoryarray=[MASK_LABELS.get(value, value) if column == "mask_type" else value
                                       for value in order])
    return _share_layout(figure, title, axis_title, barmode="group")


def _add_uniform_line(figure: go.Figure, summary: pd.DataFrame) -> None:
    uniform = float(summary["upper_area"].mean()) if len(summary) else math.nan
    if not math.isfinite(uniform):
        return
    figure.add_hline(y=uniform, line_dash="dash", line_color=_UNIFORM_COLOUR)
    # The line itself has no legend entry, so an empty trace names it in the legend.
    figure.add_scatter(x=[None], y=[None], mode="lines", line={"dash": "dash", "color": _UNIFORM_COLOUR},
                       name=f"upper-face share of a uniform map ({uniform:.0%})")


def _share_layout(figure: go.Figure, title: str, axis_title: str, barmode: str) -> go.Figure:
    figure.update_layout(title=title, barmode=barmode, height=400, yaxis={"range": [0, 1], "tickformat": ".0%",
                                                                          "title": "share of positive attribution"},
                         xaxis_title=axis_title, margin={"l": 50, "r": 20, "t": 60, "b": 100},
                         legend={"orientation": "h", "yanchor": "top", "y": -0.25, "x": 0})
    return figure


# ---------------------------------------------------------------------------------------------
# Batch explanation jobs


@dataclass(frozen=True)
class BatchProgress:
    """The latest batch explanation of a run: its job (if still listed) and its progress events."""

    status: JobStatus | None
    done: int | None = None
    total: int | None = None
    slug: str | None = None
    table: str | None = None
    failed_images: int | None = None
    error: str | None = None

    @property
    def fraction(self) -> float:
        """Return the finished share from 0 to 1 (0 before the first progress event)."""
        if not self.done or not self.total:
            return 0.0
        return min(1.0, self.done / self.total)

    @property
    def running(self) -> bool:
        """Return True while the job is queued or running."""
        return self.status is not None and not self.status.state.is_final


def batch_folder(run_dir: Path) -> Path:
    """Return the folder of a run's batch job: `<run>/explanations`, never the training job's run folder."""
    return Path(os.path.abspath(Path(run_dir) / EXPLANATIONS_FOLDER))


def batch_argv(run_dir: Path, settings: ExplainSettings) -> tuple[str, ...]:
    """Return the `python -m` command line of `fer_core.explain` for these settings."""
    argv = ["fer_core.explain", str(run_dir), "--method", settings.method_name, "--target", settings.target.value,
            "--seed", str(settings.seed), "--batch-size", str(settings.batch_size), "--device", settings.device]
    if settings.is_lime:
        argv += ["--samples", str(settings.samples), "--segmentation", settings.segmentation.value,
                 "--segments", str(settings.n_segments)]
    elif settings.layer is not None:
        argv += ["--layer", settings.layer]
    if settings.fold is not None:
        argv += ["--fold", settings.fold]
    if settings.faithfulness:
        argv.append("--faithfulness")
    return tuple(argv)


def submit_batch(jobs_dir: Path, run_dir: Path, settings: ExplainSettings, needs_gpu: bool = False) -> str:
    """Queue the explanation of a run's whole test data as a background job and return its id.

    The job writes into `<run>/explanations`, so it never conflicts with the run's training job.
    Raises JobConflictError while another batch explanation of the same run is queued or running.
    """
    spec = JobSpec(kind=EXPLAIN_JOB_KIND, argv=batch_argv(run_dir, settings), run_dir=batch_folder(run_dir),
                   label=f"explain {Path(run_dir).name} ({settings.slug()})", needs_gpu=needs_gpu)
    job_id = get_runner(jobs_dir).submit(spec)
    logger.info("queued explanation job %s for run %s with %s", job_id, Path(run_dir).name, settings.slug())
    return job_id


def batch_progress(jobs_dir: Path, run_dir: Path) -> BatchProgress | None:
    """Return the latest batch explanation of a run, or None when it never had one."""
    folder = batch_folder(run_dir)
    jobs = [status for status in get_runner(jobs_dir).list_jobs()
            if status.kind == EXPLAIN_JOB_KIND and Path(os.path.abspath(status.run_dir)) == folder]
    status = jobs[-1] if jobs else None
    events = read_events(folder) if folder.is_dir() else []
    starts = [index for index, event in enumerate(events) if event.get("event") == "explain_start"]
    if status is None and not starts:
        return None

    fields: dict[str, object] = {}
    for event in events[starts[-1]:] if starts else []:
        kind = event.get("event")
        if kind == "explain_start":
            fields["slug"] = event.get("slug")
        elif kind == "progress":
            fields.update(done=event.get("done"), total=event.get("total"))
        elif kind == "explain_end":
            fields.update(table=event.get("table"), failed_images=event.get("failed"), done=event.get("images"),
                          total=event.get("images"))
        elif kind == "error":
            fields["error"] = event.get("message")
    if status is not None and status.error and not fields.get("error"):
        fields["error"] = status.error
    return BatchProgress(status=status, **fields)
