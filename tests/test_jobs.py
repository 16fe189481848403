"""Tests of the background job runner with real supervisor and job processes.

Every job runs the helper module ``jobhelper``, which each test writes into its tmp_path
and puts on the job's PYTHONPATH through ``JobSpec.extra_env``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fer_core.jobs import (
    LOG_FILE_NAME,
    JobConflictError,
    JobNotFoundError,
    JobSpec,
    JobState,
    JobStatus,
    LocalJobRunner,
    _is_same_process,
    _process_start_token,
    device_for_slot,
    get_runner,
)

pytestmark = pytest.mark.timeout(90)

TIMEOUT_S = 30.0

HELPER_SOURCE = textwrap.dedent(
    """
    import os
    import signal
    import sys
    import time
    from pathlib import Path


    def write(path, text):
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(text)
        os.replace(temporary, path)


    def main():
        mode, out = sys.argv[1], Path(sys.argv[2])
        out.mkdir(parents=True, exist_ok=True)
        if mode == "ignore-term":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        write(out / "start", repr(time.time()))
        write(out / "pid", str(os.getpid()))

        if mode == "ok":
            write(out / "result.txt", os.environ.get("JOB_TEST_VALUE", ""))
        elif mode == "crash":
            raise ValueError("invalid value 42 in settings")
        elif mode == "timed":
            time.sleep(0.3)
            with open(sys.argv[3], "a") as shared:
                shared.write(out.name + "\\n")
        elif mode == "resumable" and (out / "checkpoint").exists():
            write(out / "result.txt", "resumed")
        elif mode == "resumable":
            write(out / "checkpoint", "epoch 1")
            time.sleep(60)
        elif mode in ("sleep", "ignore-term"):
            time.sleep(60)
        else:
            raise SystemExit(f"unknown mode {mode}")
        write(out / "end", repr(time.time()))


    if __name__ == "__main__":
        main()
    """
)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    (tmp_path / "jobhelper.py").write_text(HELPER_SOURCE)
    return tmp_path


@pytest.fixture
def runner(workspace: Path) -> Iterator[LocalJobRunner]:
    runner = LocalJobRunner(workspace / "jobs", max_parallel=2, cancel_grace_s=5.0)
    yield runner
    _stop_all(runner)


def _stop_all(runner: LocalJobRunner) -> None:
    """Cancel every job that still runs, so that no test leaves processes behind."""
    for status in runner.list_jobs():
        if not status.state.is_final:
            runner.cancel(status.job_id)
    for status in runner.list_jobs():
        if not status.state.is_final:
            runner.wait(status.job_id, timeout=TIMEOUT_S)


def _spec(workspace: Path, mode: str, name: str, *extra: str, **env: str) -> JobSpec:
    run_dir = workspace / "runs" / name
    return JobSpec(
        kind="test",
        argv=("jobhelper", mode, str(run_dir), *extra),
        run_dir=run_dir,
        label=name,
        extra_env={"PYTHONPATH": str(workspace), **env},
    )


def _wait_for_file(path: Path, timeout_s: float = TIMEOUT_S) -> str:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout_s} s")
        time.sleep(0.05)
    return path.read_text()


def _wait_for_state(runner: LocalJobRunner, job_id: str, state: JobState) -> JobStatus:
    deadline = time.monotonic() + TIMEOUT_S
    status = runner.status(job_id)
    while status.state is not state:
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} is {status.state.value}, expected {state.value}")
        time.sleep(0.05)
        status = runner.status(job_id)
    return status


def _process_gone(pid: int, timeout_s: float = 5.0) -> bool:
    """Return True once the process has exited (zombies count as exited)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return True
        if stat[stat.rindex(")") + 2] in "ZX":
            return True
        time.sleep(0.05)
    return False


def _start_running(runner: LocalJobRunner, spec: JobSpec) -> tuple[str, int]:
    """Submit a job and return its id and pid once the job process is up."""
    job_id = runner.submit(spec)
    pid = int(_wait_for_file(spec.run_dir / "pid"))
    _wait_for_state(runner, job_id, JobState.RUNNING)
    return job_id, pid


def test_spec_rejects_option_as_module(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="module name"):
        JobSpec(kind="train", argv=("-c", "print(1)"), run_dir=tmp_path)


