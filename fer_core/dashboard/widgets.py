"""Drawing helpers that several dashboard pages share: figures and tables with downloads.

Every figure is drawn as an interactive Plotly chart, whose modebar camera icon saves a PNG in
the browser. Buttons below it download the figure as interactive HTML, and as PNG where kaleido
can render here. Every table gets a CSV button. Download contents are built only when the
button is clicked.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from fer_core.dashboard import cache, exports, preparation
from fer_core.datasets import LONDON_CREDIT
from fer_core.jobs import JobConflictError, JobState
from fer_core.paths import jobs_root

if TYPE_CHECKING:
    from fer_core.prepare import PrepareSettings

logger = logging.getLogger(__name__)



def file_stem(text: str) -> str:
    """Turn a title such as "Confusion matrix (run 3)" into a file name stem."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_").lower() or "download"


def _plotly_config(name: str) -> dict:
    return {"displaylogo": False, "toImageButtonOptions": {"format": "png", "filename": file_stem(name), "scale": 2}}


def show_figure(figure: go.Figure, name: str, key: str) -> None:
    """Draw a Plotly figure with HTML (and, where possible, PNG) download buttons."""
    st.plotly_chart(figure, key=f"{key}-chart", config=_plotly_config(name))

    stem = file_stem(name)
    row = st.container(horizontal=True)
    row.download_button("Figure (HTML)", data=lambda: exports.figure_html(figure), file_name=f"{stem}.html",
                        mime="text/html", key=f"{key}-html", on_click="ignore", icon=":material/download:",
                        help="Interactive figure as one HTML file that opens offline in any browser.")
    if exports.png_export_available():
        row.download_button("Figure (PNG)", data=lambda: exports.figure_png(figure), file_name=f"{stem}.png",
                            mime="image/png", key=f"{key}-png", on_click="ignore", icon=":material/download:")


def show_table(frame: pd.DataFrame, name: str, key: str, **dataframe_options: object) -> None:
    """Draw a table with a CSV download button under it."""
    st.dataframe(frame, hide_index=True, key=f"{key}-table", placeholder="", **dataframe_options)
    st.download_button("Table (CSV)", data=lambda: exports.table_csv(frame), file_name=f"{file_stem(name)}.csv",
                       mime="text/csv", key=f"{key}-csv", on_click="ignore", icon=":material/download:")


def london_credit() -> None:
    """Draw the attribution that must accompany any London face shown."""
    st.caption(LONDON_CREDIT)


def credit_if_london(dataset_name: str | None) -> None:
    """Draw the London attribution when the shown faces come from that data set."""
    if dataset_name and "london" in dataset_name.lower():
        london_credit()


def page_intro(title: str, text: str) -> None:
    """Draw the page title and a short line saying what the page is for."""
    leave_legacy_page_mode()
    st.title(title)
    st.caption(text)


def prepare_button(dataset_name: str, settings: PrepareSettings, label: str, key: str) -> None:
    """Draw a button that queues the data set's preparation, and the preparation's progress."""
    if st.button(label, type="primary", key=key, icon=":material/play_arrow:"):
        try:
            preparation.submit_preparation(jobs_root(), dataset_name, settings)
        except (JobConflictError, ValueError, OSError) as error:
            logger.warning("preparation of %s was not queued: %s", dataset_name, error)
            st.error(f"The preparation was not started: {error}")
    preparation_status(dataset_name)


@st.fragment(run_every=2)
def preparation_status(dataset_name: str) -> None:
    """Draw the latest preparation of a data set; refreshes every 2 seconds.

    When a preparation that this session saw running ends, the whole page reruns once so
    the new prepared set appears.
    """
    progress = preparation.latest_preparation(jobs_root(), dataset_name)
    if progress is None:
        return

    status = progress.status
    watched = st.session_state.setdefault("preparations-watched", set())
    if not status.state.is_final:
        watched.add(status.job_id)
        if status.state is JobState.QUEUED:
            text = "queued until the running job ends"
        elif progress.total:
            text = f"{progress.done} of {progress.total} photographs"
        else:
            text = "loading the data set and the face models"
        st.progress(progress.fraction, text=f"Preparing {dataset_name}: {text}")
        return

    if status.job_id in watched:
        watched.discard(status.job_id)
        cache.clear_prepared_caches()
        st.rerun(scope="app")
    finished = f"{status.finished_at:%Y-%m-%d %H:%M} UTC" if status.finished_at else "earlier"
    if status.state is JobState.FAILED or status.state is JobState.INTERRUPTED:
        st.error(f"The last preparation of {dataset_name} ({finished}) {status.state.value}: {status.error}")
    else:
        st.caption(f"The last preparation of {dataset_name} {status.state.value} ({finished}).")


def leave_legacy_page_mode() -> None:
    """Rerun through `streamlit_app.py` when Streamlit served this page in its legacy pages/ mode.

    Streamlit starts in its old multipage mode whenever a `pages/` folder sits next to the main
    script, and leaves it only once the main script has called `st.navigation`. A freshly
    started server whose first request opens a page other than the home page (a bookmark, or a
    browser tab reconnecting after a restart) runs that page without the app's navigation and
    layout. It then stays in that mode for every visitor. This function clears Streamlit's flag
    and reruns, so the main script builds the navigation and runs the same page.
    """
    # NOTE: PagesManager.uses_pages_directory is Streamlit-internal (checked against 1.67.0).
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        logger.info("leaving Streamlit's legacy pages/ mode; rerunning through the main script")
        PagesManager.uses_pages_directory = False
        st.rerun()
