"""Masked FER Studio dashboard: builds the page navigation and runs the chosen page.

Start it with `streamlit run streamlit_app.py`; each page lives in `pages/` and only draws,
leaving the work to `fer_core`.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

PAGES_FOLDER = Path(__file__).resolve().parent / "pages"
# The explanations page is optional: it joins the navigation once its file exists.
EXPLAIN_PAGE = "7_explain.py"


def build_navigation() -> dict[str, list[st.Page]]:
    """Return the pages grouped into sidebar sections."""
    experiments = [
        st.Page("pages/4_train.py", url_path="train", title="Train", icon=":material/model_training:"),
        st.Page("pages/5_runs.py", url_path="runs", title="Runs", icon=":material/monitoring:"),
        st.Page("pages/6_results.py", url_path="results", title="Results", icon=":material/analytics:"),
    ]
    if (PAGES_FOLDER / EXPLAIN_PAGE).is_file():
        experiments.append(st.Page(f"pages/{EXPLAIN_PAGE}", url_path="explain", title="Explain", icon=":material/visibility:"))
    experiments.append(st.Page("pages/8_compare.py", url_path="compare", title="Compare", icon=":material/compare:"))

    return {
        "Start": [st.Page("pages/1_home.py", title="Home", icon=":material/home:", default=True)],
        "Data": [
            st.Page("pages/2_mask_preview.py", url_path="mask_preview", title="Mask preview", icon=":material/face:"),
            st.Page("pages/3_datasets.py", url_path="datasets", title="Data sets", icon=":material/photo_library:"),
        ],
        "Experiments": experiments,
    }


st.set_page_config(page_title="Masked FER Studio", page_icon="😷", layout="wide")
st.navigation(build_navigation()).run()
