"""Fine-tuning on a prepared set, fold by fold, with checkpoints, resume and a progress event file.

`train(settings, run_dir)` runs every fold of the settings' protocol (see `fer_core.splits`).
Each epoch ends with an atomic checkpoint in `run_dir/checkpoints/<fold>.pt`, so calling
`train` again on the same run folder skips finished folds and continues a partial fold from
its last finished epoch. Progress goes to `run_dir/events.jsonl`, one JSON object per line,
which another process (the dashboard) can follow with `read_events`.

Training uses SGD with momentum, cross-entropy loss, and the paper's augmentation (random
rotation and translation, Farhadipour & Taghipour, arXiv:2312.01335). On CUDA it runs with
automatic mixed precision (float16 autocast and a gradient scaler); on the CPU in float32.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import hashlib
import json
import logging
import math
import os
import random
import re
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from fer_core import runs
from fer_core.evaluation import evaluate_run
from fer_core.files import atomic_path, write_text_atomic
from fer_core.constants import (
    AUGMENT_ROTATION_DEGREES,
    AUGMENT_TRANSLATION_PIXELS,
    DEFAULT_EPOCHS,
    DEFAULT_LEARNING_RATE,
    Backbone,
    Emotion,
    MaskType,
    Protocol,
)
from fer_core.models import build_model, describe_device, find_weights_file, get_spec, pick_device
from fer_core.runs import MODELS_DIR, PREDICTIONS_FILE, SETTINGS_FILE, TRAINING_FILE
from fer_core.splits import (
    Fold,
    PiScheme,
    SplitSettings,
    check_real_number,
    check_whole_number,
    make_folds,
    parse_choice,
    read_manifest,
)

logger = logging.getLogger(__name__)

SGD_MOMENTUM = 0.9


class OptimizerKind(str, enum.Enum):
    """Optimizer for fine-tuning.

    SGD with momentum is the paper's setting. Adam helps when training from scratch, where SGD
    at the paper's learning rate of 0.001 can stay at chance level for many epochs.
    """

    SGD = "sgd"
    ADAM = "adam"
EVENTS_FILE = "events.jsonl"
CHECKPOINTS_DIR = "checkpoints"
DEVICES = ("auto", "cpu", "cuda")
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
# Smallest input size accepted for any backbone; each backbone's own minimum
# (models.BackboneSpec.min_input_size) is checked as well.
MIN_INPUT_SIZE = 32

StopCallback = Callable[[], bool]


# ---------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class TrainSettings:
    """Everything that decides a training run; stored as the run's settings.json.

    `epochs=None` takes the protocol's default (25 PD, 60 PI); `input_size=None` the
    backbone's (224 px, 160 px for InceptionResnetV1). `pretrained=False` trains from
    scratch. `max_folds` runs only the first folds, for quick runs. `amp` applies on CUDA only.
    """

    prepared_dir: Path
    backbone: Backbone = Backbone.SQUEEZENET
    protocol: Protocol = Protocol.PD
    epochs: int | None = None
    learning_rate: float = DEFAULT_LEARNING_RATE
    batch_size: int = 32
    seed: int = 0
    device: str = "auto"
    train_mask_types: tuple[MaskType, ...] = MaskType.drawn()
    include_unmasked: bool = True
    pretrained: bool = True
    weights_dir: Path | None = None
    folds: int = 5
    pi_scheme: PiScheme = PiScheme.LOSO
    test_fraction: float = 0.2
    max_folds: int | None = None
    input_size: int | None = None
    augment: bool = True
    num_workers: int = 0
    amp: bool = True
    momentum: float = SGD_MOMENTUM
    optimizer: OptimizerKind = OptimizerKind.SGD

    def __post_init__(self) -> None:
        object.__setattr__(self, "optimizer", parse_choice(OptimizerKind, self.optimizer, "optimizer"))
        object.__setattr__(self, "prepared_dir", Path(self.prepared_dir))
        object.__setattr__(self, "backbone", get_spec(self.backbone).backbone)
        object.__setattr__(self, "protocol", parse_choice(Protocol, self.protocol, "protocol"))
        object.__setattr__(self, "pi_scheme", parse_choice(PiScheme, self.pi_scheme, "pi_scheme"))
        object.__setattr__(self, "train_mask_types", tuple(parse_choice(MaskType, m, "train_mask_types")
                                                           for m in self.train_mask_types))
        if self.weights_dir is not None:
            object.__setattr__(self, "weights_dir", Path(self.weights_dir))
        self._check_numbers()
        # The split settings check the mask types, folds and test fraction.
        self.split_settings()

    def _check_numbers(self) -> None:
        for name in ("batch_size", "seed", "folds", "num_workers"):
            check_whole_number(name, getattr(self, name))
        for name in ("epochs", "max_folds", "input_size"):
            check_whole_number(name, getattr(self, name), optional=True)
        for name in ("learning_rate", "test_fraction", "momentum"):
            check_real_number(name, getattr(self, name))
        if not isinstance(self.device, str):
            raise ValueError(f"device must be a string such as 'cpu' or 'cuda:0', got {self.device!r}")

        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"learning_rate must be a positive finite number, got {self.learning_rate}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be at least 2 (batch normalisation needs two images), "
                             f"got {self.batch_size}")
        if self.max_folds is not None and self.max_folds < 1:
            raise ValueError(f"max_folds must be at least 1 or None (all folds), got {self.max_folds}")
        if self.input_size is not None and self.input_size < MIN_INPUT_SIZE:
            raise ValueError(f"input_size must be at least {MIN_INPUT_SIZE} pixels or None "
                             f"(the backbone's), got {self.input_size}")
        spec = get_spec(self.backbone)
        if self.input_size is not None and self.input_size < spec.min_input_size:
            raise ValueError(f"input_size must be at least {spec.min_input_size} pixels for "
                             f"{spec.display_name}, got {self.input_size}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be 0 or more, got {self.num_workers}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if not DEVICE_PATTERN.fullmatch(self.device):
            raise ValueError(f"device must be one of {DEVICES} or cuda:N with a GPU number N, got {self.device!r}")

    @property
    def resolved_epochs(self) -> int:
        """Epochs per fold: the setting, or the protocol's default."""
        return self.epochs if self.epochs is not None else DEFAULT_EPOCHS[self.protocol]

    @property
    def resolved_input_size(self) -> int:
        """Input side length in pixels: the setting, or the backbone's."""
        return self.input_size if self.input_size is not None else get_spec(self.backbone).input_size

    def split_settings(self) -> SplitSettings:
        """Return the settings that decide the folds and the training mask types."""
        return SplitSettings(protocol=self.protocol, folds=self.folds, pi_scheme=self.pi_scheme,
                             test_fraction=self.test_fraction, seed=self.seed,
                             train_mask_types=self.train_mask_types, include_unmasked=self.include_unmasked)

    def to_dict(self) -> dict:
        """Return the settings as JSON-safe values."""
        values = dataclasses.asdict(self)
        values["prepared_dir"] = str(self.prepared_dir)
        values["weights_dir"] = str(self.weights_dir) if self.weights_dir is not None else None
        values["backbone"] = self.backbone.value
        values["protocol"] = self.protocol.value
        values["pi_scheme"] = self.pi_scheme.value
        values["train_mask_types"] = [m.value for m in self.train_mask_types]
        values["optimizer"] = self.optimizer.value
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "TrainSettings":
        """Build settings from `to_dict` output; unknown keys are logged and ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            logger.warning("ignoring unknown training settings %s", unknown)
        return cls(**{key: value for key, value in values.items() if key in known})


# ---------------------------------------------------------------------------------------------
# Data


class ManifestDataset(Dataset):
    """Face crops of a prepared set as normalised tensors with class indices.

    Each PNG is read as RGB (greyscale crops become three equal channels), resized to the
    input size, optionally augmented, and normalised with the backbone's mean and std.
    """

    def __init__(self, prepared_dir: Path, images: list[str], targets: list[int], input_size: int,
                 mean: tuple[float, float, float], std: tuple[float, float, float], augment: bool) -> None:
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.prepared_dir = Path(prepared_dir)
        self.images = list(images)
        self.targets = list(targets)
        self.transform = build_transform(input_size, mean, std, augment)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path = self.prepared_dir / self.images[index]
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
        except (OSError, UnidentifiedImageError) as error:
            raise OSError(f"cannot read prepared image {path} ({error}); prepare the data set again") from error
        return self.transform(rgb), self.targets[index]


def build_transform(input_size: int, mean: tuple[float, float, float], std: tuple[float, float, float],
                    augment: bool) -> v2.Compose:
    """Build the image pipeline: resize, optional random rotation and translation, normalise.

    Translation is up to AUGMENT_TRANSLATION_PIXELS pixels of the resized image;
    RandomAffine takes it as a fraction of the image side.
    """
    steps: list[nn.Module] = [v2.PILToTensor(), v2.Resize((input_size, input_size), antialias=True)]
    if augment:
        shift = AUGMENT_TRANSLATION_PIXELS / input_size
        steps.append(v2.RandomAffine(degrees=AUGMENT_ROTATION_DEGREES, translate=(shift, shift)))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]
    return v2.Compose(steps)


def class_names(manifest: pd.DataFrame) -> list[str]:
    """Return the labels present in the manifest, in `Emotion` order."""
    present = set(manifest["label"].astype(str))
    return [emotion.value for emotion in Emotion if emotion.value in present]


def drop_unreadable_images(manifest: pd.DataFrame, prepared_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    """Remove rows whose image is missing, truncated or corrupt; return the rows and the dropped paths.

    One damaged crop would otherwise stop training in the middle of a fold.
    """
    readable = []
    dropped = []
    for relative in manifest["image"].astype(str):
        path = Path(prepared_dir) / relative
        try:
            # verify() reads every chunk and checks its CRC without decoding the pixels, so it
            # catches truncated and damaged PNGs at about the cost of opening them.
            with Image.open(path) as image:
                image.verify()
            readable.append(True)
        except (OSError, SyntaxError, ValueError, UnidentifiedImageError):
            readable.append(False)
            dropped.append(relative)
    if dropped:
        logger.warning("%d of %d prepared images are missing or unreadable and are left out, e.g. %s",
                       len(dropped), len(manifest), dropped[:5])
    return manifest[np.array(readable, dtype=bool)].reset_index(drop=True), dropped


# ---------------------------------------------------------------------------------------------
# Events


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def append_event(run_dir: Path, event: str, **fields: object) -> dict:
    """Append one event as a JSON line to run_dir/events.jsonl and flush it; return the event."""
    record = {"event": event, "time": _now(), **fields}
    line = json.dumps(record, allow_nan=False, default=str)
    with open(Path(run_dir) / EVENTS_FILE, "a", encoding="utf-8") as stream:
        stream.write(line + "\n")
        stream.flush()
    return record


def read_events(run_dir: Path) -> list[dict]:
    """Read every complete event of a run; a half-written last line is skipped.

    Returns an empty list when the run has no events yet. A malformed line elsewhere is
    logged and skipped.
    """
    path = Path(run_dir) / EVENTS_FILE
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    events = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            is_last = number == len(lines)
            if not is_last:
                logger.warning("skipping malformed line %d of %s", number, path)
    return events


# ---------------------------------------------------------------------------------------------
# Checkpoints and files


def _atomic_torch_save(payload: object, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        torch.save(payload, temporary)


def _rng_state() -> dict:
    """Capture the Python, NumPy and torch random states as weights_only-loadable values."""
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
        "numpy_position": int(position),
        "numpy_has_gauss": int(has_gauss),
        "numpy_cached_gaussian": float(cached_gaussian),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng_state(state: dict) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_position"],
                         state["numpy_has_gauss"], state["numpy_cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def derive_seed(*entropy: int) -> int:
    """Return a 32-bit seed derived from the given integers (the run seed, fold, epoch)."""
    return int(np.random.SeedSequence(list(entropy)).generate_state(1)[0])


def seed_everything(*entropy: int) -> int:
    """Seed Python, NumPy and torch from the given integers; return the derived seed."""
    seed = derive_seed(*entropy)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return seed


def _fold_digest(manifest: pd.DataFrame, fold: Fold) -> str:
    """Return a short hash of the fold's test images, to detect a changed split on resume."""
    images = "\n".join(sorted(manifest["image"].iloc[fold.test_index].astype(str)))
    return hashlib.sha256(images.encode("utf-8")).hexdigest()[:16]


