"""End-to-end test of the dashboard in headless Chromium: add, prepare, train and read one run.

A real Streamlit server runs against a fresh artifacts folder, and Playwright drives Debian's
Chromium through the pages as a user would. It adds a folder data set of real London faces and
prepares it in the background. It then trains SqueezeNet from scratch for two epochs on one
hold-out fold, reloads the Runs page while the job runs, and opens the run's results.
Run `scripts/install_browser.sh` first: the test fails without /usr/bin/chromium.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Locator, Page, Route, expect, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from fer_core.jobs import JobState, get_runner
from fer_core.paths import PROJECT_ROOT

logger = logging.getLogger(__name__)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
VIEWPORT = {"width": 1400, "height": 1000}
LOCAL_HOST = "127.0.0.1"

DATASET_NAME = "london_tiny"
SUBJECTS = ("001", "002", "003", "004", "005", "006")
# London file names are <subject>_<pose>.jpg: pose 03 is the neutral photograph, 08 the smiling one.
LONDON_FOLDERS = {"neutral": ("neutral", "03"), "happy": ("smiling", "08")}
SUBJECT_PATTERN = r"^(?P<subject>\d{3})_"
MASK_COPIES = 5
GRID_ROWS = 6
# Two epochs keep the job running for a few seconds after its first progress report, long
# enough for the reloaded Runs page to find it still running.
EPOCHS = 2

# Seconds to wait for each stage; the first job of a fresh process loads torch, MTCNN and dlib.
SERVER_START_S = 90
PAGE_LOAD_MS = 60_000
WIDGET_MS = 30_000
PREPARE_MS = 240_000
TRAIN_START_MS = 180_000
TRAIN_FINISH_MS = 300_000
JOB_STOP_S = 30
SERVER_STOP_S = 15
POLL_S = 0.5


@dataclass(frozen=True)
class Dashboard:
    """A running dashboard server: its address, artifacts folder and log file."""

    url: str
    artifacts: Path
    log: Path

    @property
    def runs(self) -> Path:
        """Return the folder that the server writes training runs into."""
        return self.artifacts / "runs"

    @property
    def jobs(self) -> Path:
        """Return the folder of the server's background job records."""
        return self.artifacts / "jobs"


# ---------------------------------------------------------------------------------------------
# The server


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOCAL_HOST, 0))
        return int(probe.getsockname()[1])


def _log_tail(log: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


def _wait_for_health(url: str, server: subprocess.Popen, log: Path) -> None:
    """Poll the server's health endpoint until it returns "ok"; fail with the log if it never does."""
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the dashboard server exited with code {server.returncode}:\n{_log_tail(log)}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().decode().strip() == "ok":
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(POLL_S)
    pytest.fail(f"the dashboard server did not respond at {url} within {SERVER_START_S} s:\n{_log_tail(log)}")


def _cancel_jobs(jobs_dir: Path) -> None:
    """Cancel every job the server left queued or running and wait until each has ended."""
    if not jobs_dir.is_dir():
        return
    runner = get_runner(jobs_dir)
    left = [status for status in runner.list_jobs() if not status.state.is_final]

    # Newest first, so that no queued job starts when an older running job ends.
    for status in reversed(left):
        logger.info("cancelling job %s (%s) left by the dashboard test", status.job_id, status.state.value)
        runner.cancel(status.job_id)
    for status in left:
        runner.wait(status.job_id, timeout=JOB_STOP_S)


def _stop_server(server: subprocess.Popen) -> None:
    """Stop the server's process group: SIGTERM, then SIGKILL if it is still running."""
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=SERVER_STOP_S)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=SERVER_STOP_S)


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    """Start `streamlit run streamlit_app.py` on a free local port with a fresh artifacts folder."""
    folder = tmp_path_factory.mktemp("dashboard")
    artifacts = folder / "artifacts"
    artifacts.mkdir()
    log = folder / "server.log"
    port = _free_port()
    env = {**os.environ, "FER_STUDIO_ARTIFACTS": str(artifacts), "FER_STUDIO_OFFLINE": "1"}
    command = [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port),
               "--server.address", LOCAL_HOST, "--server.headless", "true",
               "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]

    with log.open("wb") as output:
        server = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=output,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://{LOCAL_HOST}:{port}"
    try:
        _wait_for_health(url, server, log)
        yield Dashboard(url=url, artifacts=artifacts, log=log)
    finally:
        _stop_server(server)
        _cancel_jobs(artifacts / "jobs")


