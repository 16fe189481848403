"""Runs page: every training run with filters, live progress of running ones, errors of failed ones."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from fer_core.dashboard import cache, figures, results, widgets
from fer_core.paths import runs_root
from fer_core.runs import RunState

LIVE_STATES = (RunState.QUEUED.value, RunState.RUNNING.value)
PROBLEM_STATES = (RunState.FAILED.value, RunState.INTERRUPTED.value)
FILTERS = (("status", "Status"), ("dataset", "Data set"), ("backbone", "Backbone"), ("protocol", "Protocol"))


def display_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Return the run list with readable column names, durations and a link to the results.

    The problem column appears only when some run folder is incomplete.
    """
    table = pd.DataFrame({
        "run id": runs["run_id"],
        "status": runs["status"],
        "data set": runs["dataset"],
        "backbone": runs["backbone"],
        "protocol": runs["protocol"].str.upper(),
        "started": pd.to_datetime(runs["started"], errors="coerce", utc=True).dt.tz_convert(None),
        "duration": runs["duration_seconds"].map(results.format_seconds),
        "accuracy": pd.to_numeric(runs["accuracy"], errors="coerce"),
        "results": "results?run=" + runs["run_id"],
        "problem": runs["problem"].fillna(""),
    })
    return table if table["problem"].str.len().any() else table.drop(columns="problem")


def filters_ui(runs: pd.DataFrame) -> pd.DataFrame:
    """Draw one multiselect per column; return the runs that match every filter."""
    columns = st.columns(len(FILTERS))
    mask = pd.Series(True, index=runs.index)
    for column, (field, title) in zip(columns, FILTERS):
        options = sorted(runs[field].dropna().astype(str).unique())
        chosen = column.multiselect(title, options, key=f"runs-filter-{field}", placeholder="all")
        if chosen:
            mask &= runs[field].astype(str).isin(chosen)
    return runs[mask]


def runs_section(runs: pd.DataFrame) -> None:
    """Draw the filtered run table with a CSV download."""
    shown = filters_ui(runs)
    st.caption(f"{len(shown)} of {len(runs)} runs")
    widgets.show_table(display_table(shown), "runs", key="runs", column_config={
        "accuracy": st.column_config.NumberColumn(format="percent"),
        "started": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm", help="UTC"),
        "results": st.column_config.LinkColumn(display_text="open"),
    })


def live_run(run_id: str) -> None:
    """Draw one running or queued run: progress bar, latest numbers and curves."""
    run_dir = runs_root() / run_id
    events = cache.run_events(run_dir)
    summary = results.progress_summary(events)
    with st.container(border=True):
        st.markdown(f"**{run_id}**")
        if not events:
            st.caption("Queued or loading data: no progress reported yet.")
            return
        fold_text = f"fold {summary['fold_position']} of {summary['folds']}" if summary["fold_position"] else "starting"
        epoch_text = f"epoch {summary['epoch']} of {summary['epochs']}" if summary["epochs"] else ""
        eta = results.format_seconds(summary["eta_seconds"])
        st.progress(results.overall_progress(summary),
                    text=", ".join(filter(None, [fold_text, epoch_text, f"about {eta} left" if eta else ""])))
        columns = st.columns(2)
        if summary["train_loss"] is not None:
            columns[0].metric("Training loss", f"{summary['train_loss']:.4f}")
        if summary["test_accuracy"] is not None:
            columns[1].metric("Test accuracy", f"{summary['test_accuracy']:.1%}")
        epochs = results.epoch_frame(events)
        if not epochs.empty:
            widgets.show_figure(figures.training_curves(epochs), f"{run_id}_training_curves", key=f"live-{run_id}")


def live_section(runs: pd.DataFrame) -> None:
    """Draw the runs that are queued or running."""
    live = runs[runs["status"].isin(LIVE_STATES)]
    st.subheader("Running now")
    if live.empty:
        st.caption("No run is queued or running.")
        return
    for run_id in live["run_id"]:
        live_run(str(run_id))


def problems_section(runs: pd.DataFrame) -> None:
    """Draw the error of every failed or interrupted run."""
    failed = runs[runs["status"].isin(PROBLEM_STATES) | runs["problem"].notna()]
    if failed.empty:
        return
    st.subheader("Failed and interrupted runs")
    for row in failed.itertuples(index=False):
        run_dir = runs_root() / str(row.run_id)
        status = cache.read_json(run_dir / "status.json") or {}
        summary = results.progress_summary(cache.run_events(run_dir))
        message = status.get("error") or summary["error"] or row.problem or "The process ended without a message."
        with st.expander(f"{row.run_id}: {row.status}"):
            st.error(message)
            if row.status in PROBLEM_STATES:
                st.caption("Resume it from the job queue on the Train page; finished epochs are kept.")


@st.fragment(run_every=2)
def runs_fragment() -> None:
    """Draw live progress, the run table and failures; refreshes every 2 seconds."""
    runs = cache.runs_table()
    live_section(runs)
    st.subheader("All runs")
    runs_section(runs)
    problems_section(runs)


def main() -> None:
    """Draw the runs page."""
    widgets.page_intro("Runs", "Every training run, its progress and its outcome.")
    if cache.runs_table().empty:
        st.info("No training run yet. Start one on the Train page.")
        st.page_link("pages/4_train.py", label="Open Train", icon=":material/model_training:")
        return
    runs_fragment()


main()
