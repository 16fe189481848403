"""Background jobs: training and explanation batches as separate OS processes.

Each job runs as ``[sys.executable, "-m", *spec.argv]`` in its own process group. A small
supervisor process (``python -m fer_core.jobs supervise <job file>``, started in a new
session) starts it, waits for it and records the outcome. A browser refresh or a restart
of the dashboard therefore never stops a job, and a crashing job cannot take the
dashboard down.

LocalJobRunner keeps all state in files under ``jobs_dir``:

- ``<job id>.json``: one record per job, replaced atomically on every change;
- ``<job id>.supervisor.log``: the supervisor's own log;
- ``.lock``: the file that ``fcntl.flock`` locks around every state change, so that two
  browser tabs, two runners or two processes never start the same job twice.

The job's stdout and stderr go to ``<run_dir>/job.log``; a resumed job appends to it.

No scheduler thread runs. Every submit, status, list and cancel call runs one scheduling
step: it marks RUNNING jobs whose supervisor is gone as INTERRUPTED and starts queued jobs,
in submission order, while fewer than ``max_parallel`` jobs run. Each supervisor runs the
same step when its job ends, so the queue moves on even while no dashboard is open.

Example::

    runner = get_runner(Path("artifacts/jobs"))
    job_id = runner.submit(JobSpec("train", ("fer_core.cli", "train", "--run-dir", str(run_dir)), run_dir))
    status = runner.wait(job_id, timeout=3600)
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import json
import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from fer_core.constants import LifecycleState

logger = logging.getLogger(__name__)

LOG_FILE_NAME = "job.log"
DEFAULT_CANCEL_GRACE_S = 10.0
POLL_INTERVAL_S = 0.2
ERROR_TAIL_LINES = 20
ERROR_TAIL_CHARS = 4000

_RECORD_FORMAT = 1
_LOCK_FILE_NAME = ".lock"
_KIND_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]*")
_JOB_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]*")
_MODULE_PATTERN = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_PACKAGE_PARENT = Path(__file__).resolve().parent.parent


# Jobs and runs share one state enum; JobState is its name in the job runner's API.
JobState = LifecycleState


RESUMABLE_STATES = frozenset({JobState.INTERRUPTED, JobState.FAILED, JobState.CANCELLED})


@dataclass(frozen=True)
class JobSpec:
    """Command, output folder and display metadata of one background job.

    ``argv`` runs as ``[sys.executable, "-m", *argv]``, so ``argv[0]`` is a module name such
    as ``"fer_core.cli"``. The job's environment is the supervisor's, plus
    PYTHONUNBUFFERED=1 and, for ``needs_gpu``, CUDA_VISIBLE_DEVICES. ``extra_env`` entries
    are applied last and replace variables of the same name (PYTHONPATH included).

    NOTE: the supervisor inherits the environment of the process that started it: the
    submitting process, or the supervisor of the previous job when the job waited in the
    queue. Settings that a job needs belong in ``argv`` or ``extra_env``.
    """

    kind: str
    argv: tuple[str, ...]
    run_dir: Path
    label: str = ""
    needs_gpu: bool = False
    extra_env: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "argv", tuple(self.argv))
        object.__setattr__(self, "run_dir", Path(self.run_dir))
        object.__setattr__(self, "extra_env", dict(self.extra_env))

        _validate_kind(self.kind)
        _validate_argv(self.argv)
        _validate_env(self.extra_env)

    @property
    def command(self) -> list[str]:
        """Full command line of the job's process."""
        return [sys.executable, "-m", *self.argv]


def _validate_kind(kind: str) -> None:
    if not isinstance(kind, str) or not _KIND_PATTERN.fullmatch(kind):
        raise ValueError(
            f"job kind must be lowercase letters, digits, '_' or '-' (such as 'train'), got {kind!r}"
        )


def _validate_argv(argv: tuple[str, ...]) -> None:
    if not argv:
        raise ValueError("argv must start with the module to run with 'python -m', got an empty argv")

    for index, argument in enumerate(argv):
        if not isinstance(argument, str):
            raise ValueError(
                f"argv entries must be strings, got {type(argument).__name__} {argument!r} at index {index}"
            )

    if not _MODULE_PATTERN.fullmatch(argv[0]):
        raise ValueError(f"argv[0] must be a module name such as 'fer_core.cli', got {argv[0]!r}")