def load_checkpoint(path: Path) -> dict | None:
    """Load a fold checkpoint with weights_only=True, or return None when there is none."""
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------------------
# The run


class _Stopped(Exception):
    """Raised inside the loop when a stop was requested; caught by `train`."""


@dataclass
class _Run:
    """State shared by every fold of one `train` call."""

    settings: TrainSettings
    run_dir: Path
    manifest: pd.DataFrame
    folds: list[Fold]
    classes: list[str]
    device: torch.device
    should_stop: Callable[[], bool]
    started: float = field(default_factory=time.monotonic)
    epoch_seconds: list[float] = field(default_factory=list)
    epochs_left: int = 0

    @property
    def use_amp(self) -> bool:
        # NOTE: the CUDA path (float16 autocast, GradScaler, pinned memory) is not covered by the
        # test suite, which runs on the CPU.
        return self.settings.amp and self.device.type == "cuda"

    def checkpoint_path(self, fold: Fold) -> Path:
        return self.run_dir / CHECKPOINTS_DIR / f"{fold.name}.pt"

    def model_path(self, fold: Fold) -> Path:
        return self.run_dir / MODELS_DIR / f"{fold.name}.pt"

    def check_stop(self) -> None:
        if self.should_stop():
            raise _Stopped()


@contextlib.contextmanager
def _sigterm_flag() -> Iterator[threading.Event]:
    """Set the yielded flag on SIGTERM while the block runs (main thread only)."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handle(signum: int, frame: object) -> None:
        logger.warning("received SIGTERM; stopping after the current batch")
        flag.set()

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


def train(settings: TrainSettings, run_dir: Path, should_stop: StopCallback | None = None) -> dict:
    """Train every fold of the settings' protocol into `run_dir`, resuming what is already there.

    Stops cleanly after the current batch when `should_stop()` returns True or on SIGTERM,
    with status "cancelled"; calling `train` again continues. Returns a summary dict with
    `status` ("succeeded" or "cancelled"), `folds_completed`, `folds_total` and `accuracy`
    (None unless succeeded). Any error is recorded in events.jsonl and status.json, then
    raised; everything written before it is kept.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _check_settings_file(settings, run_dir)

    with _sigterm_flag() as sigterm:
        def stop_requested() -> bool:
            return sigterm.is_set() or (should_stop is not None and bool(should_stop()))

        runs.update_status(run_dir, state=runs.RunState.RUNNING.value, started_at=_now(), finished_at=None,
                           error=None, pid=os.getpid())
        run: _Run | None = None
        try:
            run = _start_run(settings, run_dir, stop_requested)
            for position, fold in enumerate(run.folds):
                _run_fold(run, position, fold)
            return _finish_run(run)
        except _Stopped:
            return _cancel_run(run_dir, run)
        except KeyboardInterrupt:
            _cancel_run(run_dir, run)
            raise
        except Exception as error:
            _record_failure(run_dir, error)
            raise


