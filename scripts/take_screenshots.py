"""Capture every dashboard page as a full-page PNG for the documentation.

The script starts the dashboard on a free local port against an artifacts folder and opens
each page in Debian's headless Chromium through Playwright. Once a page's figures, images and
spinners have settled, it saves `<page number>_<page>.png` into the output folder, numbered
like the files in `pages/`. Results, Explain and Compare show the newest runs with results.

    python scripts/take_screenshots.py --artifacts artifacts --out docs/screenshots

The artifacts folder is only read: the script neither starts jobs nor writes run files. The
dashboard's own caches (for example an explanation cached per run) may still be written there.
Run scripts/install_browser.sh first if /usr/bin/chromium is missing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from playwright.sync_api import Locator, Page, Route, expect, sync_playwright
from playwright.sync_api import Error as PlaywrightError

logger = logging.getLogger("take_screenshots")

REPO_ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
LOCAL_HOST = "127.0.0.1"
LONDON = "london"
EXPLAIN_PAGE = REPO_ROOT / "pages" / "7_explain.py"

SERVER_START_S = 90
SERVER_STOP_S = 15
POLL_S = 0.5
# A page counts as settled once its content height has not changed for this long.
STABLE_S = 1.5

# Browser-side counts of the elements that keep a page busy (spinners, stale elements, undrawn
# charts, loading images), plus the height of the scrolling main area.
BUSY_CHECK = """() => {
    const visible = (element) => element.offsetParent !== null;
    const spinners = [...document.querySelectorAll('[data-testid="stSpinner"], [data-testid="stSkeleton"]')];
    const charts = [...document.querySelectorAll('[data-testid="stPlotlyChart"]')];
    const images = [...document.querySelectorAll('main img')];
    return {
        spinners: spinners.filter(visible).length,
        stale: document.querySelectorAll('[data-stale="true"]').length,
        undrawnCharts: charts.filter((chart) => !chart.querySelector('svg.main-svg')).length,
        unloadedImages: images.filter((image) => !image.complete || image.naturalWidth === 0).length,
        height: document.querySelector('[data-testid="stMain"]')?.scrollHeight ?? 0,
    };
}"""
# Elements that st.error and an uncaught exception draw.
ERROR_SELECTOR = '[data-testid="stAlertContentError"], [data-testid="stException"]'


@dataclass(frozen=True)
class ShotSettings:
    """Artifacts folder, output folder, window size and wait limits of one screenshot session."""

    artifacts: Path
    out: Path
    width: int = 1400
    height: int = 1000
    page_timeout_s: float = 120.0
    explain_timeout_s: float = 600.0


@dataclass(frozen=True)
class RunChoice:
    """The runs that the Results, Explain and Compare pages show."""

    results: str | None
    compare: tuple[str, ...]


@dataclass(frozen=True)
class Shot:
    """One page to capture: its file name, address, title and the clicks that fill it."""

    name: str
    path: str
    title: str
    fill: Callable[[Page, Locator, ShotSettings], None] | None = None
    timeout_s: float | None = None


# ---------------------------------------------------------------------------------------------
# The server


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOCAL_HOST, 0))
        return int(probe.getsockname()[1])


def wait_for_health(url: str, server: subprocess.Popen, log: Path) -> None:
    """Poll the health endpoint until it returns "ok"; raise RuntimeError naming the log otherwise."""
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the dashboard exited with code {server.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().decode().strip() == "ok":
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(POLL_S)
    raise RuntimeError(f"the dashboard did not respond at {url} within {SERVER_START_S} s; see {log}")


@contextmanager
def dashboard_server(artifacts: Path, log: Path) -> Iterator[str]:
    """Run `streamlit run streamlit_app.py` on 127.0.0.1 against `artifacts`; yield its address."""
    port = free_port()
    env = {**os.environ, "FER_STUDIO_ARTIFACTS": str(artifacts), "FER_STUDIO_OFFLINE": "1"}
    command = [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port),
               "--server.address", LOCAL_HOST, "--server.headless", "true",
               "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
    with log.open("wb") as output:
        server = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=output,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    logger.info("started the dashboard (process %d) on port %d; its log is %s", server.pid, port, log)

    url = f"http://{LOCAL_HOST}:{port}"
    try:
        wait_for_health(url, server, log)
        yield url
    finally:
        stop_server(server)


def stop_server(server: subprocess.Popen) -> None:
    """Stop the server's process group: SIGTERM, then SIGKILL if it is still running."""
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=SERVER_STOP_S)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=SERVER_STOP_S)
    logger.info("stopped the dashboard")


# ---------------------------------------------------------------------------------------------
# Choosing runs