# ---------------------------------------------------------------------------------------------
# The browser


def _allow_local_only(route: Route) -> None:
    """Let requests to the local server through and abort any request to another host."""
    if urlsplit(route.request.url).hostname == LOCAL_HOST:
        route.continue_()
        return
    logger.info("blocked a request to %s", route.request.url)
    route.abort()


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Return Debian's Chromium; fail with the install command when it is missing.

    Session scope makes this check run before the module's server starts.
    """
    if not CHROMIUM.is_file():
        pytest.fail(f"Chromium is missing at {CHROMIUM}: run scripts/install_browser.sh to install it "
                    "(the browser tests need it).")
    return CHROMIUM


@pytest.fixture(scope="module")
def browser(chromium: Path) -> Iterator[Browser]:
    """Launch headless Chromium through Playwright."""
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture()
def page(browser: Browser, tmp_path: Path) -> Iterator[Page]:
    """Open a page that can reach only the local server; keep a screenshot of its last view."""
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    context.route("**/*", _allow_local_only)
    opened = context.new_page()
    yield opened

    try:
        opened.screenshot(path=str(tmp_path / "last_page.png"))
    except PlaywrightError as error:
        logger.warning("no screenshot of the last page: %s", error)
    context.close()


# ---------------------------------------------------------------------------------------------
# The data set


@pytest.fixture()
def face_folder(tmp_path: Path, london_root: Path) -> Path:
    """Copy six London subjects into `<root>/neutral/` and `<root>/happy/`, keeping their file names."""
    root = tmp_path / "faces"
    for emotion, (london_folder, pose) in LONDON_FOLDERS.items():
        (root / emotion).mkdir(parents=True)
        for subject in SUBJECTS:
            name = f"{subject}_{pose}.jpg"
            shutil.copyfile(london_root / london_folder / name, root / emotion / name)
    return root


# ---------------------------------------------------------------------------------------------
# Steps


def _open(page: Page, dashboard: Dashboard, path: str, title: str) -> Locator:
    page.goto(f"{dashboard.url}/{path}")
    return _main_of(page, title)


def _main_of(page: Page, title: str) -> Locator:
    """Wait for a page's title heading and return its main area."""
    expect(page.get_by_role("heading", name=title, level=1)).to_be_visible(timeout=PAGE_LOAD_MS)
    return page.get_by_role("main")


def _choose(page: Page, main: Locator, label: str, option: str) -> None:
    """Choose an option of a selectbox by its label."""
    main.get_by_role("combobox", name=label, exact=True).click()
    page.get_by_role("option", name=option, exact=True).click()


def _set_number(main: Locator, label: str, value: int) -> None:
    box = main.get_by_role("spinbutton", name=label, exact=True)
    box.fill(str(value))
    box.press("Enter")
    expect(box).to_have_value(str(value), timeout=WIDGET_MS)


def add_dataset(page: Page, dashboard: Dashboard, folder: Path) -> Locator:
    """Register the face folder on the Data sets page; return the page's main area."""
    main = _open(page, dashboard, "datasets", "Data sets")
    name_box = main.get_by_role("textbox", name="Name", exact=True)
    expander = main.get_by_text("Add a data set", exact=True)
    expect(expander).to_be_visible(timeout=WIDGET_MS)
    if not name_box.is_visible():
        expander.click()

    name_box.fill(DATASET_NAME)
    main.get_by_role("textbox", name="Folder (or fer2013.csv file)").fill(str(folder))
    expect(main.get_by_role("combobox", name="Layout")).to_have_value(re.compile(r"^folder:"))
    main.get_by_role("textbox", name="Subject pattern").fill(SUBJECT_PATTERN)
    main.get_by_role("button", name="Check and add").click()

    photographs = len(SUBJECTS) * len(LONDON_FOLDERS)
    added = f"Added {DATASET_NAME}: {photographs} images, with subject ids; 0 files skipped."
    expect(main.get_by_text(added)).to_be_visible(timeout=PAGE_LOAD_MS)
    return main