def _check_settings_file(settings: TrainSettings, run_dir: Path) -> None:
    """Write settings.json, or check that an existing one matches the settings."""
    path = run_dir / SETTINGS_FILE
    if not path.is_file():
        write_text_atomic(path, json.dumps(settings.to_dict(), indent=2))
        return
    stored = TrainSettings.from_dict(json.loads(path.read_text(encoding="utf-8")))
    if stored.to_dict() != settings.to_dict():
        changed = sorted(key for key, value in settings.to_dict().items() if stored.to_dict().get(key) != value)
        raise ValueError(f"{run_dir} was started with other settings (differences: {changed}); "
                         "resume it with its own settings.json or start a new run")


def _start_run(settings: TrainSettings, run_dir: Path, should_stop: Callable[[], bool]) -> _Run:
    """Read the data, make the folds, check them against an earlier start, and log run_start."""
    device = pick_device(settings.device)
    manifest = read_manifest(settings.prepared_dir)
    manifest, dropped = drop_unreadable_images(manifest, settings.prepared_dir)
    classes = class_names(manifest)
    if len(classes) < 2:
        raise ValueError(f"{settings.prepared_dir} has only the label(s) {classes}; training needs at least two")

    dataset_name = _dataset_name(settings.prepared_dir)
    folds = make_folds(manifest, settings.split_settings(), dataset_name=dataset_name)
    if settings.max_folds is not None:
        folds = folds[: settings.max_folds]
    _check_training_record(run_dir, settings, manifest, folds, classes)

    run = _Run(settings=settings, run_dir=run_dir, manifest=manifest, folds=folds, classes=classes,
               device=device, should_stop=should_stop)
    run.epochs_left = settings.resolved_epochs * len(folds)
    spec = get_spec(settings.backbone)
    weights = find_weights_file(spec, settings.weights_dir) if settings.pretrained else None
    append_event(run_dir, "run_start", backbone=settings.backbone.value, protocol=settings.protocol.value,
                 dataset=dataset_name, classes=classes, folds=[f.name for f in folds],
                 epochs=settings.resolved_epochs, device=describe_device(device), amp=run.use_amp,
                 images=len(manifest), dropped_images=dropped[:20], dropped_count=len(dropped),
                 pretrained=settings.pretrained, pretrained_weights=str(weights) if weights else None)
    logger.info("training %s (%s) on %s: %d fold(s) x %d epochs on %s", settings.backbone.value,
                settings.protocol.value, dataset_name, len(folds), settings.resolved_epochs, describe_device(device))
    return run


