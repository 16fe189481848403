"""The training form's logic: turn the user's choices into run settings, check them, launch jobs.

One `TrainChoice` can ask for several backbones and protocols; each combination becomes one
run. `launch_problems` repeats the checks that training would make at its start (device,
folds, subject ids) so the user sees the reason before anything is queued.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fer_core.constants import Backbone, MaskType, Protocol
from fer_core.models import find_weights_file, get_spec, pick_device
from fer_core.splits import PiScheme, SplitSettings, make_folds
from fer_core.training import TrainSettings

logger = logging.getLogger(__name__)

PROTOCOL_TITLES = {
    Protocol.PD: "Person-dependent (PD): split by photograph",
    Protocol.PI: "Person-independent (PI): split by person",
    Protocol.LEAKY: "Leaky (for comparison): split after masking",
}


@dataclass(frozen=True)
class TrainChoice:
    """Choices made on the Train page; each backbone and protocol pair becomes one run."""

    prepared_dir: Path
    dataset_name: str
    backbones: tuple[Backbone, ...]
    protocols: tuple[Protocol, ...]
    epochs: int | None = None
    learning_rate: float = 0.001
    batch_size: int = 32
    seed: int = 0
    device: str = "auto"
    train_mask_types: tuple[MaskType, ...] = MaskType.drawn()
    include_unmasked: bool = True
    pretrained: bool = True
    folds: int = 5
    pi_scheme: PiScheme = PiScheme.LOSO
    max_folds: int | None = None


def build_settings(choice: TrainChoice) -> list[TrainSettings]:
    """Return one TrainSettings per backbone and protocol; raise ValueError on invalid values."""
    if not choice.backbones:
        raise ValueError("choose at least one backbone")
    if not choice.protocols:
        raise ValueError("choose at least one protocol")
    return [
        TrainSettings(
            prepared_dir=choice.prepared_dir, backbone=backbone, protocol=protocol, epochs=choice.epochs,
            learning_rate=choice.learning_rate, batch_size=choice.batch_size, seed=choice.seed,
            device=choice.device, train_mask_types=choice.train_mask_types,
            include_unmasked=choice.include_unmasked, pretrained=choice.pretrained, folds=choice.folds,
            pi_scheme=choice.pi_scheme, max_folds=choice.max_folds,
        )
        for backbone, protocol in itertools.product(choice.backbones, choice.protocols)
    ]


def run_title(settings: TrainSettings) -> str:
    """Return a short name of a run for messages, such as "ResNet50, PI"."""
    return f"{get_spec(settings.backbone).display_name}, {settings.protocol.value.upper()}"


def device_problem(device: str) -> str | None:
    """Return why the device cannot be used here (CUDA without a GPU), or None."""
    try:
        pick_device(device)
    except (ValueError, RuntimeError) as error:
        return str(error)
    return None


def split_problem(manifest: pd.DataFrame, split: SplitSettings, dataset_name: str) -> str | None:
    """Return why the folds cannot be made, or None.

    Makes the folds exactly as training will, which rejects person-independent runs on data
    sets without subject ids and fold counts larger than the number of groups.
    """
    try:
        make_folds(manifest, split, dataset_name=dataset_name)
    except ValueError as error:
        return str(error)
    return None


def launch_problems(settings: TrainSettings, manifest: pd.DataFrame, dataset_name: str) -> list[str]:
    """Return the reasons this run cannot start, each prefixed with the run's title (empty when it can)."""
    problems = [device_problem(settings.device), split_problem(manifest, settings.split_settings(), dataset_name)]
    return [f"{run_title(settings)}: {problem}" for problem in problems if problem]


def missing_weights(settings: TrainSettings) -> str | None:
    """Return a warning when pretrained weights are requested but not on disk, else None.

    Training then tries to download them, which fails on machines without internet.
    """
    if not settings.pretrained:
        return None
    spec = get_spec(settings.backbone)
    if find_weights_file(spec, settings.weights_dir) is not None:
        return None
    return (f"Pretrained weights for {spec.display_name} ({spec.weights_file}) are not on this machine. "
            f"Training downloads them from {spec.weights_url}; without internet the run fails, so copy the "
            "file into the torch cache or train from scratch.")


def needs_gpu(settings: TrainSettings) -> bool:
    """Return True when the run's device resolves to CUDA."""
    return pick_device(settings.device).type == "cuda"


def submit_runs(settings_list: list[TrainSettings], runs_root: Path, jobs_root: Path) -> list[tuple[Path, str]]:
    """Create one run folder per settings and queue its training job; return (run folder, job id) pairs."""
    from fer_core.jobs import JobSpec, get_runner
    from fer_core.runs import create_run

    runner = get_runner(jobs_root)
    submitted = []
    for settings in settings_list:
        run_dir = Path(create_run(runs_root, settings))
        spec = JobSpec(kind="train", argv=("fer_core.cli", "train", "--run-dir", str(run_dir)), run_dir=run_dir,
                       label=run_dir.name, needs_gpu=needs_gpu(settings))
        job_id = runner.submit(spec)
        logger.info("queued training job %s for run %s", job_id, run_dir)
        submitted.append((run_dir, job_id))
    return submitted