def prepare_dataset(main: Locator) -> Locator:
    """Start the preparation and wait for the prepared face grid; return the grid's tab panel."""
    expect(main.get_by_text(f"{DATASET_NAME} has not been prepared yet.")).to_be_visible(timeout=WIDGET_MS)
    main.get_by_role("button", name="Prepare", exact=True).click()
    expect(main.get_by_role("tab", name="Faces")).to_be_visible(timeout=PREPARE_MS)
    return main.get_by_role("tabpanel", name="Faces")


def launch_training(page: Page) -> str:
    """Fill the Train form for one short SqueezeNet PD run, start it and return its run id."""
    page.get_by_role("link", name="Train", exact=True).click()
    main = _main_of(page, "Train")
    _choose(page, main, "Data set", DATASET_NAME)
    expect(main.get_by_role("combobox", name="Prepared set")).to_be_visible(timeout=WIDGET_MS)

    # Pretrained weights cannot be downloaded here, so the run trains from scratch.
    main.get_by_text("Start from pretrained weights", exact=True).click()
    expect(main.get_by_role("switch", name="Start from pretrained weights")).not_to_be_checked(timeout=WIDGET_MS)
    _set_number(main, "Epochs", EPOCHS)
    _set_number(main, "Folds", 1)
    expect(main.get_by_role("alert"), "the Train page shows a warning or an error").to_have_count(0, timeout=WIDGET_MS)

    main.get_by_role("button", name="Start 1 run").click()
    queued = main.get_by_text(re.compile(r"^Queued \S+\. Follow the progress"))
    expect(queued).to_be_visible(timeout=PAGE_LOAD_MS)
    return queued.inner_text().split()[1].rstrip(".")


def event_count(run_dir: Path) -> int:
    """Return how many complete lines the run's events.jsonl has."""
    path = run_dir / "events.jsonl"
    if not path.is_file():
        return 0
    return path.read_text(encoding="utf-8").count("\n")


def run_state(run_dir: Path) -> str:
    """Return the state recorded in the run's status.json."""
    return str(json.loads((run_dir / "status.json").read_text(encoding="utf-8"))["state"])