def _dataset_name(prepared_dir: Path) -> str:
    """Return the data set's name from the prepared set's settings.json, else the folder name."""
    path = Path(prepared_dir) / SETTINGS_FILE
    try:
        name = json.loads(path.read_text(encoding="utf-8")).get("dataset")
    except (OSError, json.JSONDecodeError, AttributeError):
        name = None
    return str(name) if name else Path(prepared_dir).name


def _check_training_record(run_dir: Path, settings: TrainSettings, manifest: pd.DataFrame,
                           folds: list[Fold], classes: list[str]) -> None:
    """Write training.json on the first start; on a resume, refuse a changed data set or split."""
    spec = get_spec(settings.backbone)
    record = {
        "backbone": settings.backbone.value,
        "classes": classes,
        "input_size": settings.resolved_input_size,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "folds": [{"name": fold.name, "train_images": len(fold.train_index), "test_images": len(fold.test_index),
                   "test_subjects": list(fold.test_subjects), "test_digest": _fold_digest(manifest, fold)}
                  for fold in folds],
    }
    path = run_dir / TRAINING_FILE
    if path.is_file():
        earlier = json.loads(path.read_text(encoding="utf-8"))
        if earlier != record:
            raise ValueError(f"the prepared set {settings.prepared_dir} or its split changed since {run_dir} "
                             "started (classes or fold contents differ); start a new run")
        return
    write_text_atomic(path, json.dumps(record, indent=2))


