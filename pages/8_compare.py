"""Compare page: several runs side by side: metrics, differing settings, curves and per-class scores."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from fer_core.dashboard import cache, figures, results, widgets
from fer_core.paths import runs_root

DEFAULT_SELECTION = 2
CURVE_COLUMNS = {"test_accuracy": "Test accuracy", "train_accuracy": "Training accuracy",
                 "test_loss": "Test loss", "train_loss": "Training loss"}
PER_CLASS_METRICS = ("f1", "precision", "recall", "specificity", "auc")


def runs_ui(run_ids: list[str]) -> list[str]:
    """Let the user choose runs; `?runs=a,b` in the address preselects them."""
    requested = [r for r in st.query_params.get("runs", "").split(",") if r in run_ids]
    chosen = st.multiselect("Runs to compare", run_ids, default=requested or run_ids[:DEFAULT_SELECTION],
                            key="compare-runs")
    st.query_params["runs"] = ",".join(chosen)
    return chosen


def load_runs(run_ids: list[str]) -> tuple[dict[str, dict], dict[str, dict]]:
    """Return the settings and metrics of each run (metrics only for runs that have them)."""
    settings = {r: cache.read_json(runs_root() / r / "settings.json") or {} for r in run_ids}
    metrics = {r: m for r in run_ids if (m := cache.read_json(runs_root() / r / "metrics.json"))}
    return settings, metrics


def metrics_section(settings: dict[str, dict], metrics: dict[str, dict]) -> None:
    """Draw one row of headline numbers per run."""
    st.subheader("Metrics")
    table = pd.DataFrame([results.summary_row(r, metrics.get(r), settings[r]) for r in settings])
    percent = st.column_config.NumberColumn(format="percent")
    widgets.show_table(table, "compare_metrics", key="compare-metrics", column_config={
        name: percent for name in ("accuracy", "fold mean", "fold std", "unmasked accuracy", "masked accuracy")})
    missing = [r for r in settings if r not in metrics]
    if missing:
        st.caption("No results yet for: " + ", ".join(missing))


def settings_section(settings: dict[str, dict]) -> None:
    """Draw only the settings that differ between the runs."""
    st.subheader("Settings that differ")
    diff = results.settings_diff(settings)
    if diff.empty:
        st.caption("All settings are equal.")
        return
    widgets.show_table(diff, "compare_settings", key="compare-settings")


def curves_section(run_ids: list[str]) -> None:
    """Draw one curve per run, averaged over folds."""
    st.subheader("Training curves")
    column = st.selectbox("Curve", list(CURVE_COLUMNS), format_func=CURVE_COLUMNS.get, key="compare-curve")
    curves = {r: results.epoch_frame(cache.run_events(runs_root() / r)) for r in run_ids}
    if all(frame.empty for frame in curves.values()):
        st.caption("No epoch has finished in these runs yet.")
        return
    figure = figures.overlaid_curves(curves, column, f"{CURVE_COLUMNS[column]} (mean over folds)")
    widgets.show_figure(figure, f"compare_{column}", key="compare-curves")


def per_class_section(metrics: dict[str, dict]) -> None:
    """Draw per-class bars and accuracy per mask type for every run with results."""
    st.subheader("Per emotion and per mask type")
    metric = st.selectbox("Per-class metric", PER_CLASS_METRICS, key="compare-metric",
                          format_func=lambda m: figures.METRIC_TITLES.get(m, m.upper()))
    tables = {r: results.per_class_frame(m) for r, m in metrics.items()}
    widgets.show_figure(figures.compare_per_class(tables, metric), f"compare_per_class_{metric}",
                        key="compare-per-class")
    accuracy = {r: results.mask_type_accuracy(m) for r, m in metrics.items()}
    widgets.show_figure(figures.compare_groups(accuracy, "Accuracy per mask type", "mask type"),
                        "compare_mask_types", key="compare-masks")


def main() -> None:
    """Draw the compare page."""
    widgets.page_intro("Compare", "Put runs side by side: which backbone, protocol or mask choice works best.")
    runs = cache.runs_table()
    if runs.empty:
        st.info("No run yet. Start runs on the Train page, then compare them here.")
        return

    chosen = runs_ui(list(runs["run_id"].astype(str)))
    if len(chosen) < 2:
        st.info("Choose at least two runs.")
        return
    settings, metrics = load_runs(chosen)
    metrics_section(settings, metrics)
    settings_section(settings)
    curves_section(chosen)
    if metrics:
        per_class_section(metrics)


main()