def _validate_env(env: Mapping[str, str]) -> None:
    for name, value in env.items():
        if not isinstance(name, str) or not name or "=" in name or "\0" in name:
            raise ValueError(f"extra_env names must be non-empty strings without '=', got {name!r}")
        if not isinstance(value, str) or "\0" in value:
            raise ValueError(f"extra_env[{name!r}] must be a string without NUL characters, got {value!r}")


@dataclass(frozen=True)
class JobStatus:
    """Snapshot of one job: its spec, state, times, processes and outcome.

    ``error`` is set for FAILED and INTERRUPTED jobs: the last lines of the job's log,
    plus the reason when a signal or a lost supervisor ended the job.
    """

    job_id: str
    spec: JobSpec
    state: JobState
    submitted_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    pid: int | None = None
    return_code: int | None = None
    error: str | None = None
    cancel_requested: bool = False
    supervisor_pid: int | None = None
    resumed_from: str | None = None

    @property
    def kind(self) -> str:
        """Job kind, such as ``"train"``."""
        return self.spec.kind

    @property
    def argv(self) -> tuple[str, ...]:
        """Module command line of the job."""
        return self.spec.argv

    @property
    def run_dir(self) -> Path:
        """Folder that the job writes into."""
        return self.spec.run_dir

    @property
    def label(self) -> str:
        """Label shown in the dashboard."""
        return self.spec.label

    @property
    def needs_gpu(self) -> bool:
        """True when the job asked for a CUDA device."""
        return self.spec.needs_gpu

    @property
    def log_path(self) -> Path:
        """File that receives the job's stdout and stderr."""
        return self.spec.run_dir / LOG_FILE_NAME


class JobNotFoundError(LookupError):
    """Raised when a jobs folder has no job with the requested id."""


class JobConflictError(RuntimeError):
    """Raised when a request conflicts with a job's state or with another job."""


@runtime_checkable
class JobRunner(Protocol):
    """Engine that runs jobs: local processes today, a cluster engine (Ray, SLURM) later."""

    def submit(self, spec: JobSpec) -> str:
        """Queue a job and return its id."""
        ...

    def status(self, job_id: str) -> JobStatus:
        """Return the current status of a job."""
        ...

    def cancel(self, job_id: str) -> None:
        """Cancel a queued job, or ask a running job to stop."""
        ...

    def list_jobs(self) -> list[JobStatus]:
        """Return every job, in submission order."""
        ...

    def resume(self, job_id: str) -> str:
        """Submit an ended job's spec again and return the new job's id."""
        ...

    def wait(self, job_id: str, timeout: float | None = None) -> JobStatus:
        """Block until a job has ended and return its final status."""
        ...


# Process identity. A pid alone is not enough, because the kernel reuses pids: a process is
# identified by its pid plus its start time, and the host and boot it runs on.


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _parse_time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


@functools.lru_cache(maxsize=1)
def _boot_id() -> str:
    """Return the kernel's boot id, or "" where /proc does not provide one."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _process_start_token(pid: int) -> str | None:
    """Return a token of the process's start time, or None when it is gone or a zombie.

    The token is "" where this platform can tell only that the pid exists (no /proc and no
    psutil), which makes pid reuse undetectable.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return None
        return _process_start_token_without_proc(pid)
    except OSError:
        return None

    # The command name (field 2) is in brackets and may contain spaces, so fields are
    # counted from the last ")": field 3 is the state and field 22 the start time in
    # clock ticks since boot.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return f"proc:{fields[19]}"


def _process_start_token_without_proc(pid: int) -> str | None:
    try:
        import psutil
    except ImportError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return ""
        return ""

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return f"psutil:{process.create_time()}"
    except psutil.NoSuchProcess:
        return None


def _is_same_process(pid: int | None, token: str) -> bool:
    """Return True when ``pid`` is alive and, if ``token`` is known, started at that time."""
    if pid is None:
        return False

    current = _process_start_token(pid)
    if current is None:
        return False
    if not token or not current:
        return True
    return current == token