def test_spec_rejects_kind_with_slash(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="job kind"):
        JobSpec(kind="../train", argv=("fer_core.cli",), run_dir=tmp_path)


def test_spec_rejects_empty_argv(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty argv"):
        JobSpec(kind="train", argv=(), run_dir=tmp_path)


def test_runner_rejects_zero_parallel(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_parallel must be at least 1, got 0"):
        LocalJobRunner(tmp_path / "jobs", max_parallel=0)


def test_get_runner_default_parallel(tmp_path: Path) -> None:
    runner = get_runner(tmp_path / "jobs")

    assert isinstance(runner, LocalJobRunner)
    assert runner.max_parallel >= 1


def test_device_for_slot_round_robin() -> None:
    assert device_for_slot(0, ("3", "5")) == "3"
    assert device_for_slot(3, ("3", "5")) == "5"
    assert device_for_slot(0, ()) is None


def test_process_identity_detects_reuse() -> None:
    token = _process_start_token(os.getpid())

    assert token
    assert _is_same_process(os.getpid(), token)
    assert not _is_same_process(os.getpid(), "proc:0")


def test_job_succeeds(runner: LocalJobRunner, workspace: Path) -> None:
    spec = _spec(workspace, "ok", "ok", JOB_TEST_VALUE="from extra_env")

    status = runner.wait(runner.submit(spec), timeout=TIMEOUT_S)

    assert status.state is JobState.SUCCEEDED
    assert status.return_code == 0
    assert status.error is None
    assert (spec.run_dir / "result.txt").read_text() == "from extra_env"
    assert f"=== job {status.job_id} started" in status.log_path.read_text()


def test_crashing_job_failed(runner: LocalJobRunner, workspace: Path) -> None:
    spec = _spec(workspace, "crash", "crash")

    status = runner.wait(runner.submit(spec), timeout=TIMEOUT_S)

    assert status.state is JobState.FAILED
    assert status.return_code == 1
    assert status.error is not None
    assert "ValueError: invalid value 42 in settings" in status.error
    assert (spec.run_dir / "pid").exists()
    assert (spec.run_dir / LOG_FILE_NAME).exists()


def test_cancel_running_job(runner: LocalJobRunner, workspace: Path) -> None:
    spec = _spec(workspace, "sleep", "sleep")
    job_id, pid = _start_running(runner, spec)

    runner.cancel(job_id)
    status = runner.wait(job_id, timeout=TIMEOUT_S)

    assert status.state is JobState.CANCELLED
    assert status.cancel_requested
    assert status.return_code == -signal.SIGTERM
    assert _process_gone(pid)
    assert (spec.run_dir / "start").exists()
    assert (spec.run_dir / LOG_FILE_NAME).exists()


def test_cancel_escalates_to_sigkill(workspace: Path) -> None:
    runner = LocalJobRunner(workspace / "jobs", max_parallel=1, cancel_grace_s=0.5)
    job_id, pid = _start_running(runner, _spec(workspace, "ignore-term", "stubborn"))

    runner.cancel(job_id)
    status = runner.wait(job_id, timeout=TIMEOUT_S)

    assert status.state is JobState.CANCELLED
    assert status.return_code == -signal.SIGKILL
    assert _process_gone(pid)


def test_cancel_queued_job(workspace: Path) -> None:
    runner = LocalJobRunner(workspace / "jobs", max_parallel=1, cancel_grace_s=5.0)
    first_id, _ = _start_running(runner, _spec(workspace, "sleep", "first"))
    second_spec = _spec(workspace, "ok", "second")
    second_id = runner.submit(second_spec)

    runner.cancel(second_id)
    second = runner.status(second_id)
    runner.cancel(first_id)
    runner.wait(first_id, timeout=TIMEOUT_S)

    assert second.state is JobState.CANCELLED
    assert second.started_at is None
    assert runner.status(second_id).state is JobState.CANCELLED
    assert not (second_spec.run_dir / "pid").exists()


def test_queue_runs_in_order(workspace: Path) -> None:
    runner = LocalJobRunner(workspace / "jobs", max_parallel=1)
    shared = workspace / "order.txt"
    specs = [_spec(workspace, "timed", name, str(shared)) for name in ("a", "b", "c")]

    job_ids = [runner.submit(spec) for spec in specs]
    queued = runner.status(job_ids[1])
    finals = [runner.wait(job_id, timeout=TIMEOUT_S) for job_id in job_ids]
    starts = [float((spec.run_dir / "start").read_text()) for spec in specs]
    ends = [float((spec.run_dir / "end").read_text()) for spec in specs]

    assert queued.state is JobState.QUEUED
    assert [status.state for status in finals] == [JobState.SUCCEEDED] * 3
    assert shared.read_text().split() == ["a", "b", "c"]
    assert starts[1] >= ends[0]
    assert starts[2] >= ends[1]


POLLER_SOURCE = """
import sys, time
from fer_core.jobs import LocalJobRunner
runner = LocalJobRunner(sys.argv[1], max_parallel=2)
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    runner.list_jobs()
"""


def test_concurrent_schedulers_start_once(workspace: Path) -> None:
    jobs_dir = workspace / "jobs"
    runners = [LocalJobRunner(jobs_dir, max_parallel=2) for _ in range(2)]
    shared = workspace / "starts.txt"
    names = [f"job{index}" for index in range(6)]
    job_ids: list[str] = []

    def submit_half(runner: LocalJobRunner, half: list[str]) -> None:
        for name in half:
            job_ids.append(runner.submit(_spec(workspace, "timed", name, str(shared))))

    pollers = [subprocess.Popen([sys.executable, "-c", POLLER_SOURCE, str(jobs_dir), "3"]) for _ in range(2)]
    submitters = [
        threading.Thread(target=submit_half, args=(runners[0], names[0::2])),
        threading.Thread(target=submit_half, args=(runners[1], names[1::2])),
    ]
    for thread in submitters:
        thread.start()
    for thread in submitters:
        thread.join()
    finals = [runners[0].wait(job_id, timeout=TIMEOUT_S) for job_id in job_ids]
    poller_codes = [poller.wait(timeout=TIMEOUT_S) for poller in pollers]

    run_dirs = [workspace / "runs" / name for name in names]
    intervals = [(float((d / "start").read_text()), float((d / "end").read_text())) for d in run_dirs]
    max_overlap = max(sum(start <= moment < end for start, end in intervals) for moment, _ in intervals)

    assert poller_codes == [0, 0]
    assert [status.state for status in finals] == [JobState.SUCCEEDED] * len(names)
    assert sorted(shared.read_text().split()) == sorted(names)
    assert max_overlap <= 2


def test_restarted_runner_sees_jobs(runner: LocalJobRunner, workspace: Path) -> None:
    done_id = runner.submit(_spec(workspace, "ok", "done"))
    runner.wait(done_id, timeout=TIMEOUT_S)
    running_id, _ = _start_running(runner, _spec(workspace, "sleep", "running"))

    restarted = LocalJobRunner(workspace / "jobs", max_parallel=2, cancel_grace_s=5.0)

    assert restarted.status(done_id).state is JobState.SUCCEEDED
    assert restarted.status(running_id).state is JobState.RUNNING
    assert [status.job_id for status in restarted.list_jobs()] == [done_id, running_id]

    restarted.cancel(running_id)

    assert runner.wait(running_id, timeout=TIMEOUT_S).state is JobState.CANCELLED


def test_killed_supervisor_interrupted(runner: LocalJobRunner, workspace: Path) -> None:
    spec = _spec(workspace, "resumable", "resumable")
    job_id, pid = _start_running(runner, spec)
    supervisor_pid = runner.status(job_id).supervisor_pid
    assert supervisor_pid is not None

    os.kill(supervisor_pid, signal.SIGKILL)
    os.killpg(pid, signal.SIGKILL)
    interrupted = _wait_for_state(runner, job_id, JobState.INTERRUPTED)
    resumed_id = runner.resume(job_id)
    resumed = runner.wait(resumed_id, timeout=TIMEOUT_S)

    assert interrupted.error is not None
    assert f"Supervisor process {supervisor_pid} is no longer running" in interrupted.error
    assert resumed.state is JobState.SUCCEEDED
    assert resumed.resumed_from == job_id
    assert (spec.run_dir / "result.txt").read_text() == "resumed"


def test_orphaned_job_killed(runner: LocalJobRunner, workspace: Path) -> None:
    job_id, pid = _start_running(runner, _spec(workspace, "sleep", "orphan"))
    supervisor_pid = runner.status(job_id).supervisor_pid
    assert supervisor_pid is not None

    os.kill(supervisor_pid, signal.SIGKILL)
    status = _wait_for_state(runner, job_id, JobState.INTERRUPTED)

    assert status.error is not None
    assert f"job process {pid} was killed" in status.error
    assert _process_gone(pid)


def test_supervisor_sigterm_interrupts(runner: LocalJobRunner, workspace: Path) -> None:
    job_id, pid = _start_running(runner, _spec(workspace, "sleep", "shutdown"))
    supervisor_pid = runner.status(job_id).supervisor_pid
    assert supervisor_pid is not None

    os.kill(supervisor_pid, signal.SIGTERM)
    status = runner.wait(job_id, timeout=TIMEOUT_S)

    assert status.state is JobState.INTERRUPTED
    assert status.error is not None
    assert "received SIGTERM" in status.error
    assert _process_gone(pid)


def test_resume_rejects_running_job(runner: LocalJobRunner, workspace: Path) -> None:
    job_id, _ = _start_running(runner, _spec(workspace, "sleep", "busy"))

    with pytest.raises(JobConflictError, match="only interrupted, failed or cancelled"):
        runner.resume(job_id)


def test_submit_rejects_busy_run_dir(runner: LocalJobRunner, workspace: Path) -> None:
    spec = _spec(workspace, "sleep", "shared")
    job_id, _ = _start_running(runner, spec)

    with pytest.raises(JobConflictError, match=f"already used by job {job_id}"):
        runner.submit(spec)


def test_status_unknown_job(runner: LocalJobRunner) -> None:
    with pytest.raises(JobNotFoundError, match="no job 'test-missing'"):
        runner.status("test-missing")


def test_corrupt_record_skipped(runner: LocalJobRunner, workspace: Path) -> None:
    job_id = runner.submit(_spec(workspace, "ok", "fine"))
    runner.wait(job_id, timeout=TIMEOUT_S)
    (workspace / "jobs" / "test-broken.json").write_text("{not json")

    listed = runner.list_jobs()

    assert [status.job_id for status in listed] == [job_id]


def test_record_written_as_json(runner: LocalJobRunner, workspace: Path) -> None:
    job_id = runner.submit(_spec(workspace, "ok", "record"))
    runner.wait(job_id, timeout=TIMEOUT_S)

    record = json.loads((workspace / "jobs" / f"{job_id}.json").read_text())

    assert record["state"] == "succeeded"
    assert record["spec"]["argv"][0] == "jobhelper"
    assert not list((workspace / "jobs").glob("*.tmp"))


def test_cancel_queued_job_updates_run_status(workspace: Path) -> None:
    runner = LocalJobRunner(workspace / "jobs", max_parallel=1, cancel_grace_s=5.0)
    first_id, _ = _start_running(runner, _spec(workspace, "sleep", "first"))
    second_spec = _spec(workspace, "ok", "second")
    second_spec.run_dir.mkdir(parents=True, exist_ok=True)
    (second_spec.run_dir / "status.json").write_text(json.dumps({"state": "queued"}))
    second_id = runner.submit(second_spec)

    runner.cancel(second_id)
    runner.cancel(first_id)
    runner.wait(first_id, timeout=TIMEOUT_S)

    assert json.loads((second_spec.run_dir / "status.json").read_text())["state"] == "cancelled"


def test_failed_job_updates_running_run(runner: LocalJobRunner, workspace: Path) -> None:
    spec = _spec(workspace, "crash", "crashing")
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    (spec.run_dir / "status.json").write_text(json.dumps({"state": "running"}))

    runner.wait(runner.submit(spec), timeout=TIMEOUT_S)
    status = json.loads((spec.run_dir / "status.json").read_text())

    assert status["state"] == "failed"
    assert "exit code" in status["error"].lower()


def test_finished_run_status_left_alone(runner: LocalJobRunner, workspace: Path) -> None:
    spec = _spec(workspace, "crash", "crashing")
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    (spec.run_dir / "status.json").write_text(json.dumps({"state": "failed", "error": "from training"}))

    runner.wait(runner.submit(spec), timeout=TIMEOUT_S)

    assert json.loads((spec.run_dir / "status.json").read_text())["error"] == "from training"