# ---------------------------------------------------------------------------------------------
# One fold


def _run_fold(run: _Run, position: int, fold: Fold) -> None:
    """Train one fold from scratch or from its checkpoint, then write its predictions and model."""
    epochs = run.settings.resolved_epochs
    checkpoint = load_checkpoint(run.checkpoint_path(fold))
    if checkpoint is not None and checkpoint.get("completed") and _fold_has_outputs(run, fold):
        logger.info("fold %s already finished; keeping its predictions", fold.name)
        run.epochs_left -= epochs
        return

    if checkpoint is not None and "model" not in checkpoint:
        logger.warning("fold %s was marked finished but its outputs are missing; training it again", fold.name)
        checkpoint = None

    seed_everything(run.settings.seed, position)
    # A resumed fold takes every weight from its checkpoint, so pretrained files are not read again.
    pretrained = run.settings.pretrained and checkpoint is None
    model = build_model(run.settings.backbone, len(run.classes), pretrained=pretrained,
                        weights_dir=run.settings.weights_dir).to(run.device)
    if run.settings.optimizer is OptimizerKind.ADAM:
        optimizer = torch.optim.Adam(model.parameters(), lr=run.settings.learning_rate)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=run.settings.learning_rate,
                                    momentum=run.settings.momentum)
    scaler = torch.amp.GradScaler(run.device.type, enabled=run.use_amp)
    history: list[dict] = []
    start_epoch = 0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if checkpoint["scaler"]:
            scaler.load_state_dict(checkpoint["scaler"])
        _restore_rng_state(checkpoint["rng"])
        history = list(checkpoint["history"])
        start_epoch = int(checkpoint["epoch"])
        logger.info("resuming fold %s after epoch %d of %d", fold.name, start_epoch, epochs)
    run.epochs_left -= start_epoch

    train_loader, test_loader = _loaders(run, fold)
    append_event(run.run_dir, "fold_start", fold=fold.name, position=position + 1, folds=len(run.folds),
                 train_images=len(fold.train_index), test_images=len(fold.test_index),
                 test_subjects=list(fold.test_subjects), resumed_from_epoch=start_epoch)

    # The fold's predictions come from the last epoch's weights. Test results of earlier epochs
    # are only reported, never used to pick a model, so the test side stays unseen.
    probabilities = None
    for epoch in range(start_epoch, epochs):
        probabilities = _run_epoch(run, position, fold, epoch, model, optimizer, scaler, train_loader,
                                   test_loader, history)
    if probabilities is None:
        # Every epoch had finished before this call, but the fold's outputs had not been written.
        _, _, probabilities = evaluate_model(model, test_loader, run.device, run.use_amp)

    _write_fold_outputs(run, fold, model, probabilities, history)