def _signal_group(pgid: int, signum: int) -> bool:
    """Send a signal to a process group and return False when the group no longer exists."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError as error:
        logger.warning("Could not send %s to process group %d: %s", signal.Signals(signum).name, pgid, error)
        return False
    return True


@functools.lru_cache(maxsize=1)
def _cuda_devices() -> tuple[str, ...]:
    """Return the CUDA device ids visible to this process, in CUDA_VISIBLE_DEVICES form."""
    try:
        import torch
    except ImportError:
        return ()

    count = torch.cuda.device_count()
    if count == 0:
        return ()

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        ids = [device.strip() for device in visible.split(",") if device.strip()]
        return tuple(ids[:count])
    return tuple(str(index) for index in range(count))


def default_max_parallel() -> int:
    """Return the default number of parallel jobs: one per CUDA device, one without any."""
    return max(1, len(_cuda_devices()))


def device_for_slot(slot: int, devices: Sequence[str]) -> str | None:
    """Return the CUDA device id for a runner slot, or None when there are no devices.

    Slots map to devices round-robin, so with the default ``max_parallel`` (one slot per
    device) two running jobs never share a device.
    """
    if not devices:
        return None
    return devices[slot % len(devices)]


def _read_log_tail(path: Path, offset: int = 0) -> str:
    """Return the last ERROR_TAIL_LINES lines (at most ERROR_TAIL_CHARS) of a log after ``offset``."""
    try:
        with path.open("rb") as log:
            size = log.seek(0, os.SEEK_END)
            log.seek(max(offset, size - 16 * ERROR_TAIL_CHARS))
            data = log.read()
    except OSError:
        return ""

    lines = data.decode("utf-8", errors="replace").splitlines()
    tail = "\n".join(lines[-ERROR_TAIL_LINES:]).strip()
    return tail[-ERROR_TAIL_CHARS:]


# Job records and the folder that stores them.


@dataclass
class _JobRecord:
    """State, spec and process ids of one job, stored as ``<job id>.json`` under jobs_dir."""

    job_id: str
    seq: int
    spec: JobSpec
    state: JobState
    submitted_at: str
    cwd: str
    host: str
    boot_id: str
    max_parallel: int
    cancel_grace_s: float
    started_at: str | None = None
    finished_at: str | None = None
    pid: int | None = None
    pid_token: str = ""
    supervisor_pid: int | None = None
    supervisor_token: str = ""
    slot: int | None = None
    cuda_visible_devices: str | None = None
    log_offset: int = 0
    return_code: int | None = None
    error: str | None = None
    cancel_requested_at: str | None = None
    resumed_from: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["state"] = self.state.value
        data["spec"] = {
            "kind": self.spec.kind,
            "argv": list(self.spec.argv),
            "run_dir": str(self.spec.run_dir),
            "label": self.spec.label,
            "needs_gpu": self.spec.needs_gpu,
            "extra_env": dict(self.spec.extra_env),
        }
        return {"format": _RECORD_FORMAT, **data}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> _JobRecord:
        if data.get("format") != _RECORD_FORMAT:
            raise ValueError(f"unsupported record format {data.get('format')!r}, expected {_RECORD_FORMAT}")

        values = {name: data[name] for name in (f.name for f in dataclasses.fields(cls)) if name in data}
        values["spec"] = JobSpec(**data["spec"])
        values["state"] = JobState(data["state"])
        return cls(**values)

    def to_status(self) -> JobStatus:
        return JobStatus(
            job_id=self.job_id,
            spec=self.spec,
            state=self.state,
            submitted_at=datetime.fromisoformat(self.submitted_at),
            started_at=_parse_time(self.started_at),
            finished_at=_parse_time(self.finished_at),
            pid=self.pid,
            return_code=self.return_code,
            error=self.error,
            cancel_requested=self.cancel_requested_at is not None,
            supervisor_pid=self.supervisor_pid,
            resumed_from=self.resumed_from,
        )

    def finish(self, state: JobState, error: str | None = None) -> None:
        self.state = state
        self.finished_at = _now()
        self.error = error
        _sync_run_status(self.spec.run_dir, state, error)


# Run states that a job's end must replace: a job cancelled in the queue, or one that died
# before its program recorded anything, would otherwise leave its run "queued" or "running".
_UNFINISHED_RUN_STATES = frozenset({JobState.QUEUED.value, JobState.RUNNING.value})


def _sync_run_status(run_dir: Path, state: JobState, error: str | None) -> None:
    """Copy a job's final state into its run's status.json when the run still reads unfinished."""
    status_path = Path(run_dir) / "status.json"
    if state is JobState.SUCCEEDED or not status_path.is_file():
        return
    try:
        run_state = json.loads(status_path.read_text()).get("state")
    except (OSError, ValueError, AttributeError) as error_reading:
        logger.warning("Could not read %s to record the job's end: %s", status_path, error_reading)
        return
    if run_state not in _UNFINISHED_RUN_STATES:
        return

    from fer_core.runs import update_status

    fields: dict[str, object] = {"state": state.value, "finished_at": _now()}
    if error:
        fields["error"] = error
    update_status(run_dir, **fields)
    logger.info("Run %s marked %s after its job ended", Path(run_dir).name, state.value)


class _JobStore:
    """Job records as JSON files in one folder, with a cross-process lock."""

    _warned_paths: set[Path] = set()

    def __init__(self, jobs_dir: Path) -> None:
        self.jobs_dir = jobs_dir

    def path(self, job_id: str) -> Path:
        if not _JOB_ID_PATTERN.fullmatch(job_id):
            raise JobNotFoundError(f"invalid job id {job_id!r}: ids contain only a-z, 0-9, '_' and '-'")
        return self.jobs_dir / f"{job_id}.json"

    def supervisor_log(self, job_id: str) -> Path:
        return self.jobs_dir / f"{job_id}.supervisor.log"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder's exclusive lock.

        Each call opens its own descriptor, so threads and processes exclude each other.
        Sections must not nest: a nested call in the same thread would wait for itself.
        """
        descriptor = os.open(self.jobs_dir / _LOCK_FILE_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)

    def read(self, job_id: str) -> _JobRecord:
        path = self.path(job_id)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise JobNotFoundError(f"no job {job_id!r} in {self.jobs_dir}") from None
        return _JobRecord.from_json(data)

    def write(self, record: _JobRecord) -> None:
        """Write a record atomically: to a temporary file in the folder, then os.replace."""
        path = self.path(record.job_id)
        handle = tempfile.NamedTemporaryFile(
            "w", encoding="utf-8", dir=self.jobs_dir, prefix=f".{record.job_id}.", suffix=".tmp", delete=False
        )
        try:
            with handle:
                json.dump(record.to_json(), handle, indent=2)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(handle.name, 0o644)
            os.replace(handle.name, path)
        except BaseException:
            Path(handle.name).unlink(missing_ok=True)
            raise

    def read_all(self) -> list[_JobRecord]:
        """Return every readable record in submission order, skipping unreadable files."""
        records = []
        for path in sorted(self.jobs_dir.glob("*.json")):
            try:
                records.append(_JobRecord.from_json(json.loads(path.read_text(encoding="utf-8"))))
            except (OSError, ValueError, KeyError, TypeError) as error:
                self._warn_once(path, error)
        return sorted(records, key=lambda record: record.seq)

    def _warn_once(self, path: Path, error: Exception) -> None:
        if path in self._warned_paths:
            return
        self._warned_paths.add(path)
        logger.warning("Skipping unreadable job record %s (%s). Fix or delete the file.", path, error)


