"""Results page: metrics, confusion matrix, per-class and per-mask scores and mistakes of one run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from fer_core.constants import MaskType
from fer_core.dashboard import cache, exports, figures, results, widgets
from fer_core.paths import runs_root

GALLERY_SIZE = 12
GALLERY_COLUMNS = 6
# Weights above this size are left out of the run export unless the user ticks them in.
LARGE_EXPORT_MB = 500


def run_ui(runs: pd.DataFrame) -> str:
    """Let the user choose a run; `?run=<id>` in the address preselects it and follows the choice."""
    ids = list(runs["run_id"].astype(str))
    requested = st.query_params.get("run")
    if requested and requested not in ids:
        st.warning(f"Run {requested} was not found; showing the newest run instead.")
    labels = runs.set_index(runs["run_id"].astype(str))
    run_id = st.selectbox(
        "Run", ids, index=ids.index(requested) if requested in ids else 0, key="results-run",
        format_func=lambda r: f"{r} ({labels.at[r, 'status']})",
    )
    st.query_params["run"] = run_id
    return run_id


def headline(run_id: str, metrics: dict, settings: dict) -> None:
    """Draw the run's headline numbers and any caveat."""
    if metrics.get("note"):
        st.warning(metrics["note"])
    if not metrics.get("complete", True):
        st.info(f"Only {len(metrics.get('folds_evaluated', []))} of {len(metrics.get('folds_planned', []))} folds "
                "have finished; these numbers cover the finished ones.")
    folds = metrics.get("folds", {})
    macro = metrics.get("macro", {})
    top = st.columns(3)
    top[0].metric("Accuracy", _percent(metrics.get("accuracy")), help=f"over {metrics.get('n_images')} test images")
    top[1].metric("Masked faces", _percent(metrics.get("masked_accuracy")), help="accuracy on the masked test copies")
    top[2].metric("Unmasked faces", _percent(metrics.get("unmasked_accuracy")),
                  help="accuracy on the unmasked test copies")
    bottom = st.columns(3)
    bottom[0].metric("Mean over folds", results.format_mean_std(folds.get("accuracy_mean"), folds.get("accuracy_std")),
                     help="mean accuracy of the folds with its sample standard deviation")
    bottom[1].metric("Macro F1", _decimal(macro.get("f1")))
    bottom[2].metric("Macro AUC", _decimal(macro.get("auc")), help="one-vs-rest ROC AUC averaged over emotions")
    st.caption(f"{settings.get('backbone')}, protocol {str(settings.get('protocol')).upper()}, "
               f"{settings.get('epochs') or 'default'} epochs, learning rate {settings.get('learning_rate')}, "
               f"seed {settings.get('seed')}")


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _decimal(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def run_figures(metrics: dict, events: list[dict]) -> dict[str, go.Figure]:
    """Build every figure of a run, keyed by file name."""
    counts, labels = results.confusion_counts(metrics)
    built = {
        "confusion_counts": figures.confusion_heatmap(counts, labels, normalised=False),
        "confusion_normalised": figures.confusion_heatmap(counts, labels, normalised=True),
        "per_class": figures.per_class_bars(results.per_class_frame(metrics)),
        "accuracy_per_mask_type": figures.group_accuracy_bars(results.mask_type_accuracy(metrics),
                                                              "Accuracy per mask type", "mask type"),
    }
    folds = results.fold_frame(metrics)
    if len(folds) > 1:
        built["accuracy_per_fold"] = figures.fold_accuracy_bars(folds)
    epochs = results.epoch_frame(events)
    if not epochs.empty:
        built["training_curves"] = figures.training_curves(epochs)
    return built


def confusion_tab(run_id: str, metrics: dict, built: dict[str, go.Figure]) -> None:
    """Draw the confusion matrix with a counts / normalised toggle."""
    normalised = st.toggle("Normalise each row (share of the true class)", value=True, key="results-normalised")
    name = "confusion_normalised" if normalised else "confusion_counts"
    widgets.show_figure(built[name], f"{run_id}_{name}", key="results-confusion")
    widgets.show_table(results.confusion_table(metrics, normalised), f"{run_id}_{name}", key="results-confusion-table")


def per_class_tab(run_id: str, metrics: dict, built: dict[str, go.Figure]) -> None:
    """Draw precision, recall, specificity and F1 per class."""
    widgets.show_figure(built["per_class"], f"{run_id}_per_class", key="results-per-class")
    widgets.show_table(results.per_class_frame(metrics), f"{run_id}_per_class", key="results-per-class-table")


def masks_tab(run_id: str, metrics: dict, built: dict[str, go.Figure]) -> None:
    """Draw accuracy per mask type and for the unmasked faces."""
    widgets.show_figure(built["accuracy_per_mask_type"], f"{run_id}_accuracy_per_mask_type", key="results-masks")
    widgets.show_table(results.mask_type_frame(metrics), f"{run_id}_mask_types", key="results-masks-table")
    groups = metrics.get("by_metadata") or {}
    for column, values in groups.items():
        accuracy = {name: entry["accuracy"] for name, entry in values.items()}
        title = f"Accuracy per {column.replace('_', ' ')}"
        widgets.show_figure(figures.group_accuracy_bars(accuracy, title, column.replace("_", " ")),
                            f"{run_id}_accuracy_per_{column}", key=f"results-group-{column}")


def folds_tab(run_id: str, metrics: dict, built: dict[str, go.Figure]) -> None:
    """Draw the per-fold table with mean and standard deviation."""
    folds = metrics.get("folds", {})
    st.markdown(f"Accuracy over folds: **{results.format_mean_std(folds.get('accuracy_mean'), folds.get('accuracy_std'))}**"
                f"; macro F1: **{results.format_mean_std(folds.get('macro_f1_mean'), folds.get('macro_f1_std'))}** "
                f"({folds.get('std_note', 'sample standard deviation')})")
    if "accuracy_per_fold" in built:
        widgets.show_figure(built["accuracy_per_fold"], f"{run_id}_accuracy_per_fold", key="results-folds")
    widgets.show_table(results.fold_frame(metrics), f"{run_id}_folds", key="results-folds-table")
    if "training_curves" in built:
        widgets.show_figure(built["training_curves"], f"{run_id}_training_curves", key="results-curves")


def mistakes_tab(run_dir: Path, settings: dict, dataset: str) -> None:
    """Draw a gallery of misclassified test faces, the most confident mistakes first."""
    try:
        predictions = cache.run_predictions(run_dir)
    except FileNotFoundError as error:
        st.info(str(error))
        return
    except ValueError as error:
        st.error(str(error))
        return
    mask_names = ["all"] + figures.order_mask_types(predictions["mask_type"].astype(str).unique())
    chosen = st.selectbox("Mask type", mask_names, key="results-mistake-mask",
                          format_func=lambda m: "unmasked" if m == MaskType.NONE.value else m)
    wrong = results.misclassified(predictions, None if chosen == "all" else chosen, limit=GALLERY_SIZE)
    if wrong.empty:
        st.success("No misclassified test image.")
        return

    prepared_dir = Path(str(settings.get("prepared_dir", "")))
    columns = st.columns(GALLERY_COLUMNS)
    for position, row in enumerate(wrong.itertuples(index=False)):
        path = prepared_dir / str(row.image)
        caption = f"true {row.label}, predicted {row.predicted}"
        if hasattr(row, "confidence"):
            caption += f" ({row.confidence:.0%})"
        column = columns[position % GALLERY_COLUMNS]
        if path.is_file():
            column.image(str(path), caption=f"{caption}; {row.mask_type}", width="stretch")
        else:
            column.caption(f"{row.image} is missing from {prepared_dir}; {caption}")
    widgets.credit_if_london(dataset)


def counterpart_section(run_id: str, settings: dict, metrics: dict) -> None:
    """Draw PD and PI of the same configuration side by side, when both exist."""
    runs = cache.runs_table()
    settings_by_run = {str(other): cache.read_json(runs_root() / str(other) / "settings.json") or {}
                       for other in runs["run_id"]}
    others = results.counterpart_runs(run_id, settings_by_run)
    if not others:
        st.caption("No run with the same configuration and another protocol yet. Start one on the Train page "
                   "with both PD and PI selected to see them side by side.")
        return

    pairs = {run_id: (settings, metrics)}
    for other in others.values():
        other_metrics = cache.read_json(runs_root() / other / "metrics.json")
        if other_metrics:
            pairs[other] = (settings_by_run[other], other_metrics)
    rows = [results.summary_row(r, m, s) for r, (s, m) in pairs.items()]
    widgets.show_table(pd.DataFrame(rows), f"{run_id}_protocols", key="results-pair-table",
                       column_config=_percent_columns())
    columns = st.columns(len(pairs))
    for column, (other, (other_settings, other_metrics)) in zip(columns, pairs.items()):
        with column:
            st.markdown(f"**{str(other_settings.get('protocol')).upper()}**: `{other}`")
            accuracy = results.mask_type_accuracy(other_metrics)
            title = f"Accuracy per mask type ({str(other_settings.get('protocol')).upper()})"
            widgets.show_figure(figures.group_accuracy_bars(accuracy, title, "mask type"),
                                f"{other}_accuracy_per_mask_type", key=f"results-pair-{other}")


def _percent_columns() -> dict:
    percent = st.column_config.NumberColumn(format="percent")
    return {name: percent for name in ("accuracy", "fold mean", "fold std", "unmasked accuracy", "masked accuracy")}


def export_section(run_dir: Path, built: dict[str, go.Figure]) -> None:
    """Draw the button that downloads the whole run as one zip."""
    st.subheader("Export")
    weights_mb = exports.weights_bytes(run_dir) / 1024**2
    with_weights = False
    if weights_mb > 0:
        with_weights = st.checkbox(f"Include the trained weights ({weights_mb:.0f} MB)",
                                   value=weights_mb < LARGE_EXPORT_MB, key="results-export-weights")
    st.download_button("Download the run (zip)", data=lambda: exports.run_zip(run_dir, built, with_weights),
                       file_name=f"{run_dir.name}.zip", mime="application/zip", key="results-export",
                       on_click="ignore", icon=":material/folder_zip:",
                       help="Settings, provenance, metrics, predictions, the log, every figure as HTML "
                            "(and PNG where possible) and, if chosen, the weights.")


def main() -> None:
    """Draw the results page."""
    widgets.page_intro("Results", "How well one run recognises emotions, with and without masks.")
    runs = cache.runs_table()
    if runs.empty:
        st.info("No run yet. Start one on the Train page.")
        return

    run_id = run_ui(runs)
    run_dir = runs_root() / run_id
    metrics = cache.read_json(run_dir / "metrics.json")
    settings = cache.read_json(run_dir / "settings.json") or {}
    if not metrics:
        st.info(f"Run {run_id} has no results yet: they appear when its first fold finishes. "
                "Follow its progress on the Runs page.")
        return

    provenance = cache.read_json(run_dir / "provenance.json") or {}
    dataset = str(provenance.get("dataset", ""))
    headline(run_id, metrics, settings)
    built = run_figures(metrics, cache.run_events(run_dir))
    tabs = st.tabs(["Confusion matrix", "Per class", "Masks and groups", "Folds", "Mistakes", "PD vs PI"])
    with tabs[0]:
        confusion_tab(run_id, metrics, built)
    with tabs[1]:
        per_class_tab(run_id, metrics, built)
    with tabs[2]:
        masks_tab(run_id, metrics, built)
    with tabs[3]:
        folds_tab(run_id, metrics, built)
    with tabs[4]:
        mistakes_tab(run_dir, settings, dataset)
    with tabs[5]:
        counterpart_section(run_id, settings, metrics)
    export_section(run_dir, built)


main()