def _fold_has_outputs(run: _Run, fold: Fold) -> bool:
    if not run.model_path(fold).is_file():
        return False
    predictions_path = run.run_dir / PREDICTIONS_FILE
    if not predictions_path.is_file():
        return False
    folds_written = pd.read_csv(predictions_path, usecols=["fold"], dtype={"fold": "string"})["fold"]
    return bool((folds_written == fold.name).any())


def _loaders(run: _Run, fold: Fold) -> tuple[DataLoader, DataLoader]:
    settings = run.settings
    spec = get_spec(settings.backbone)
    class_index = {name: i for i, name in enumerate(run.classes)}

    def dataset(index: np.ndarray, augment: bool) -> ManifestDataset:
        rows = run.manifest.iloc[index]
        return ManifestDataset(settings.prepared_dir, rows["image"].astype(str).tolist(),
                               [class_index[label] for label in rows["label"].astype(str)],
                               settings.resolved_input_size, spec.mean, spec.std, augment)

    if len(fold.train_index) < 2:
        raise ValueError(f"fold {fold.name} has {len(fold.train_index)} training image(s); at least 2 are needed")
    # InceptionResnetV1's BatchNorm1d fails on a training batch of one image, so a last batch
    # that would hold a single image is dropped.
    drop_last = len(fold.train_index) % settings.batch_size == 1
    pin = run.device.type == "cuda"
    train_loader = DataLoader(dataset(fold.train_index, settings.augment), batch_size=settings.batch_size,
                              shuffle=True, drop_last=drop_last, num_workers=settings.num_workers,
                              pin_memory=pin, generator=torch.Generator(), worker_init_fn=_ignore_sigterm)
    test_loader = DataLoader(dataset(fold.test_index, False), batch_size=settings.batch_size, shuffle=False,
                             num_workers=settings.num_workers, pin_memory=pin, worker_init_fn=_ignore_sigterm)
    return train_loader, test_loader