# Supervisor processes that this process started. Keeping the handles lets the scheduling
# step reap them, so that long-lived processes such as the dashboard collect no zombies.
_supervisors: list[subprocess.Popen[bytes]] = []
_supervisors_lock = threading.Lock()


def _reap_supervisors() -> None:
    with _supervisors_lock:
        _supervisors[:] = [process for process in _supervisors if process.poll() is None]


class LocalJobRunner:
    """Job runner that runs each job as a local process under its own supervisor process.

    ``max_parallel`` limits how many jobs of the folder run at once, and later jobs wait
    as QUEUED. The default is one per visible CUDA device, or one without any. A job with
    ``needs_gpu`` gets CUDA_VISIBLE_DEVICES set to the device of its slot unless its
    ``extra_env`` sets that variable. ``cancel_grace_s`` is the time between SIGTERM and
    SIGKILL when a running job is cancelled.
    """

    def __init__(
        self,
        jobs_dir: Path,
        max_parallel: int | None = None,
        *,
        cancel_grace_s: float = DEFAULT_CANCEL_GRACE_S,
    ) -> None:
        jobs_dir = Path(os.path.abspath(Path(jobs_dir).expanduser()))
        if jobs_dir.exists() and not jobs_dir.is_dir():
            raise NotADirectoryError(
                f"jobs folder {jobs_dir} is a file, not a folder. Choose a folder for job records"
            )
        if max_parallel is not None and max_parallel < 1:
            raise ValueError(f"max_parallel must be at least 1, got {max_parallel}")
        if cancel_grace_s < 0:
            raise ValueError(f"cancel_grace_s must be zero or positive, got {cancel_grace_s}")

        jobs_dir.mkdir(parents=True, exist_ok=True)
        self.jobs_dir = jobs_dir
        self.max_parallel = default_max_parallel() if max_parallel is None else max_parallel
        self.cancel_grace_s = cancel_grace_s
        self._store = _JobStore(jobs_dir)
        self._host = socket.gethostname()

    def submit(self, spec: JobSpec) -> str:
        """Queue a job, start it if a slot is free, and return its id.

        Raises JobConflictError when a queued or running job already uses ``spec.run_dir``,
        because two jobs would write the same files and the same log.
        """
        return self._submit(spec, resumed_from=None)

    def status(self, job_id: str) -> JobStatus:
        """Run one scheduling step and return the job's status."""
        self._schedule()
        return self._store.read(job_id).to_status()

    def list_jobs(self) -> list[JobStatus]:
        """Run one scheduling step and return every job in submission order."""
        self._schedule()
        return [record.to_status() for record in self._store.read_all()]

    def cancel(self, job_id: str) -> None:
        """Cancel a job: a queued one at once, a running one by stopping its process group.

        A running job gets SIGTERM now, and its supervisor sends SIGKILL if the job still
        runs ``cancel_grace_s`` later. Its state stays RUNNING, with ``cancel_requested``
        set, until the process has exited, and then becomes CANCELLED. Ended jobs are left
        as they are. Nothing in the run folder is deleted.
        """
        with self._store.locked():
            record = self._store.read(job_id)
            if record.state is JobState.RUNNING:
                self._check_alive_locked(record)

            if record.state is JobState.QUEUED:
                record.finish(JobState.CANCELLED)
                self._store.write(record)
                logger.info("Cancelled queued job %s", job_id)
            elif record.state is JobState.RUNNING:
                self._request_stop_locked(record)
            else:
                state = record.state.value
                logger.info("Job %s has already ended (%s), so there is nothing to cancel", job_id, state)

        self._schedule()

    def resume(self, job_id: str) -> str:
        """Submit an interrupted, failed or cancelled job's spec again and return the new id.

        The new job runs the same command in the same run folder, so a training command
        continues from its checkpoints.
        """
        status = self.status(job_id)
        if status.state not in RESUMABLE_STATES:
            raise JobConflictError(
                f"job {job_id} is {status.state.value}, but "
                "only interrupted, failed or cancelled jobs can be resumed"
            )
        return self._submit(status.spec, resumed_from=job_id)

    def wait(self, job_id: str, timeout: float | None = None, poll_s: float = POLL_INTERVAL_S) -> JobStatus:
        """Block until the job has ended and return its final status.

        Raises TimeoutError when it is still queued or running after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status(job_id)
            if status.state.is_final:
                return status

            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"job {job_id} is still {status.state.value} after {timeout} s")
            time.sleep(poll_s if remaining is None else min(poll_s, remaining))

    def _submit(self, spec: JobSpec, resumed_from: str | None) -> str:
        run_dir = Path(os.path.abspath(spec.run_dir.expanduser()))
        spec = dataclasses.replace(spec, run_dir=run_dir)
        if run_dir.exists() and not run_dir.is_dir():
            raise NotADirectoryError(
                f"run folder {run_dir} is a file, not a folder. Give the job a folder to write into"
            )
        run_dir.mkdir(parents=True, exist_ok=True)

        with self._store.locked():
            records = self._store.read_all()
            busy = [r for r in records if not r.state.is_final and r.spec.run_dir == run_dir]
            if busy:
                raise JobConflictError(
                    f"run folder {run_dir} is already used by job {busy[0].job_id} ({busy[0].state.value}). "
                    "Cancel that job or wait for it to end"
                )

            record = _JobRecord(
                job_id=self._new_job_id(spec.kind),
                seq=max((r.seq for r in records), default=0) + 1,
                spec=spec,
                state=JobState.QUEUED,
                submitted_at=_now(),
                cwd=os.getcwd(),
                host=self._host,
                boot_id=_boot_id(),
                max_parallel=self.max_parallel,
                cancel_grace_s=self.cancel_grace_s,
                resumed_from=resumed_from,
            )
            self._store.write(record)

        origin = f" (resuming {resumed_from})" if resumed_from else ""
        logger.info("Queued job %s%s: %s", record.job_id, origin, " ".join(spec.argv))
        self._schedule()
        return record.job_id

    def _new_job_id(self, kind: str) -> str:
        while True:
            stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
            job_id = f"{kind}-{stamp}-{secrets.token_hex(3)}"
            if not self._store.path(job_id).exists():
                return job_id

    def _schedule(self) -> None:
        """Mark RUNNING jobs whose supervisor is gone as INTERRUPTED, then start queued jobs."""
        _reap_supervisors()

        with self._store.locked():
            records = self._store.read_all()
            for record in records:
                if record.state is JobState.RUNNING:
                    self._check_alive_locked(record)

            running = [record for record in records if record.state is JobState.RUNNING]
            used_slots = {record.slot for record in running}
            for record in records:
                if len(running) >= self.max_parallel:
                    break
                if record.state is not JobState.QUEUED:
                    continue

                slot = min(set(range(len(used_slots) + 1)) - used_slots)
                self._start_locked(record, slot)
                if record.state is JobState.RUNNING:
                    running.append(record)
                    used_slots.add(slot)

    def _check_alive_locked(self, record: _JobRecord) -> None:
        """Mark a RUNNING job INTERRUPTED when its supervisor process is gone."""
        if record.host != self._host:
            return  # NOTE: processes on another host cannot be checked, so such a job stays RUNNING.

        rebooted = record.boot_id != _boot_id()
        if not rebooted and _is_same_process(record.supervisor_pid, record.supervisor_token):
            return

        reason = f"supervisor process {record.supervisor_pid} is no longer running"
        if rebooted:
            reason = "the machine restarted while the job was running"
        elif _is_same_process(record.pid, record.pid_token):
            # Nothing could record the orphaned job's outcome or cancel it, and a resumed
            # copy would write the same run folder, so it is stopped.
            _signal_group(record.pid, signal.SIGKILL)
            reason += f", and its job process {record.pid} was killed"

        error = f"{reason[0].upper()}{reason[1:]}. Resume the job to run it again."
        if record.pid is None:
            supervisor_tail = _read_log_tail(self._store.supervisor_log(record.job_id))
            if supervisor_tail:
                error += f"\nSupervisor log:\n{supervisor_tail}"

        record.finish(JobState.INTERRUPTED, error)
        self._store.write(record)
        logger.warning("Job %s interrupted: %s", record.job_id, reason)

    def _request_stop_locked(self, record: _JobRecord) -> None:
        if record.cancel_requested_at is None:
            record.cancel_requested_at = _now()
            record.cancel_grace_s = self.cancel_grace_s
            self._store.write(record)

        if record.pid is not None and _is_same_process(record.pid, record.pid_token):
            _signal_group(record.pid, signal.SIGTERM)
        logger.info(
            "Cancelling job %s: sent SIGTERM, SIGKILL follows after %.1f s",
            record.job_id,
            record.cancel_grace_s,
        )

    def _start_locked(self, record: _JobRecord, slot: int) -> None:
        """Mark a queued job RUNNING in ``slot`` and start its supervisor process."""
        record.state = JobState.RUNNING
        record.slot = slot
        record.started_at = _now()
        record.max_parallel = self.max_parallel
        record.host = self._host
        record.boot_id = _boot_id()
        if record.spec.needs_gpu and "CUDA_VISIBLE_DEVICES" not in record.spec.extra_env:
            record.cuda_visible_devices = device_for_slot(slot, _cuda_devices())
            if record.cuda_visible_devices is None:
                logger.warning(
                    "Job %s requests a GPU, but no CUDA device is visible, so it runs on the CPU",
                    record.job_id,
                )

        try:
            process = self._launch_supervisor(record)
        except OSError as error:
            record.finish(JobState.FAILED, f"Could not start the supervisor process: {error}")
            self._store.write(record)
            logger.error("Job %s failed: could not start its supervisor process: %s", record.job_id, error)
            return

        record.supervisor_pid = process.pid
        record.supervisor_token = _process_start_token(process.pid) or ""
        self._store.write(record)
        logger.info("Starting job %s in slot %d (supervisor process %d)", record.job_id, slot, process.pid)

    def _launch_supervisor(self, record: _JobRecord) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "fer_core.jobs", "supervise", str(self._store.path(record.job_id))]

        # The supervisor runs in jobs_dir, so fer_core must be importable without the
        # caller's working folder.
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PACKAGE_PARENT), env.get("PYTHONPATH")]))

        with self._store.supervisor_log(record.job_id).open("ab") as log:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.jobs_dir,
                env=env,
                start_new_session=True,
            )

        with _supervisors_lock:
            _supervisors.append(process)
        return process


def get_runner(jobs_dir: Path) -> JobRunner:
    """Return the job runner for a jobs folder.

    TODO: choose a cluster runner (Ray, SLURM) here once one exists. Every job runs
    locally for now.
    """
    return LocalJobRunner(jobs_dir)


# The supervisor: the process between the runner and the job.


class _Supervisor:
    """Start one job, stop it on request, record its outcome and start the next queued job."""

    def __init__(self, job_file: Path) -> None:
        self.store = _JobStore(job_file.parent)
        self.job_id = job_file.stem
        self.stop_signal: int | None = None

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)

        try:
            process = self._start_job()
        except JobNotFoundError as error:
            logger.error("Supervisor failed for job %s: %s", self.job_id, error)
            return 1

        if process is not None:
            return_code = self._wait(process)
            self._finish(process.pid, return_code)

        if self.stop_signal is None:
            self._start_next_jobs()
        return 0

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stop_signal = signum

    def _start_job(self) -> subprocess.Popen[bytes] | None:
        with self.store.locked():
            record = self.store.read(self.job_id)
            if record.state is not JobState.RUNNING or record.supervisor_pid != os.getpid():
                logger.error(
                    "Job %s is %s and belongs to supervisor %s, not to this process %d, "
                    "so this supervisor exits",
                    self.job_id, record.state.value, record.supervisor_pid, os.getpid(),
                )
                return None

            if self.stop_signal is not None:
                signal_name = signal.Signals(self.stop_signal).name
                reason = f"The supervisor received {signal_name} before the job started."
                record.finish(JobState.INTERRUPTED, reason)
                self.store.write(record)
                logger.warning("Job %s interrupted before it started", self.job_id)
                return None

            if record.cancel_requested_at is not None:
                record.finish(JobState.CANCELLED)
                self.store.write(record)
                logger.info("Job %s cancelled before it started", self.job_id)
                return None

            try:
                process = self._launch_job(record)
            except OSError as error:
                record.finish(JobState.FAILED, f"Could not start the job process: {error}")
                self.store.write(record)
                logger.error("Job %s failed to start: %s", self.job_id, error)
                return None

            self.store.write(record)

        command = " ".join(record.spec.command)
        logger.info("Started job %s as process %d: %s", self.job_id, process.pid, command)
        return process

    def _launch_job(self, record: _JobRecord) -> subprocess.Popen[bytes]:
        """Start the job's process in a new process group and store its pid in ``record``."""
        # Unbuffered output lets the dashboard show the log while the job runs.
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        if record.cuda_visible_devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = record.cuda_visible_devices
        env.update(record.spec.extra_env)

        record.spec.run_dir.mkdir(parents=True, exist_ok=True)
        log_path = record.spec.run_dir / LOG_FILE_NAME
        with log_path.open("ab") as log:
            command = " ".join(record.spec.command)
            header = f"=== job {self.job_id} started {_now()} on {socket.gethostname()}: {command}\n"
            log.write(header.encode("utf-8"))
            log.flush()
            record.log_offset = log.tell()

            process = subprocess.Popen(
                record.spec.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=record.cwd,
                env=env,
                start_new_session=True,
            )

        record.pid = process.pid
        record.pid_token = _process_start_token(process.pid) or ""
        record.started_at = _now()
        return process

    def _wait(self, process: subprocess.Popen[bytes]) -> int:
        """Wait for the job's process, sending SIGTERM and later SIGKILL once a stop is requested."""
        term_sent_at: float | None = None
        grace_s = DEFAULT_CANCEL_GRACE_S
        killed = False

        while True:
            try:
                return process.wait(timeout=POLL_INTERVAL_S)
            except subprocess.TimeoutExpired:
                pass

            if term_sent_at is None:
                requested, grace_s = self._stop_requested()
                if requested:
                    _signal_group(process.pid, signal.SIGTERM)
                    term_sent_at = time.monotonic()
            elif not killed and time.monotonic() - term_sent_at >= grace_s:
                logger.warning(
                    "Job %s still runs %.1f s after SIGTERM, so the supervisor sends SIGKILL",
                    self.job_id,
                    grace_s,
                )
                _signal_group(process.pid, signal.SIGKILL)
                killed = True

    def _stop_requested(self) -> tuple[bool, float]:
        """Return whether the job must stop, and the grace period before SIGKILL."""
        try:
            record = self.store.read(self.job_id)
        except (OSError, ValueError, KeyError, TypeError) as error:
            logger.error("Failed to read the record of job %s: %s", self.job_id, error)
            return self.stop_signal is not None, DEFAULT_CANCEL_GRACE_S

        requested = self.stop_signal is not None or record.cancel_requested_at is not None
        return requested, record.cancel_grace_s

    def _finish(self, pgid: int, return_code: int) -> None:
        """Kill what the job left in its process group and record the job's final state."""
        # Processes left in the group would keep their memory, GPU memory included, after
        # the job has ended. The job was started with start_new_session, so its pid is the pgid.
        if _signal_group(pgid, signal.SIGKILL):
            logger.info("Killed processes that job %s left in its process group", self.job_id)

        with self.store.locked():
            record = self.store.read(self.job_id)
            log_path = record.spec.run_dir / LOG_FILE_NAME
            tail = _read_log_tail(log_path, record.log_offset)
            record.return_code = return_code
            state, error = self._outcome(record, return_code, tail)
            record.finish(state, error)
            self.store.write(record)

        with contextlib.suppress(OSError), log_path.open("ab") as log:
            trailer = f"=== job {self.job_id} {state.value} {_now()}: exit code {return_code}\n"
            log.write(trailer.encode("utf-8"))

        if state is JobState.SUCCEEDED or state is JobState.CANCELLED:
            logger.info("Job %s %s (exit code %d)", self.job_id, state.value, return_code)
        else:
            last_line = tail.splitlines()[-1] if tail else "empty log"
            logger.warning("Job %s %s (exit code %d): %s", self.job_id, state.value, return_code, last_line)

    def _outcome(self, record: _JobRecord, return_code: int, tail: str) -> tuple[JobState, str | None]:
        """Return the final state and error text of a job whose process exited."""
        if self.stop_signal is not None:
            reason = f"The supervisor received {signal.Signals(self.stop_signal).name} and stopped the job."
            return JobState.INTERRUPTED, "\n".join(filter(None, [tail, reason]))
        if record.cancel_requested_at is not None:
            return JobState.CANCELLED, None
        if return_code == 0:
            return JobState.SUCCEEDED, None

        reason = f"Exit code {return_code}."
        if return_code < 0:
            reason = f"The process was ended by signal {signal.Signals(-return_code).name}."
        return JobState.FAILED, "\n".join(filter(None, [tail, reason]))

    def _start_next_jobs(self) -> None:
        try:
            record = self.store.read(self.job_id)
        except (OSError, ValueError, KeyError, TypeError) as error:
            logger.error(
                "Failed to read the record of job %s, so no queued job was started: %s", self.job_id, error
            )
            return

        runner = LocalJobRunner(
            self.store.jobs_dir, max_parallel=record.max_parallel, cancel_grace_s=record.cancel_grace_s
        )
        runner._schedule()


def _main(argv: Sequence[str]) -> int:
    """Run the supervisor entry point: ``python -m fer_core.jobs supervise <job file>``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if len(argv) != 2 or argv[0] != "supervise":
        logger.error("Invalid arguments %r. Usage: python -m fer_core.jobs supervise <job file>", list(argv))
        return 2
    return _Supervisor(Path(argv[1])).run()


if __name__ == "__main__":
    # Import the module under its package name, so that log records name fer_core.jobs.
    from fer_core.jobs import _main as _package_main

    sys.exit(_package_main(sys.argv[1:]))
