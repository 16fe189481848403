"""Plotly figure builders for the dashboard: counts, confusion matrices, metrics and curves.

Every builder takes plain pandas or numpy inputs and returns a `plotly.graph_objects.Figure`,
so pages only choose what to show and tests need no Streamlit.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from fer_core.constants import Emotion, MaskType

logger = logging.getLogger(__name__)

FIGURE_HEIGHT = 380
# Bars get their value printed above them up to this many bars; more would overlap.
MAX_LABELLED_BARS = 30
# Plotly's default qualitative palette, named so per-class and per-run colours stay stable.
PALETTE = ("#636EFA", "#EF553B", "#00CC96", "#AB63FA", "#FFA15A", "#19D3F3", "#FF6692",
           "#B6E880", "#FF97FF", "#FECB52")
# Axis labels of mask types: the unmasked copy reads better as "unmasked" than as "none".
MASK_LABELS = {MaskType.NONE.value: "unmasked"}
METRIC_TITLES = {
    "precision": "Precision",
    "recall": "Recall (sensitivity)",
    "specificity": "Specificity",
    "f1": "F1",
}


def order_labels(labels: Sequence[str]) -> list[str]:
    """Sort emotion labels in `Emotion` order; unknown labels follow alphabetically."""
    known = [e.value for e in Emotion]
    listed = list(dict.fromkeys(str(label) for label in labels))
    return sorted(listed, key=lambda label: (known.index(label), "") if label in known else (len(known), label))


def order_mask_types(names: Sequence[str]) -> list[str]:
    """Sort mask type names as `MaskType` lists them (unmasked first); others follow."""
    known = [m.value for m in MaskType]
    listed = list(dict.fromkeys(str(name) for name in names))
    return sorted(listed, key=lambda name: (known.index(name), "") if name in known else (len(known), name))


def _layout(figure: go.Figure, title: str, **extra: object) -> go.Figure:
    # The legend goes below the plot, because run ids are too long for a side legend.
    figure.update_layout(title=title, height=FIGURE_HEIGHT, margin={"l": 40, "r": 20, "t": 60, "b": 100},
                         legend={"orientation": "h", "yanchor": "top", "y": -0.3, "x": 0}, **extra)
    return figure


def _epoch_axis(figure: go.Figure, last_epoch: int) -> None:
    """Put whole-number epoch ticks on the x axis, about ten of them at most."""
    figure.update_xaxes(title_text="epoch", tick0=1, dtick=max(1, round(last_epoch / 10)))


def count_bars(counts: pd.Series, title: str, axis_title: str) -> go.Figure:
    """Draw one bar per index entry of `counts` (for example images per emotion)."""
    labelled = len(counts) <= MAX_LABELLED_BARS
    figure = go.Figure(go.Bar(x=[str(i) for i in counts.index], y=counts.to_numpy(), marker_color=PALETTE[0],
                              text=counts.to_numpy() if labelled else None, textposition="outside"))
    figure = _layout(figure, title, xaxis_title=axis_title, yaxis_title="images")
    # Ids such as "001" must stay categories, or Plotly spreads them along a number line.
    figure.update_xaxes(type="category")
    return figure


def confusion_heatmap(matrix: np.ndarray, labels: Sequence[str], normalised: bool) -> go.Figure:
    """Draw a confusion matrix with true labels down and predicted labels across.

    With `normalised`, each row is divided by its total, so a cell is the share of that true
    class predicted as the column's class.
    """
    values = np.asarray(matrix, dtype=float)
    if values.shape != (len(labels), len(labels)):
        raise ValueError(f"confusion matrix of shape {values.shape} does not match {len(labels)} labels")

    if normalised:
        totals = values.sum(axis=1, keepdims=True)
        values = np.divide(values, totals, out=np.zeros_like(values), where=totals > 0)
        text = [[f"{v:.2f}" for v in row] for row in values]
    else:
        text = [[f"{int(v)}" for v in row] for row in values]

    figure = go.Figure(go.Heatmap(
        z=values, x=list(labels), y=list(labels), text=text, texttemplate="%{text}",
        colorscale="Blues", zmin=0, zmax=1 if normalised else None,
        hovertemplate="true %{y}<br>predicted %{x}<br>%{text}<extra></extra>",
    ))
    title = "Confusion matrix (share of each true class)" if normalised else "Confusion matrix (image counts)"
    figure = _layout(figure, title, xaxis_title="predicted", yaxis_title="true")
    figure.update_yaxes(autorange="reversed")
    return figure


def per_class_bars(table: pd.DataFrame, metrics: Sequence[str] = tuple(METRIC_TITLES)) -> go.Figure:
    """Draw grouped bars of per-class metrics; `table` has a `class` column and one per metric."""
    figure = go.Figure()
    classes = order_labels(table["class"].astype(str))
    indexed = table.assign(**{"class": table["class"].astype(str)}).set_index("class").reindex(classes)
    for position, metric in enumerate(m for m in metrics if m in indexed.columns):
        figure.add_trace(go.Bar(name=METRIC_TITLES.get(metric, metric), x=classes, y=indexed[metric],
                                marker_color=PALETTE[position % len(PALETTE)]))
    figure = _layout(figure, "Per-class metrics", barmode="group", yaxis_title="score", xaxis_title="emotion")
    figure.update_yaxes(range=[0, 1.05])
    return figure


def group_accuracy_bars(accuracy: Mapping[str, float], title: str, axis_title: str) -> go.Figure:
    """Draw accuracy per group, such as per mask type (with `none` for unmasked faces)."""
    names = order_mask_types(list(accuracy))
    values = [accuracy[name] for name in names]
    figure = go.Figure(go.Bar(x=[MASK_LABELS.get(name, name) for name in names], y=values, marker_color=PALETTE[2],
                              text=[f"{v:.1%}" for v in values], textposition="outside"))
    figure = _layout(figure, title, xaxis_title=axis_title, yaxis_title="accuracy")
    figure.update_xaxes(type="category")
    figure.update_yaxes(range=[0, 1.1], tickformat=".0%")
    return figure


def training_curves(epochs: pd.DataFrame) -> go.Figure:
    """Draw loss and accuracy per epoch, one line per fold and split, side by side.

    `epochs` has the columns of the training `epoch` events: fold, epoch, train_loss,
    train_accuracy, test_loss and test_accuracy.
    """
    figure = make_subplots(rows=1, cols=2, subplot_titles=("Loss", "Accuracy"))
    if epochs.empty:
        return _layout(figure, "Training curves (no epoch finished yet)")

    folds = sorted(epochs["fold"].unique())
    for position, fold in enumerate(folds):
        rows = epochs[epochs["fold"] == fold].sort_values("epoch")
        colour = PALETTE[position % len(PALETTE)]
        name = f"fold {fold}" if len(folds) > 1 else ""
        for column, col, dash in (("train_loss", 1, "solid"), ("test_loss", 1, "dot"),
                                  ("train_accuracy", 2, "solid"), ("test_accuracy", 2, "dot")):
            if column not in rows or rows[column].isna().all():
                continue
            split = column.split("_")[0]
            figure.add_trace(go.Scatter(
                x=rows["epoch"], y=rows[column], mode="lines+markers", line={"color": colour, "dash": dash},
                name=f"{name} {split}".strip(), legendgroup=f"{fold}-{split}", showlegend=col == 1,
            ), row=1, col=col)
    _epoch_axis(figure, int(epochs["epoch"].max()))
    figure.update_yaxes(tickformat=".0%", range=[0, 1.02], row=1, col=2)
    return _layout(figure, "Training curves (solid: training data, dotted: test data)")


def overlaid_curves(curves: Mapping[str, pd.DataFrame], column: str, title: str) -> go.Figure:
    """Draw one line per run of `column` against epoch, averaged over folds."""
    figure = go.Figure()
    last_epoch = 1
    for position, (run_name, epochs) in enumerate(curves.items()):
        if epochs.empty or column not in epochs:
            continue
        mean = epochs.groupby("epoch")[column].mean().sort_index()
        last_epoch = max(last_epoch, int(mean.index.max()))
        figure.add_trace(go.Scatter(x=mean.index, y=mean.to_numpy(), mode="lines+markers", name=run_name,
                                    line={"color": PALETTE[position % len(PALETTE)]}))
    figure = _layout(figure, title, yaxis_title=column.replace("_", " "))
    _epoch_axis(figure, last_epoch)
    if column.endswith("accuracy"):
        # One decimal, so a narrow range does not repeat the same whole-percent label.
        figure.update_yaxes(tickformat=".1%")
    return figure


def compare_per_class(tables: Mapping[str, pd.DataFrame], metric: str) -> go.Figure:
    """Draw one bar group per emotion and one bar per run for a per-class metric."""
    all_classes = order_labels([c for table in tables.values() for c in table["class"].astype(str)])
    figure = go.Figure()
    for position, (run_name, table) in enumerate(tables.items()):
        indexed = table.assign(**{"class": table["class"].astype(str)}).set_index("class")
        if metric not in indexed.columns:
            continue
        figure.add_trace(go.Bar(name=run_name, x=all_classes, y=indexed[metric].reindex(all_classes),
                                marker_color=PALETTE[position % len(PALETTE)]))
    figure = _layout(figure, f"{METRIC_TITLES.get(metric, metric)} per emotion", barmode="group",
                     yaxis_title=metric, xaxis_title="emotion")
    figure.update_yaxes(range=[0, 1.05])
    return figure


def fold_accuracy_bars(folds: pd.DataFrame) -> go.Figure:
    """Draw test accuracy per fold with the mean as a horizontal line."""
    names = folds["fold"].astype(str)
    figure = go.Figure(go.Bar(x=names, y=folds["accuracy"], marker_color=PALETTE[0],
                              hovertext=folds.get("test_subjects"), name="accuracy"))
    figure.update_xaxes(type="category")
    mean = float(folds["accuracy"].mean())
    figure.add_hline(y=mean, line_dash="dash", annotation_text=f"mean {mean:.1%}")
    figure = _layout(figure, "Accuracy per fold", xaxis_title="fold", yaxis_title="accuracy")
    figure.update_yaxes(range=[0, 1.05], tickformat=".0%")
    return figure


def compare_groups(accuracy_by_run: Mapping[str, Mapping[str, float]], title: str, axis_title: str) -> go.Figure:
    """Draw grouped accuracy bars: one group per mask type (or other group), one bar per run."""
    names = order_mask_types([name for accuracy in accuracy_by_run.values() for name in accuracy])
    figure = go.Figure()
    for position, (run_name, accuracy) in enumerate(accuracy_by_run.items()):
        figure.add_trace(go.Bar(name=run_name, x=[MASK_LABELS.get(name, name) for name in names],
                                y=[accuracy.get(name) for name in names],
                                marker_color=PALETTE[position % len(PALETTE)]))
    figure = _layout(figure, title, barmode="group", xaxis_title=axis_title, yaxis_title="accuracy")
    figure.update_yaxes(range=[0, 1.05], tickformat=".0%")
    return figure
