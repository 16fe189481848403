"""Preparation as a background job, so the dashboard process never forks its own workers.

`prepare.prepare_dataset` forks worker processes. Forked from the Streamlit server, whose
threads may hold torch or OpenMP locks at that moment, the workers can hang for ever. The
dashboard therefore runs `fer-studio prepare` as a job (see `fer_core.jobs`) and follows its
progress in the job's log.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fer_core.jobs import JobSpec, JobStatus, get_runner

if TYPE_CHECKING:
    from fer_core.prepare import PrepareSettings

logger = logging.getLogger(__name__)

PREPARE_KIND = "prepare"
LOGS_FOLDER = "prepare"
# The CLI writes "\r<done>/<total> photographs" to stderr as photographs finish.
_PROGRESS_PATTERN = re.compile(r"(\d+)/(\d+) photographs")
_LOG_TAIL_BYTES = 4096


@dataclass(frozen=True)
class PreparationProgress:
    """A preparation job's state and how many photographs it has finished."""

    status: JobStatus
    done: int | None
    total: int | None

    @property
    def fraction(self) -> float:
        """Return the finished share from 0 to 1 (0 before the first report)."""
        if not self.done or not self.total:
            return 0.0
        return min(1.0, self.done / self.total)


def prepare_argv(dataset_name: str, settings: PrepareSettings) -> tuple[str, ...]:
    """Return the `python -m` command line that prepares a registered data set."""
    return ("fer_core.cli", "prepare", "--dataset", dataset_name,
            "--masks", *(mask_type.value for mask_type in settings.mask_types),
            "--coverage", str(settings.coverage), "--crop-size", str(settings.crop_size),
            "--margin", str(settings.margin), "--seed", str(settings.seed),
            "--selection", settings.selection.value, "--workers", str(settings.workers))


def log_folder(jobs_dir: Path, dataset_name: str) -> Path:
    """Return the folder of a data set's preparation log; one preparation per data set runs at a time."""
    return Path(jobs_dir) / LOGS_FOLDER / dataset_name


def submit_preparation(jobs_dir: Path, dataset_name: str, settings: PrepareSettings) -> str:
    """Queue the preparation of a registered data set and return the job id.

    Raises JobConflictError while another preparation of the same data set is queued or running.
    """
    spec = JobSpec(kind=PREPARE_KIND, argv=prepare_argv(dataset_name, settings),
                   run_dir=log_folder(jobs_dir, dataset_name), label=f"prepare {dataset_name}")
    job_id = get_runner(jobs_dir).submit(spec)
    logger.info("queued preparation job %s for %s", job_id, dataset_name)
    return job_id


def latest_preparation(jobs_dir: Path, dataset_name: str) -> PreparationProgress | None:
    """Return the newest preparation job of a data set with its progress, or None."""
    folder = log_folder(jobs_dir, dataset_name)
    jobs = [status for status in get_runner(jobs_dir).list_jobs()
            if status.kind == PREPARE_KIND and status.run_dir == folder]
    if not jobs:
        return None
    status = jobs[-1]
    done, total = read_progress(status.log_path)
    return PreparationProgress(status=status, done=done, total=total)


def read_progress(log_path: Path) -> tuple[int | None, int | None]:
    """Return the last (done, total) photograph counts in a preparation log, or (None, None)."""
    try:
        with Path(log_path).open("rb") as log:
            size = log.seek(0, 2)
            log.seek(max(0, size - _LOG_TAIL_BYTES))
            tail = log.read().decode("utf-8", errors="replace")
    except OSError:
        return None, None
    matches = _PROGRESS_PATTERN.findall(tail)
    if not matches:
        return None, None
    done, total = matches[-1]
    return int(done), int(total)