def read_json(path: Path) -> dict:
    """Return a JSON file's object, or an empty dict when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def choose_runs(artifacts: Path) -> RunChoice:
    """Pick the newest succeeded run for Results and the two newest runs with results for Compare.

    Runs without results fill the places that runs with results leave empty.
    """
    runs_dir = artifacts / "runs"
    folders = sorted((p for p in runs_dir.iterdir() if p.is_dir()), reverse=True) if runs_dir.is_dir() else []
    with_metrics = [p.name for p in folders if (p / "metrics.json").is_file()]
    succeeded = [name for name in with_metrics
                 if read_json(runs_dir / name / "status.json").get("state") == "succeeded"]
    without_metrics = [p.name for p in folders if p.name not in with_metrics]

    results = (succeeded + with_metrics + [None])[0]
    compare = tuple((with_metrics + without_metrics)[:2])
    logger.info("Results and Explain show %s; Compare shows %s", results or "no run", ", ".join(compare) or "no run")
    return RunChoice(results=results, compare=compare)


# ---------------------------------------------------------------------------------------------
# Filling pages


def choose_option(page: Page, main: Locator, label: str, option: str, timeout_ms: float) -> bool:
    """Choose `option` in the selectbox `label` if both exist; return whether it was chosen."""
    box = main.get_by_role("combobox", name=label, exact=True)
    expect(box.first).to_be_visible(timeout=timeout_ms)
    box.first.click()
    choice = page.get_by_role("option", name=option, exact=True)
    if choice.count() == 0:
        page.keyboard.press("Escape")
        logger.warning("%r offers no option %r", label, option)
        return False
    choice.click()
    return True


def fill_mask_preview(page: Page, main: Locator, settings: ShotSettings) -> None:
    """Select a London face and wait for its four masks."""
    timeout_ms = settings.page_timeout_s * 1000
    choose_option(page, main, "Data set", LONDON, timeout_ms)
    for caption in ("Face box and 68 landmarks", "Surgical", "Cloth", "N95", "KN95"):
        expect(main.get_by_text(caption, exact=True)).to_be_visible(timeout=timeout_ms)


def fill_datasets(page: Page, main: Locator, settings: ShotSettings) -> None:
    """Show the London data set and wait for its prepared faces, if it has any."""
    timeout_ms = settings.page_timeout_s * 1000
    choose_option(page, main, "Data set", LONDON, timeout_ms)
    expect(main.get_by_role("heading", name="Prepared faces")).to_be_visible(timeout=timeout_ms)


def fill_train(page: Page, main: Locator, settings: ShotSettings) -> None:
    """Choose the London data set and wait for the job queue."""
    timeout_ms = settings.page_timeout_s * 1000
    choose_option(page, main, "Data set", LONDON, timeout_ms)
    expect(main.get_by_role("heading", name="Job queue")).to_be_visible(timeout=timeout_ms)


def fill_results(page: Page, main: Locator, settings: ShotSettings) -> None:
    """Wait for the confusion matrix, or for the note that the run has no results yet."""
    timeout_ms = settings.page_timeout_s * 1000
    ready = main.get_by_test_id("stPlotlyChart").or_(main.get_by_text("has no results yet")).or_(
        main.get_by_text("No run yet."))
    expect(ready.first).to_be_visible(timeout=timeout_ms)


def fill_explain(page: Page, main: Locator, settings: ShotSettings) -> None:
    """Wait until the first face is explained, or until the page explains why no run can be."""
    timeout_ms = settings.explain_timeout_s * 1000
    ready = main.get_by_role("heading", name="Numbers and export").or_(
        main.get_by_text("No run has a finished fold yet")).or_(main.get_by_text("No run yet."))
    expect(ready.first).to_be_visible(timeout=timeout_ms)


# ---------------------------------------------------------------------------------------------
# Capturing


def wait_until_settled(page: Page, timeout_s: float) -> None:
    """Poll until no spinner, stale element, undrawn chart or loading image is left and the height holds."""
    deadline = time.monotonic() + timeout_s
    last_height, stable_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        state = page.evaluate(BUSY_CHECK)
        busy = state["spinners"] or state["stale"] or state["undrawnCharts"] or state["unloadedImages"]
        if busy or state["height"] != last_height:
            last_height, stable_since = state["height"], time.monotonic()
        elif time.monotonic() - stable_since >= STABLE_S:
            return
        time.sleep(POLL_S)
    logger.warning("%s still changed after %.0f s: %s", page.url, timeout_s, page.evaluate(BUSY_CHECK))


def save_full_page(page: Page, path: Path, settings: ShotSettings, timeout_s: float) -> None:
    """Grow the window to the whole content, because Streamlit scrolls inside its main area, and save a PNG."""
    # A widget that keeps the focus after a click is drawn with a highlighted border.
    page.evaluate("() => document.activeElement?.blur()")
    wait_until_settled(page, timeout_s)
    height = int(page.evaluate(BUSY_CHECK)["height"])
    page.set_viewport_size({"width": settings.width, "height": max(settings.height, height)})
    wait_until_settled(page, timeout_s)
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size({"width": settings.width, "height": settings.height})


def describe_errors(main: Locator) -> list[str]:
    """Return the text of every error box on the page."""
    return [text.strip()[:300] for text in main.locator(ERROR_SELECTOR).all_inner_texts()]


def capture(page: Page, url: str, shot: Shot, settings: ShotSettings) -> bool:
    """Open one page, fill it, save its PNG and return True when it shows no error box."""
    timeout_s = shot.timeout_s or settings.page_timeout_s
    page.goto(f"{url}/{shot.path}")
    expect(page.get_by_role("heading", name=shot.title, level=1)).to_be_visible(timeout=timeout_s * 1000)
    main = page.get_by_role("main")
    if shot.fill is not None:
        shot.fill(page, main, settings)

    path = settings.out / f"{shot.name}.png"
    save_full_page(page, path, settings, timeout_s)
    errors = describe_errors(main)
    for error in errors:
        logger.warning("%s shows an error: %s", shot.name, error)
    logger.info("saved %s%s", path, f" with {len(errors)} error boxes" if errors else "")
    return not errors


def allow_local_only(route: Route) -> None:
    """Let requests to the local dashboard through and abort any request to another host."""
    if urlsplit(route.request.url).hostname == LOCAL_HOST:
        route.continue_()
        return
    logger.info("blocked a request to %s", route.request.url)
    route.abort()


def build_shots(runs: RunChoice, settings: ShotSettings) -> list[Shot]:
    """Return the pages to capture, in the order of the files in pages/."""
    results_query = f"?run={runs.results}" if runs.results else ""
    shots = [
        Shot("1_home", "", "Masked FER Studio"),
        Shot("2_mask_preview", "mask_preview", "Mask preview", fill_mask_preview),
        Shot("3_datasets", "datasets", "Data sets", fill_datasets),
        Shot("4_train", "train", "Train", fill_train),
        Shot("5_runs", "runs", "Runs"),
        Shot("6_results", f"results{results_query}", "Results", fill_results),
    ]
    if EXPLAIN_PAGE.is_file():
        explain_query = f"?runs={runs.results}" if runs.results else ""
        shots.append(Shot("7_explain", f"explain{explain_query}", "Explain", fill_explain,
                          timeout_s=settings.explain_timeout_s))
    compare_query = f"?runs={','.join(runs.compare)}" if runs.compare else ""
    shots.append(Shot("8_compare", f"compare{compare_query}", "Compare"))
    return shots


def take_screenshots(settings: ShotSettings) -> dict[str, bool]:
    """Start the dashboard, capture every page and return, per PNG name, whether it showed no error."""
    if not CHROMIUM.is_file():
        raise FileNotFoundError(f"Chromium is missing at {CHROMIUM}: run scripts/install_browser.sh")
    settings.out.mkdir(parents=True, exist_ok=True)
    shots = build_shots(choose_runs(settings.artifacts), settings)

    outcome = {}
    log = Path(tempfile.mkdtemp(prefix="fer-studio-screenshots-")) / "server.log"
    with dashboard_server(settings.artifacts, log) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": settings.width, "height": settings.height})
        context.route("**/*", allow_local_only)
        page = context.new_page()
        for shot in shots:
            try:
                outcome[shot.name] = capture(page, url, shot, settings)
            except (PlaywrightError, AssertionError) as error:
                logger.error("%s was not captured: %s", shot.name, str(error).splitlines()[0])
                outcome[shot.name] = False
        browser.close()
    return outcome


def parse_args(argv: list[str] | None = None) -> ShotSettings:
    """Read the command line into ShotSettings."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", type=Path, default=REPO_ROOT / "artifacts",
                        help="artifacts folder the dashboard reads (default: the repository's artifacts/)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "screenshots",
                        help="folder for the PNG files (default: docs/screenshots)")
    parser.add_argument("--width", type=int, default=1400, help="browser window width in pixels (default: 1400)")
    parser.add_argument("--page-timeout", type=float, default=120.0,
                        help="seconds to wait for each page to settle (default: 120)")
    parser.add_argument("--explain-timeout", type=float, default=600.0,
                        help="seconds to wait for the Explain page's CAM and LIME maps (default: 600)")
    args = parser.parse_args(argv)
    if not args.artifacts.is_dir():
        parser.error(f"artifacts folder {args.artifacts} does not exist")
    return ShotSettings(artifacts=args.artifacts.resolve(), out=args.out.resolve(), width=args.width,
                        page_timeout_s=args.page_timeout, explain_timeout_s=args.explain_timeout)


def main(argv: list[str] | None = None) -> int:
    """Capture the screenshots; return 1 when a page failed or showed an error box."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    outcome = take_screenshots(parse_args(argv))
    failed = [name for name, clean in outcome.items() if not clean]
    if failed:
        logger.warning("check these screenshots: %s", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