def _ignore_sigterm(worker_id: int) -> None:
    """Let data loader workers outlive a SIGTERM to the process group; the main process stops them."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _run_epoch(run: _Run, position: int, fold: Fold, epoch: int, model: nn.Module,
               optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, train_loader: DataLoader,
               test_loader: DataLoader, history: list[dict]) -> np.ndarray:
    """Train one epoch, evaluate on the test side, checkpoint, and log the epoch event."""
    epochs = run.settings.resolved_epochs
    run.check_stop()
    # The shuffling order depends only on (seed, fold, epoch), so a resumed fold gets the same order.
    train_loader.generator.manual_seed(derive_seed(run.settings.seed, position, epoch))

    epoch_start = time.monotonic()
    train_loss, train_accuracy, images = _train_one_epoch(run, model, optimizer, scaler, train_loader)
    train_seconds = time.monotonic() - epoch_start
    test_loss, test_accuracy, probabilities = evaluate_model(model, test_loader, run.device, run.use_amp,
                                                             should_stop=run.check_stop)
    run.epoch_seconds.append(time.monotonic() - epoch_start)
    run.epochs_left -= 1

    record = {"epoch": epoch + 1, "train_loss": train_loss, "train_accuracy": train_accuracy,
              "test_loss": test_loss, "test_accuracy": test_accuracy}
    history.append(record)
    _atomic_torch_save({"fold": fold.name, "epoch": epoch + 1, "completed": False,
                        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scaler": scaler.state_dict(), "rng": _rng_state(), "history": history},
                       run.checkpoint_path(fold))

    eta = float(np.mean(run.epoch_seconds)) * run.epochs_left
    append_event(run.run_dir, "epoch", fold=fold.name, epochs=epochs, **record,
                 images_per_second=images / train_seconds if train_seconds > 0 else None,
                 elapsed_seconds=time.monotonic() - run.started, eta_seconds=eta)
    runs.update_status(run.run_dir, fold=fold.name, fold_position=position + 1, folds_total=len(run.folds),
                       epoch=epoch + 1, epochs=epochs)
    logger.info("fold %s epoch %d/%d: train loss %.4f acc %.3f, test loss %.4f acc %.3f", fold.name, epoch + 1,
                epochs, train_loss, train_accuracy, test_loss, test_accuracy)
    return probabilities


def _train_one_epoch(run: _Run, model: nn.Module, optimizer: torch.optim.Optimizer,
                     scaler: torch.amp.GradScaler, loader: DataLoader) -> tuple[float, float, int]:
    """Return the mean training loss, the training accuracy and the number of images seen."""
    model.train()
    loss_sum = 0.0
    correct = 0
    seen = 0
    for inputs, targets in loader:
        inputs = inputs.to(run.device, non_blocking=True)
        targets = targets.to(run.device, non_blocking=True)

        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=run.device.type, dtype=torch.float16, enabled=run.use_amp):
            logits = model(inputs)
            loss = nn.functional.cross_entropy(logits, targets)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

        loss_sum += float(loss.detach()) * len(targets)
        correct += int((logits.detach().argmax(dim=1) == targets).sum())
        seen += len(targets)
        run.check_stop()
    if seen == 0:
        raise ValueError("the training loader produced no batch; lower batch_size or add training images")
    return loss_sum / seen, correct / seen, seen


@torch.inference_mode()
def evaluate_model(model: nn.Module, loader: DataLoader, device: torch.device, amp: bool = False,
                   should_stop: Callable[[], None] | None = None) -> tuple[float, float, np.ndarray]:
    """Return the mean loss, the accuracy and the class probabilities (rows in loader order).

    `should_stop` is called after each batch and may raise to abandon the evaluation.
    """
    model.eval()
    loss_sum = 0.0
    correct = 0
    seen = 0
    probabilities = []
    for inputs, targets in loader:
        inputs = inputs.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
            logits = model(inputs)
        logits = logits.float()
        loss_sum += float(nn.functional.cross_entropy(logits, targets, reduction="sum"))
        correct += int((logits.argmax(dim=1) == targets).sum())
        seen += len(targets)
        probabilities.append(torch.softmax(logits, dim=1).cpu().numpy())
        if should_stop is not None:
            should_stop()
    if seen == 0:
        raise ValueError("the test loader produced no batch; the fold has no test images")
    return loss_sum / seen, correct / seen, np.concatenate(probabilities)


def _write_fold_outputs(run: _Run, fold: Fold, model: nn.Module, probabilities: np.ndarray,
                        history: list[dict]) -> None:
    """Save the fold's weights and predictions, then mark its checkpoint finished."""
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    _atomic_torch_save(state, run.model_path(fold))

    rows = run.manifest.iloc[fold.test_index]
    predictions = pd.DataFrame({
        "image": rows["image"].astype(str).to_numpy(),
        "source_id": rows["source_id"].astype(str).to_numpy(),
        "subject": rows["subject"].to_numpy(),
        "label": rows["label"].astype(str).to_numpy(),
        "mask_type": rows["mask_type"].astype(str).to_numpy(),
        "fold": fold.name,
        "predicted": [run.classes[i] for i in probabilities.argmax(axis=1)],
    })
    for i, name in enumerate(run.classes):
        predictions[f"prob_{name}"] = probabilities[:, i]
    _replace_fold_predictions(run.run_dir / PREDICTIONS_FILE, fold.name, predictions)

    _atomic_torch_save({"fold": fold.name, "epoch": run.settings.resolved_epochs, "completed": True,
                        "history": history}, run.checkpoint_path(fold))
    accuracy = float((predictions["predicted"] == predictions["label"]).mean())
    append_event(run.run_dir, "fold_end", fold=fold.name, test_images=len(predictions), test_accuracy=accuracy)
    logger.info("fold %s finished: test accuracy %.4f on %d images", fold.name, accuracy, len(predictions))
    # Metrics over the folds finished so far, so a long PI run shows results while it trains
    # and a cancelled or failed run keeps them.
    evaluate_run(run.run_dir)


