"""The preparation pipeline: detect each face, draw the masks, crop, write, and report.

One source photograph costs one MTCNN detection and one landmark fit, whatever the number of
mask types. The face is cropped first (square, with a margin, resized to `crop_size`) and the
masks are drawn on the crop, so every mask type is a cheap operation on a small image.

Results are cached on disk under a folder named by the data set and a hash of its contents and
the settings, so a rerun with the same inputs costs nothing. A run that stops half-way keeps
what it wrote (one record file per finished photograph) and the next run continues from there.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import fcntl
import hashlib
import json
import logging
import multiprocessing
import os
import re
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from fer_core.constants import CROP_SIZE, MaskType
from fer_core.datasets import DatasetTable
from fer_core.files import atomic_path, write_csv_atomic, write_json_atomic
from fer_core.faces import FaceAnalyzer, FaceDetection, FaceSelection, NoFaceError, face_crop_box
from fer_core.images import ImageReadError, LoadedImage, read_image
from fer_core.masks import MaskStyle, render_mask
from fer_core.paths import prepared_root
from fer_core.splits import check_real_number, check_whole_number, parse_choice

logger = logging.getLogger(__name__)

# Bump when the pipeline's output changes for the same settings, so old caches are not reused.
PIPELINE_VERSION = 2
MANIFEST_FILE = "manifest.csv"
FACES_FILE = "faces.csv"
REPORT_FILE = "report.csv"
SETTINGS_FILE = "settings.json"
PARTIAL_SUFFIX = ".partial"
# PNG compression level 1 writes several times faster than the default 3 and the files are
# only about 10 % larger.
PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1]
# The manifest carries these base columns first; data set metadata columns follow them.
BASE_COLUMNS = ["image", "source_id", "subject", "label", "mask_type", "polygon", "greyscale", "coverage"]
# A face whose MTCNN box lies more than this fraction outside the photograph is flagged in the
# report: the crop repeats the edge pixels there, so the mask sits on smeared pixels.
FACE_OUTSIDE_FRACTION_FLAGGED = 0.25

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class PrepareSettings:
    """How to turn a data set into masked face crops."""

    mask_types: tuple[MaskType, ...] = (MaskType.NONE, *MaskType.drawn())
    coverage: float = 0.6
    crop_size: int = CROP_SIZE
    margin: float = 0.15
    seed: int = 0
    selection: FaceSelection = FaceSelection.LARGEST
    workers: int = 2

    def __post_init__(self) -> None:
        if not self.mask_types:
            raise ValueError("mask_types is empty; choose at least one of: "
                             + ", ".join(m.value for m in MaskType))
        object.__setattr__(self, "mask_types", tuple(parse_choice(MaskType, m, "mask_types") for m in self.mask_types))
        object.__setattr__(self, "selection", parse_choice(FaceSelection, self.selection, "selection"))
        for name in ("crop_size", "seed", "workers"):
            check_whole_number(name, getattr(self, name))
        for name in ("coverage", "margin"):
            check_real_number(name, getattr(self, name))
        if not 0.0 <= self.coverage <= 1.0:
            raise ValueError(f"coverage must be between 0 and 1, got {self.coverage}")
        if not 32 <= self.crop_size <= 1024:
            raise ValueError(f"crop_size must be between 32 and 1024 pixels, got {self.crop_size}")
        if not 0.0 <= self.margin <= 1.0:
            raise ValueError(f"margin must be between 0 and 1 (a fraction of the face size), got {self.margin}")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")

    def to_dict(self) -> dict:
        """Return the settings as JSON-safe values."""
        values = dataclasses.asdict(self)
        values["mask_types"] = [m.value for m in self.mask_types]
        values["selection"] = self.selection.value
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "PrepareSettings":
        """Build settings from `to_dict` output, ignoring unknown keys."""
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {key: value for key, value in values.items() if key in known}
        if "mask_types" in kwargs:
            kwargs["mask_types"] = tuple(MaskType(m) for m in kwargs["mask_types"])
        return cls(**kwargs)

    def cache_key(self) -> dict:
        """Return the settings that change the output (the worker count does not)."""
        values = self.to_dict()
        del values["workers"]
        return values


@dataclass
class PreparedSet:
    """A prepared set on disk and its tables."""

    folder: Path
    manifest: pd.DataFrame
    report: pd.DataFrame
    faces: pd.DataFrame
    settings: PrepareSettings
    dataset_name: str = ""
    info: dict = field(default_factory=dict)

    def image_path(self, relative: str) -> Path:
        """Return the absolute path of a manifest `image` entry."""
        return self.folder / relative


@dataclass(frozen=True)
class _SourceTask:
    """One photograph to prepare, as sent to a worker process."""

    path: str
    source_id: str
    subject: str | None
    label: str
    metadata: dict


# ---------------------------------------------------------------------------------------------
# Cache location


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-").lower() or "dataset"


def prepared_folder(table: DatasetTable, settings: PrepareSettings, output_root: Path | None = None) -> Path:
    """Return the cache folder for this data set and these settings; it exists once ready."""
    key = {
        "pipeline_version": PIPELINE_VERSION,
        "dataset": table.fingerprint(),
        "settings": settings.cache_key(),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(output_root) if output_root is not None else prepared_root()
    return root / f"{_slug(table.name)}-{digest}"


def _safe_file_stem(source_id: str) -> str:
    """Turn a source id such as "neutral/001_03" into a file name that keeps every dot.

    Ids made of letters, digits, "_", ".", "-" and single "/" map one to one. Any other id
    gets a hash suffix, because replacing its characters could give two ids the same name,
    and one crop would overwrite the other.
    """
    stem = source_id.replace("/", "__")
    if "__" in source_id or re.search(r"[^A-Za-z0-9_./-]", source_id):
        digest = hashlib.sha256(source_id.encode("utf-8", "surrogateescape")).hexdigest()[:8]
        stem = f"{re.sub(r'[^A-Za-z0-9_.-]', '_', stem)}-{digest}"
    return stem


# ---------------------------------------------------------------------------------------------
# Work done per photograph (in worker processes)

_worker_analyzer: FaceAnalyzer | None = None


def _init_worker(selection: str) -> None:
    import torch

    global _worker_analyzer
    # Each worker process uses one thread: the pool is the parallelism.
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    _worker_analyzer = FaceAnalyzer(selection=FaceSelection(selection))


def crop_face(rgb: np.ndarray, detection: FaceDetection, margin: float,
               crop_size: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
    """Cut the square face box, padded with the edge pixels where it leaves the image.

    Returns the crop at `crop_size` pixels, the landmarks in crop pixels and the box in
    image pixels. Uploaded photographs go through this too, so they match prepared sets.
    """
    x1, y1, x2, y2 = face_crop_box(detection, margin)
    height, width = rgb.shape[:2]
    pad_left, pad_top = max(0, -x1), max(0, -y1)
    pad_right, pad_bottom = max(0, x2 - width), max(0, y2 - height)
    region = rgb[max(0, y1):min(height, y2), max(0, x1):min(width, x2)]
    if pad_left or pad_top or pad_right or pad_bottom:
        region = cv2.copyMakeBorder(region, pad_top, pad_bottom, pad_left, pad_right, cv2.BORDER_REPLICATE)

    scale = crop_size / (x2 - x1)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    crop = cv2.resize(region, (crop_size, crop_size), interpolation=interpolation)
    landmarks = (detection.landmarks - np.array([x1, y1], dtype=np.float32)) * scale
    return crop, landmarks.astype(np.float32), (x1, y1, x2, y2)


def _write_png(path: Path, rgb: np.ndarray, greyscale: bool) -> None:
    """Write a PNG atomically: a temporary file in the same folder, then a rename."""
    if greyscale:
        pixels = rgb[:, :, 0]
    else:
        pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    with atomic_path(path) as temporary:
        if not cv2.imwrite(str(temporary), pixels, PNG_PARAMS):
            raise OSError(f"could not write {path}; check free disk space and permissions")


def _fraction_outside(box: tuple[float, float, float, float], shape: tuple[int, ...]) -> float:
    """Return the fraction of the box area (x1, y1, x2, y2) that lies outside an image of this shape."""
    x1, y1, x2, y2 = box
    height, width = shape[:2]
    area = max(x2 - x1, 0.0) * max(y2 - y1, 0.0)
    if area == 0:
        return 0.0
    inside = max(min(x2, width) - max(x1, 0.0), 0.0) * max(min(y2, height) - max(y1, 0.0), 0.0)
    return 1.0 - inside / area


def _process_source(task: _SourceTask, settings: PrepareSettings, work_folder: Path) -> dict:
    """Prepare one photograph and return its record: manifest rows, face row, report rows."""
    record: dict = {"source_id": task.source_id, "rows": [], "face": None, "report": []}
    try:
        loaded = read_image(task.path)
    except ImageReadError as error:
        record["report"].append({"path": task.path, "stage": "read", "reason": error.describe()})
        return record

    try:
        detection = _worker_analyzer.analyze(loaded.rgb)
    except NoFaceError as error:
        record["report"].append({"path": task.path, "stage": "detect", "reason": str(error)})
        return record
    except (ValueError, RuntimeError, cv2.error) as error:
        logger.exception("face analysis failed on %s", task.path)
        record["report"].append({"path": task.path, "stage": "detect",
                                 "reason": f"face analysis failed ({error}); check the photograph"})
        return record

    try:
        _add_crops(record, task, loaded, detection, settings, work_folder)
    except (ValueError, RuntimeError, cv2.error) as error:
        logger.exception("masking or cropping failed on %s", task.path)
        record["rows"] = []
        record["face"] = None
        record["report"].append({"path": task.path, "stage": "mask",
                                 "reason": f"masking or cropping failed ({error}); check the photograph"})
    return record


def _add_crops(record: dict, task: _SourceTask, loaded: LoadedImage, detection: FaceDetection,
               settings: PrepareSettings, work_folder: Path) -> None:
    """Crop the face, draw each mask type, write the PNGs and fill the record's rows."""
    if detection.face_count > 1:
        record["report"].append({
            "path": task.path, "stage": "detect",
            "reason": f"{detection.face_count} faces found; kept one ({detection.selection})",
        })
    outside = _fraction_outside(detection.box, loaded.rgb.shape)
    if outside > FACE_OUTSIDE_FRACTION_FLAGGED:
        record["report"].append({
            "path": task.path, "stage": "detect",
            "reason": f"{outside:.0%} of the face box lies outside the photograph; the crop repeats the edge "
                      "pixels there, so check it or leave the photograph out",
        })

    crop, landmarks, crop_box = crop_face(loaded.rgb, detection, settings.margin, settings.crop_size)
    record["face"] = {
        "source_id": task.source_id,
        "path": task.path,
        "box": json.dumps([round(float(v), 1) for v in detection.box]),
        "probability": round(float(detection.probability), 5),
        "face_count": detection.face_count,
        "selection": detection.selection,
        "crop_box": json.dumps([int(v) for v in crop_box]),
        "landmarks": json.dumps(np.round(landmarks, 1).tolist()),
    }

    stem = _safe_file_stem(task.source_id)
    # The seed varies per photograph so colours and patterns differ across the set, yet the
    # whole set is reproducible from settings.seed.
    photo_seed = int(hashlib.sha256(f"{settings.seed}:{task.source_id}".encode()).hexdigest()[:8], 16)
    for mask_type in settings.mask_types:
        relative = f"images/{mask_type.value}/{stem}.png"
        if mask_type is MaskType.NONE:
            pixels, polygon = crop, []
        else:
            style = MaskStyle(coverage=settings.coverage, seed=photo_seed)
            masked = render_mask(crop, landmarks, mask_type, style, greyscale=loaded.greyscale)
            pixels, polygon = masked.image, np.round(masked.polygon, 1).tolist()
        _write_png(work_folder / relative, pixels, loaded.greyscale)
        record["rows"].append({
            "image": relative,
            "source_id": task.source_id,
            "subject": task.subject,
            "label": task.label,
            "mask_type": mask_type.value,
            "polygon": json.dumps(polygon),
            "greyscale": bool(loaded.greyscale),
            "coverage": settings.coverage if mask_type is not MaskType.NONE else 0.0,
            **task.metadata,
        })


