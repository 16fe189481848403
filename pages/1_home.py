"""Home page: what the tool does, the data sets and device available, and the latest runs."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from fer_core.dashboard import cache, widgets
from fer_core.datasets import DatasetError

RECENT_RUNS = 5
INTRO = """
**Masked FER Studio** trains and tests facial emotion recognition models on faces that wear
synthetic masks (surgical, cloth, N95 and KN95), following Farhadipour & Taghipour (2023).

1. **Mask preview**: see the four masks drawn on any face, your own photo included.
2. **Data sets**: add a data set, check its counts and prepare it (detect, mask and crop every face).
3. **Train**: fine-tune AlexNet, SqueezeNet, ResNet50 or a VGGFace2 network in the background.
4. **Runs** and **Results**: follow training live, then read accuracy, confusion matrices and
   per-class scores. Person-dependent (PD) tests use new photos of people seen in training;
   person-independent (PI) tests use people never seen in training.
"""
ADD_DATASET_HELP = """
The London faces are found automatically. To add your own, open **Data sets** and either give
the folder's path and layout (for example `<root>/<emotion>/<image>`) or upload a zip of the
images. JAFFE, UIBVFED and FER2013 are supported as they are distributed by their authors.
"""


def dataset_overview() -> tuple[pd.DataFrame, bool]:
    """Return one row per data set with its counts, and whether the London faces are among them."""
    rows = []
    has_london = False
    for spec in cache.current_dataset_specs():
        name = spec.resolved_name()
        has_london = has_london or spec.kind.value == "london"
        try:
            table = cache.load_table(name)
        except (DatasetError, KeyError, OSError) as error:
            rows.append({"data set": name, "kind": spec.kind.value, "images": None, "subjects": None,
                         "emotions": f"cannot be read: {error}"})
            continue
        counts = table.counts_by_label()
        rows.append({
            "data set": name,
            "kind": spec.kind.value,
            "images": len(table.frame),
            "subjects": table.frame["subject"].nunique() if table.has_subjects else None,
            "emotions": ", ".join(f"{label} {count}" for label, count in counts.items()),
        })
    return pd.DataFrame(rows, columns=["data set", "kind", "images", "subjects", "emotions"]), has_london


def datasets_section() -> None:
    """Draw the data set table, or how to add a first data set."""
    st.subheader("Data sets")
    overview, has_london = dataset_overview()
    if overview.empty:
        st.info("No data set found yet. " + ADD_DATASET_HELP)
    else:
        widgets.show_table(overview, "data_sets", key="home-datasets",
                           column_config={"subjects": st.column_config.NumberColumn(help="empty: no subject ids")})
    if has_london:
        widgets.london_credit()
    with st.expander("How to add a data set"):
        st.markdown(ADD_DATASET_HELP)
        st.page_link("pages/3_datasets.py", label="Open Data sets", icon=":material/photo_library:")


def device_section() -> None:
    """Draw which device training and face detection use by default."""
    st.subheader("Compute device")
    device_type, name, _ = cache.compute_device()
    if device_type == "cuda":
        st.success(f"GPU: {name}. Training runs on it by default.")
    else:
        st.info(f"{name}. No GPU was found, so training runs on the CPU: choose few epochs or a small "
                "backbone (SqueezeNet) for quick experiments.")


def recent_runs_section() -> None:
    """Draw the latest runs with a link to the full list."""
    st.subheader("Recent runs")
    runs = cache.runs_table()
    if runs.empty:
        st.info("No training run yet. Start one on the Train page.")
        st.page_link("pages/4_train.py", label="Open Train", icon=":material/model_training:")
        return
    recent = runs.head(RECENT_RUNS)[["run_id", "status", "dataset", "backbone", "protocol", "accuracy"]]
    widgets.show_table(recent, "recent_runs", key="home-runs",
                       column_config={"run_id": "run id", "dataset": "data set",
                                      "accuracy": st.column_config.NumberColumn(format="percent")})
    st.page_link("pages/5_runs.py", label="All runs", icon=":material/monitoring:")


def main() -> None:
    """Draw the home page."""
    widgets.page_intro("Masked FER Studio", "Facial emotion recognition under synthetic face masks.")
    st.markdown(INTRO)
    datasets_section()
    left, right = st.columns(2)
    with left:
        device_section()
    with right:
        recent_runs_section()


main()