def _replace_fold_predictions(path: Path, fold_name: str, predictions: pd.DataFrame) -> None:
    """Rewrite predictions.csv atomically with this fold's rows replacing any earlier ones."""
    if path.is_file():
        earlier = pd.read_csv(path, dtype={"fold": "string", "subject": "string", "source_id": "string"},
                              keep_default_na=False, na_values=[""])
        earlier = earlier[earlier["fold"] != fold_name]
        predictions = pd.concat([earlier, predictions], ignore_index=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    predictions.to_csv(temporary, index=False)
    os.replace(temporary, path)


# ---------------------------------------------------------------------------------------------
# Run endings


def _finish_run(run: _Run) -> dict:
    metrics = evaluate_run(run.run_dir)
    accuracy = metrics.get("accuracy")
    append_event(run.run_dir, "run_end", status=runs.RunState.SUCCEEDED.value, accuracy=accuracy,
                 elapsed_seconds=time.monotonic() - run.started)
    runs.update_status(run.run_dir, state=runs.RunState.SUCCEEDED.value, finished_at=_now(), accuracy=accuracy)
    logger.info("run %s finished: accuracy %s", run.run_dir.name, accuracy)
    return {"status": runs.RunState.SUCCEEDED.value, "folds_completed": [f.name for f in run.folds],
            "folds_total": len(run.folds), "accuracy": accuracy}


def _completed_folds(run_dir: Path) -> list[str]:
    path = run_dir / PREDICTIONS_FILE
    if not path.is_file():
        return []
    folds = pd.read_csv(path, usecols=["fold"], dtype={"fold": "string"})["fold"]
    return list(dict.fromkeys(folds.astype(str)))


def _cancel_run(run_dir: Path, run: _Run | None) -> dict:
    completed = _completed_folds(run_dir)
    append_event(run_dir, "run_end", status=runs.RunState.CANCELLED.value, folds_completed=completed)
    runs.update_status(run_dir, state=runs.RunState.CANCELLED.value, finished_at=_now())
    logger.info("run %s cancelled; %d fold(s) finished and kept", run_dir.name, len(completed))
    return {"status": runs.RunState.CANCELLED.value, "folds_completed": completed,
            "folds_total": len(run.folds) if run is not None else None, "accuracy": None}


def _record_failure(run_dir: Path, error: BaseException) -> None:
    message = f"{type(error).__name__}: {error}"
    logger.error("run %s failed: %s", run_dir.name, message)
    try:
        append_event(run_dir, "error", message=message, traceback=traceback.format_exc())
        runs.update_status(run_dir, state=runs.RunState.FAILED.value, finished_at=_now(), error=message)
    except OSError as write_error:
        logger.error("could not record the failure of %s: %s", run_dir, write_error)