def _process_chunk(tasks: Sequence[_SourceTask], settings: PrepareSettings, work_folder: Path) -> list[dict]:
    records = []
    for task in tasks:
        record = _process_source(task, settings, work_folder)
        write_json_atomic(work_folder / "records" / f"{_safe_file_stem(task.source_id)}.json", record, indent=1)
        records.append(record)
    return records


# ---------------------------------------------------------------------------------------------
# The pipeline


def _tasks_from_table(table: DatasetTable) -> list[_SourceTask]:
    base = {"path", "subject", "label", "source_id"}
    metadata_columns = [c for c in table.frame.columns if c not in base]
    tasks = []
    for row in table.frame.itertuples(index=False):
        values = row._asdict()
        subject = values["subject"]
        tasks.append(_SourceTask(
            path=str(values["path"]),
            source_id=str(values["source_id"]),
            subject=None if pd.isna(subject) else str(subject),
            label=str(values["label"]),
            metadata={c: (None if pd.isna(values[c]) else values[c]) for c in metadata_columns},
        ))
    return tasks


_RECORD_KEYS = frozenset({"source_id", "rows", "face", "report"})


def _load_finished_records(work_folder: Path) -> dict[str, dict]:
    finished = {}
    for path in (work_folder / "records").glob("*.json"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            record = None
        if not isinstance(record, dict) or not _RECORD_KEYS <= set(record):
            logger.warning("ignoring unreadable record %s; that photograph is prepared again", path)
            continue
        finished[record["source_id"]] = record
    return finished


def _chunks(tasks: list[_SourceTask], size: int) -> list[list[_SourceTask]]:
    return [tasks[start:start + size] for start in range(0, len(tasks), size)]


def _pool_context() -> multiprocessing.context.BaseContext:
    """Choose how to start worker processes.

    Forking a process whose other threads may hold locks (a Streamlit server) can hang the
    child. Such a process therefore gets workers from a fresh forkserver, which costs a new
    import of this module (about 3 to 5 s with PyTorch). A single-threaded caller such as the
    command line forks directly, and the workers load their models after the fork.
    """
    if os.name == "posix" and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        return context
    return multiprocessing.get_context("spawn")


def _run_tasks(tasks: list[_SourceTask], settings: PrepareSettings, work_folder: Path,
               progress: ProgressCallback | None, done_before: int, total: int) -> list[dict]:
    """Process tasks in a pool of `settings.workers` processes, or inline for one worker."""
    records: list[dict] = []
    done = done_before

    if settings.workers == 1 or len(tasks) < 4:
        import torch

        # _init_worker sets one thread for this process; the caller's setting comes back after.
        threads = torch.get_num_threads()
        try:
            _init_worker(settings.selection.value)
            for chunk in _chunks(tasks, 8):
                records.extend(_process_chunk(chunk, settings, work_folder))
                done += len(chunk)
                if progress:
                    progress(done, total)
        finally:
            torch.set_num_threads(threads)
        return records

    # Small chunks keep the progress bar moving and the two workers evenly loaded.
    chunk_size = max(2, min(16, len(tasks) // (settings.workers * 8) or 2))
    context = _pool_context()
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=settings.workers, mp_context=context,
        initializer=_init_worker, initargs=(settings.selection.value,),
    ) as pool:
        futures = {pool.submit(_process_chunk, chunk, settings, work_folder): len(chunk)
                   for chunk in _chunks(tasks, chunk_size)}
        for future in concurrent.futures.as_completed(futures):
            records.extend(future.result())
            done += futures[future]
            if progress:
                progress(done, total)
    return records


def _tables_from_records(records: list[dict], table: DatasetTable) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    rows = [row for record in records for row in record["rows"]]
    faces = [record["face"] for record in records if record["face"] is not None]
    report = [{"path": issue.path, "stage": "load", "reason": issue.reason} for issue in table.issues]
    report += [entry for record in records for entry in record["report"]]

    manifest = pd.DataFrame(rows)
    if manifest.empty:
        manifest = pd.DataFrame(columns=BASE_COLUMNS)
    else:
        manifest = manifest.sort_values(["source_id", "mask_type"], kind="stable").reset_index(drop=True)
    faces_frame = pd.DataFrame(faces)
    if not faces_frame.empty:
        faces_frame = faces_frame.sort_values("source_id").reset_index(drop=True)
    report_frame = pd.DataFrame(report, columns=["path", "stage", "reason"])
    return manifest, faces_frame, report_frame


def prepare_dataset(table: DatasetTable, settings: PrepareSettings = PrepareSettings(),
                    output_root: Path | None = None,
                    progress: ProgressCallback | None = None) -> PreparedSet:
    """Detect, mask and crop every photograph of `table`, or return the cached result.

    `progress(done, total)` is called as photographs finish. Files that cannot be read and
    photographs without a face are listed in the report and never stop the run.
    """
    folder = prepared_folder(table, settings, output_root)
    folder.parent.mkdir(parents=True, exist_ok=True)
    # One preparation per folder at a time: a second process with the same data and settings
    # (the CLI beside a dashboard job) waits here and then finds the finished cache.
    with open(folder.with_name(folder.name + ".lock"), "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        return _prepare_locked(table, settings, folder, progress)


def _prepare_locked(table: DatasetTable, settings: PrepareSettings, folder: Path,
                    progress: ProgressCallback | None) -> PreparedSet:
    if (folder / MANIFEST_FILE).is_file():
        logger.info("prepared set for %s found in cache at %s", table.name, folder)
        if progress:
            progress(len(table.frame), len(table.frame))
        return load_prepared(folder)

    work_folder = folder.with_name(folder.name + PARTIAL_SUFFIX)
    for mask_type in settings.mask_types:
        (work_folder / "images" / mask_type.value).mkdir(parents=True, exist_ok=True)
    (work_folder / "records").mkdir(exist_ok=True)

    tasks = _tasks_from_table(table)
    finished = _load_finished_records(work_folder)
    pending = [task for task in tasks if task.source_id not in finished]
    if finished:
        logger.info("continuing %s: %d of %d photographs already prepared", work_folder, len(finished), len(tasks))
    logger.info("preparing %d photographs of %s with %d workers", len(pending), table.name, settings.workers)

    if progress:
        progress(len(tasks) - len(pending), len(tasks))
    try:
        new_records = _run_tasks(pending, settings, work_folder, progress, len(tasks) - len(pending), len(tasks))
    except OSError as error:
        kept = sum(1 for path in (work_folder / "records").glob("*.json") if path.is_file())
        raise OSError(
            f"{error}. The {kept} of {len(tasks)} photographs prepared so far are kept in "
            f"{work_folder}; fix the cause (free disk space, write permission) and run the preparation "
            "again to continue from there",
        ) from error

    current_ids = {task.source_id for task in tasks}
    records = [r for r in finished.values() if r["source_id"] in current_ids] + new_records
    manifest, faces, report = _tables_from_records(records, table)
    write_csv_atomic(manifest, work_folder / MANIFEST_FILE)
    write_csv_atomic(faces, work_folder / FACES_FILE)
    write_csv_atomic(report, work_folder / REPORT_FILE)
    write_json_atomic(work_folder / SETTINGS_FILE, {
        "dataset": table.name,
        "dataset_kind": table.kind.value,
        "dataset_root": str(table.root),
        "dataset_fingerprint": table.fingerprint(),
        "label_map": table.label_map,
        "has_subjects": table.has_subjects,
        "pipeline_version": PIPELINE_VERSION,
        "settings": settings.to_dict(),
        "source_images": len(tasks),
        "prepared_images": int(len(manifest)),
        "skipped_sources": int(len(tasks) - len(faces)),
    })

    shutil.rmtree(work_folder / "records", ignore_errors=True)
    if folder.exists():
        # Another process finished the same preparation first; its result is identical.
        shutil.rmtree(work_folder, ignore_errors=True)
    else:
        os.replace(work_folder, folder)
    logger.info("prepared %d crops from %d photographs into %s (%d report entries)",
                len(manifest), len(tasks), folder, len(report))
    return load_prepared(folder)


def load_prepared(folder: Path) -> PreparedSet:
    """Read a prepared set from its folder."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{folder} is not a prepared set: {MANIFEST_FILE} is missing; "
                                "run the preparation (fer-studio prepare) first")
    try:
        info = json.loads((folder / SETTINGS_FILE).read_text())
        manifest = pd.read_csv(manifest_path, dtype={"subject": "string", "source_id": "string"},
                               keep_default_na=False, na_values=[""])
        faces_path = folder / FACES_FILE
        faces = pd.read_csv(faces_path) if faces_path.stat().st_size > 1 else pd.DataFrame()
        report = pd.read_csv(folder / REPORT_FILE)
        settings = PrepareSettings.from_dict(info["settings"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{folder} is a damaged prepared set ({type(error).__name__}: {error}); delete the "
                         "folder and run the preparation again, which rebuilds it from the data set") from error
    return PreparedSet(
        folder=folder,
        manifest=manifest,
        report=report,
        faces=faces,
        settings=settings,
        dataset_name=info.get("dataset", ""),
        info=info,
    )


def list_prepared(output_root: Path | None = None) -> list[PreparedSet]:
    """Return every finished prepared set under the root, newest first; broken ones are logged."""
    root = Path(output_root) if output_root is not None else prepared_root()
    if not root.is_dir():
        return []
    found = []
    for folder in sorted(root.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True):
        if folder.name.endswith(PARTIAL_SUFFIX) or not (folder / MANIFEST_FILE).is_file():
            continue
        try:
            found.append(load_prepared(folder))
        except (OSError, ValueError, KeyError) as error:
            logger.warning("skipping unreadable prepared set %s: %s", folder, error)
    return found


def preview_masks(rgb: np.ndarray, analyzer: FaceAnalyzer, style: MaskStyle = MaskStyle(),
                  greyscale: bool | None = None,
                  mask_types: Sequence[MaskType] = MaskType.drawn()) -> tuple[FaceDetection, dict]:
    """Detect the face in one image and draw each mask type on the full image.

    Returns the detection and a dict from MaskType to `MaskedFace`. Raises NoFaceError when
    the image has no face.
    """
    detection = analyzer.analyze(rgb)
    masked = {mask_type: render_mask(rgb, detection.landmarks, mask_type, style, greyscale=greyscale)
              for mask_type in mask_types}
    return detection, masked
