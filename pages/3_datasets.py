"""Data sets page: add a data set, check its counts, prepare it and inspect the prepared faces."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from fer_core.constants import CROP_SIZE, MaskType
from fer_core.dashboard import cache, figures, uploads, widgets
from fer_core.datasets import (
    DATASET_LAYOUTS,
    DatasetError,
    DatasetKind,
    DatasetSpec,
    DatasetTable,
    load_dataset,
    register_dataset,
)
from fer_core.paths import artifacts_root
from fer_core.prepare import PreparedSet, PrepareSettings

GRID_FACES = 6
SUBJECT_PATTERN_KINDS = (DatasetKind.FOLDER, DatasetKind.UIBVFED)
SUBJECT_PATTERN_HELP = ("Optional regular expression with a named group `subject`, searched in each file name, "
                        "e.g. `^(?P<subject>[A-Z]+)_` for `KA_happy.png`. Without subject ids only "
                        "person-dependent tests are possible.")


# ---------------------------------------------------------------------------------------------
# Adding a data set


def spec_options_ui(key: str) -> tuple[DatasetKind, str | None]:
    """Collect the layout and the subject pattern of a new data set."""
    # Plain emotion folders come first: they are what most users bring.
    kinds = [DatasetKind.FOLDER] + [kind for kind in DatasetKind if kind not in (DatasetKind.FOLDER, DatasetKind.LONDON)]
    kind = st.selectbox("Layout", kinds, format_func=lambda k: f"{k.value}: {DATASET_LAYOUTS[k]}", key=f"{key}-kind")
    pattern = None
    if kind in SUBJECT_PATTERN_KINDS:
        pattern = st.text_input("Subject pattern", key=f"{key}-pattern", help=SUBJECT_PATTERN_HELP).strip() or None
    return kind, pattern


def register(spec: DatasetSpec, extracted_to: Path | None = None) -> None:
    """Load a new data set to check it, register it and report what was found."""
    try:
        table = load_dataset(spec, artifacts_root=artifacts_root())
        stored = register_dataset(spec, artifacts_root())
    except DatasetError as error:
        kept = (f" The extracted images stay in {extracted_to}: add that folder by path with the right layout, "
                "or delete it.") if extracted_to else ""
        st.error(f"The data set was not added: {error}{kept}")
        return
    cache.clear_dataset_caches()
    # Show the new data set below; the selectbox is drawn later in this run.
    st.session_state["ds-name"] = stored.name
    st.success(f"Added {stored.name}: {len(table.frame)} images"
               f"{', with subject ids' if table.has_subjects else ', without subject ids'}"
               f"; {_files(len(table.issues), 'file')} skipped.")


def _files(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def add_by_path_ui() -> None:
    """Draw the form that registers a folder already on this machine."""
    with st.form("add-by-path"):
        name = st.text_input("Name", key="path-name", help="Letters, digits, '_', '-' or '.'; shown in every list.")
        root = st.text_input("Folder (or fer2013.csv file)", key="path-root",
                             help="Absolute path on the machine that runs this dashboard.")
        kind, pattern = spec_options_ui("path")
        submitted = st.form_submit_button("Check and add", icon=":material/add:", key="path-submit")
    if not submitted:
        return
    if not name.strip() or not root.strip():
        st.error("Give both a name and a folder.")
        return
    try:
        spec = DatasetSpec(kind=kind, root=Path(root.strip()).expanduser(), name=name.strip(),
                           subject_pattern=pattern)
    except DatasetError as error:
        st.error(f"The data set was not added: {error}")
        return
    register(spec)


def add_by_upload_ui() -> None:
    """Draw the form that extracts an uploaded zip into the artifacts folder and registers it."""
    limit_mb = st.get_option("server.maxUploadSize")
    with st.form("add-by-upload"):
        name = st.text_input("Name", key="upload-name", help="Also the folder name under artifacts/datasets/.")
        upload = st.file_uploader(f"Zip archive of the images (at most {limit_mb} MB)", type=["zip"],
                                  key="upload-zip")
        kind, pattern = spec_options_ui("upload")
        submitted = st.form_submit_button("Upload and add", icon=":material/upload:", key="upload-submit")
    if not submitted:
        return
    if upload is None or not name.strip():
        st.error("Give a name and choose a zip archive.")
        return

    try:
        extracted = uploads.extract_dataset_zip(upload, name)
    except uploads.UploadError as error:
        st.error(f"The archive was not added: {error}")
        return
    skipped = len(extracted.skipped)
    st.info(f"Extracted {extracted.image_count} images into {extracted.folder}"
            + (f"; left out {_files(skipped, 'non-image file')}" if skipped else ""))
    try:
        spec = DatasetSpec(kind=kind, root=extracted.suggested_root, name=name.strip(), subject_pattern=pattern)
    except DatasetError as error:
        st.error(f"The images were extracted to {extracted.folder}, but the data set was not added: {error}")
        return
    register(spec, extracted.folder)


# ---------------------------------------------------------------------------------------------
# One data set


def counts_section(table: DatasetTable) -> None:
    """Draw per-class and per-subject counts and the files skipped while loading."""
    left, right = st.columns(2)
    with left:
        by_label = table.counts_by_label()
        by_label = by_label.reindex(figures.order_labels(by_label.index))
        widgets.show_figure(figures.count_bars(by_label, "Images per emotion", "emotion"),
                            f"{table.name}_per_emotion", key="ds-labels")
    with right:
        if table.has_subjects:
            widgets.show_figure(figures.count_bars(table.counts_by_subject(), "Images per subject", "subject"),
                                f"{table.name}_per_subject", key="ds-subjects")
        else:
            st.info("This data set has no subject ids, so only person-dependent (PD) tests are possible.")

    if table.issues:
        with st.expander(f"{len(table.issues)} files were skipped while loading"):
            issues = pd.DataFrame([{"path": i.path, "reason": i.reason} for i in table.issues])
            widgets.show_table(issues, f"{table.name}_skipped_files", key="ds-issues")


def prepare_settings_ui() -> PrepareSettings:
    """Collect the preparation settings."""
    columns = st.columns([2, 1, 1, 1])
    masks = columns[0].multiselect("Mask types", [m.value for m in MaskType],
                                   default=[m.value for m in MaskType], key="prep-masks",
                                   help="'none' keeps an unmasked copy of every face.")
    coverage = columns[1].slider("Coverage", 0.0, 1.0, 0.6, 0.05, key="prep-coverage",
                                 help="How far up the nose the masks reach: 0 is just above the nose tip, "
                                      "1 is the bridge of the nose just below the eyes.")
    crop = columns[2].number_input("Crop size (pixels)", 64, 512, CROP_SIZE, 32, key="prep-crop")
    seed = columns[3].number_input("Seed", 0, 1_000_000, 0, key="prep-seed",
                                   help="Mask colours and patterns repeat exactly with the same seed.")
    return PrepareSettings(mask_types=tuple(MaskType(m) for m in masks) or (MaskType.NONE,),
                           coverage=float(coverage), crop_size=int(crop), seed=int(seed))


def prepare_section(table: DatasetTable) -> None:
    """Draw the preparation settings and the button that starts a preparation in the background."""
    st.markdown("Preparation finds each face with MTCNN, places 68 landmarks, crops the face and draws each mask type. "
                "It runs in the background, once per data set and settings; later runs reuse the result.")
    settings = prepare_settings_ui()
    widgets.prepare_button(table.name, settings, "Prepare", key="prep-run")


def _prepared_key(dataset_name: str) -> str:
    """Return the widget key of the prepared-set choice; preparing a set selects it through this key."""
    return f"ds-prepared-{dataset_name}"


def prepared_section(table: DatasetTable) -> None:
    """Draw the prepared sets of this data set: a face grid and the preparation report."""
    summaries = cache.prepared_summaries()
    mine = summaries[summaries["data set"] == table.name]
    if mine.empty:
        st.info(f"{table.name} has not been prepared yet.")
        return

    folders = list(mine["folder"])
    key = _prepared_key(table.name)
    if st.session_state.get(key) not in folders:
        st.session_state[key] = folders[0]
    folder = st.selectbox("Prepared set", folders, key=key,
                          format_func=lambda f: _describe_prepared(mine.set_index("folder").loc[f]))
    prepared = cache.prepared_set(Path(folder))

    tab_grid, tab_report = st.tabs(["Faces", f"Report ({len(prepared.report)} files)"])
    with tab_grid:
        face_grid(prepared)
        widgets.credit_if_london(table.name)
    with tab_report:
        report_table(prepared)


def _describe_prepared(row: pd.Series) -> str:
    return (f"{row['face crops']} crops of {row['photographs']} photographs; masks {row['mask types']}; "
            f"coverage {row['coverage']}; {row['crop size']} px")


def face_grid(prepared: PreparedSet) -> None:
    """Draw source photographs as rows: the unmasked crop beside each masked version."""
    manifest = prepared.manifest
    sources = sorted(manifest["source_id"].astype(str).unique())
    if not sources:
        st.warning("No face was found in any photograph; see the report.")
        return

    start = st.number_input(f"First face (1 to {len(sources)})", 1, len(sources), 1, GRID_FACES, key="ds-grid-start")
    mask_types = figures.order_mask_types(manifest["mask_type"].astype(str).unique())
    header = st.columns(len(mask_types) + 1)
    header[0].markdown("**photograph**")
    for column, mask_type in zip(header[1:], mask_types):
        column.markdown(f"**{'unmasked' if mask_type == MaskType.NONE.value else mask_type}**")

    indexed = manifest.assign(source_id=manifest["source_id"].astype(str)).set_index(["source_id", "mask_type"])
    for source_id in sources[int(start) - 1:int(start) - 1 + GRID_FACES]:
        row = st.columns(len(mask_types) + 1)
        label = indexed.loc[source_id].iloc[0]["label"]
        row[0].markdown(f"`{source_id}`  \n{label}")
        for column, mask_type in zip(row[1:], mask_types):
            if (source_id, mask_type) in indexed.index:
                column.image(str(prepared.image_path(indexed.loc[(source_id, mask_type), "image"])), width="stretch")


def report_table(prepared: PreparedSet) -> None:
    """Draw the files that were skipped or flagged during preparation, and why."""
    if prepared.report.empty:
        st.success("Every photograph was read and had a face.")
        return
    stage_names = {"load": "listing", "read": "reading", "detect": "face detection"}
    report = prepared.report.assign(stage=prepared.report["stage"].map(lambda s: stage_names.get(s, s)))
    st.caption("Files without a face or that could not be read are left out of training; flagged files "
               "(several faces) are kept with the face that the selection rule chose.")
    widgets.show_table(report, f"{prepared.dataset_name}_preparation_report", key="ds-report")


def dataset_section() -> None:
    """Draw the chosen data set: counts, preparation and prepared faces."""
    specs = cache.current_dataset_specs()
    if not specs:
        st.info("No data set yet. Add one above.")
        return

    name = st.selectbox("Data set", [spec.resolved_name() for spec in specs], key="ds-name")
    try:
        table = cache.load_table(name)
    except (DatasetError, KeyError, OSError) as error:
        st.error(f"Data set {name} cannot be read: {error}")
        return

    subjects = f"{table.frame['subject'].nunique()} subjects" if table.has_subjects else "no subject ids"
    st.markdown(f"**{len(table.frame)} images**, {subjects}, {table.kind.value} layout, in `{table.root}`")
    counts_section(table)
    st.subheader("Prepare")
    prepare_section(table)
    st.subheader("Prepared faces")
    prepared_section(table)


def main() -> None:
    """Draw the data sets page."""
    widgets.page_intro("Data sets", "Add data sets, check their counts and prepare their masked faces.")
    with st.expander("Add a data set", expanded=not cache.current_dataset_specs()):
        by_path, by_upload = st.tabs(["Folder on this machine", "Upload a zip"])
        with by_path:
            add_by_path_ui()
        with by_upload:
            add_by_upload_ui()
    dataset_section()


main()