def epochs_recorded(run_dir: Path) -> list[int]:
    """Return the epoch numbers of the run's `epoch` events, in file order."""
    lines = (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()
    events = [json.loads(line) for line in lines if line.strip()]
    return [int(event["epoch"]) for event in events if event["event"] == "epoch"]


def wait_for_more_events(run_dir: Path, known: int, timeout_s: float) -> int:
    """Poll events.jsonl until it has more than `known` lines; return the new count."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        count = event_count(run_dir)
        if count > known:
            return count
        time.sleep(POLL_S)
    pytest.fail(f"{run_dir / 'events.jsonl'} stayed at {known} lines for {timeout_s} s")


def expect_live_run(main: Locator, run_id: str, timeout_ms: float) -> None:
    """Wait until the Runs page shows the run under "Running now" with a progress bar.

    Only the live card writes the run id as text; the run table draws its cells on a canvas.
    """
    expect(main.get_by_text(run_id, exact=True)).to_be_visible(timeout=timeout_ms)
    expect(main.get_by_role("progressbar")).to_be_visible(timeout=timeout_ms)


def read_csv_download(page: Page, button: Locator) -> list[dict[str, str]]:
    """Click a download button and return the rows of the CSV file it delivers."""
    with page.expect_download(timeout=WIDGET_MS) as download:
        button.click()
    with open(download.value.path(), encoding="utf-8", newline="") as stream:
        return list(csv.DictReader(stream))


def chart_titled(main: Locator, title: str) -> Locator:
    """Return the Plotly chart whose drawn text includes `title`."""
    return main.get_by_test_id("stPlotlyChart").filter(has_text=title)


def _same_score(downloaded: str, stored: float | None) -> bool:
    if stored is None or (isinstance(stored, float) and math.isnan(stored)):
        return downloaded == ""
    return downloaded != "" and math.isclose(float(downloaded), stored, rel_tol=1e-9)


# ---------------------------------------------------------------------------------------------
# The test


def test_dashboard_train_flow(page: Page, dashboard: Dashboard, face_folder: Path) -> None:
    # Data sets: add the folder, prepare it and see the prepared faces.
    main = add_dataset(page, dashboard, face_folder)
    faces = prepare_dataset(main)
    expect(faces.get_by_text("happy/001_08", exact=True)).to_be_visible(timeout=WIDGET_MS)
    expect(faces.get_by_test_id("stImage")).to_have_count(GRID_ROWS * MASK_COPIES, timeout=WIDGET_MS)
    expect(main.get_by_role("tab", name="Report (0 files)")).to_be_visible()

    # Train: launch one run, then follow it on the Runs page.
    run_id = launch_training(page)
    run_dir = dashboard.runs / run_id
    assert run_dir.is_dir(), f"the Train page reported run {run_id}, but {run_dir} does not exist"
    page.get_by_role("link", name="Open Runs").click()
    main = _main_of(page, "Runs")
    expect_live_run(main, run_id, TRAIN_START_MS)

    # A reload opens a new browser session; the job runs on in its own process.
    events_before = event_count(run_dir)
    page.reload()
    main = _main_of(page, "Runs")
    expect_live_run(main, run_id, PAGE_LOAD_MS)
    assert run_state(run_dir) == "running"
    wait_for_more_events(run_dir, events_before, TRAIN_FINISH_MS / 1000)

    expect(main.get_by_text("No run is queued or running.")).to_be_visible(timeout=TRAIN_FINISH_MS)
    assert run_state(run_dir) == "succeeded"
    assert epochs_recorded(run_dir) == list(range(1, EPOCHS + 1))
    # The run records its end before the job's process has exited, so wait for the job record.
    runner = get_runner(dashboard.jobs)
    assert runner.wait(runner.list_jobs()[-1].job_id, timeout=60).state is JobState.SUCCEEDED

    # Results: the confusion matrix and the per-class precision of the finished run.
    page.get_by_role("link", name="Results", exact=True).click()
    main = _main_of(page, "Results")
    expect(main.get_by_role("combobox", name="Run")).to_have_value(f"{run_id} (succeeded)", timeout=WIDGET_MS)
    confusion = chart_titled(main, "Confusion matrix (share of each true class)")
    expect(confusion).to_be_visible(timeout=PAGE_LOAD_MS)
    expect(confusion.get_by_text("predicted", exact=True)).to_be_visible()
    expect(confusion.get_by_text("true", exact=True)).to_be_visible()

    main.get_by_role("tab", name="Per class").click()
    per_class = main.get_by_role("tabpanel", name="Per class")
    chart = chart_titled(per_class, "Per-class metrics")
    expect(chart).to_be_visible(timeout=PAGE_LOAD_MS)
    expect(chart.get_by_text("Precision", exact=True)).to_be_visible()

    rows = read_csv_download(page, per_class.get_by_role("button", name="Table (CSV)"))
    stored = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))["per_class"]
    assert sorted(row["class"] for row in rows) == sorted(stored)
    for row in rows:
        assert _same_score(row["precision"], stored[row["class"]]["precision"]), (
            f"precision of {row['class']}: page {row['precision']!r}, metrics.json "
            f"{stored[row['class']]['precision']!r}")
