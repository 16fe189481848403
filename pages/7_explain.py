"""Explain page: what trained models look at on one face, CAM and LIME side by side, and attribution summaries."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from fer_core.constants import MaskType
from fer_core.dashboard import cache, explain_view, figures, photos, results, widgets
from fer_core.dashboard.explain_view import ExplainRequest, Face, LabelChoice, RunExplanation, RunInfo
from fer_core.explain import (
    LIME_METHOD,
    AttributionShare,
    CamMethod,
    ExplainSettings,
    ExplainTarget,
    Segmentation,
    candidate_layers,
    default_layer,
    explain_methods,
)
from fer_core.explain.lime_explainer import DEFAULT_LIME_SAMPLES, DEFAULT_SEGMENT_COUNT, MIN_LIME_SAMPLES
from fer_core.faces import NoFaceError
from fer_core.images import ImageReadError
from fer_core.jobs import JobConflictError, JobState
from fer_core.models import build_model
from fer_core.paths import jobs_root, runs_root

logger = logging.getLogger(__name__)

MAX_RUNS = 4
SOURCES = ("Test image", "Misclassified", "Upload a photo")
MEMO_KEY = "explain-memo"
WATCHED_KEY = "explain-batches-watched"
MAX_LIME_SAMPLES = 20_000
MAX_SEGMENTS = 400
LABEL_TITLES = {LabelChoice.PREDICTED.value: "Predicted class", LabelChoice.TRUE.value: "True class",
                LabelChoice.CHOSEN.value: "Another class"}
TARGET_TITLES = {ExplainTarget.PREDICTED.value: "Predicted class", ExplainTarget.TRUE.value: "True class"}
UPLOAD_MASKS = [mask_type.value for mask_type in (MaskType.NONE, *MaskType.drawn())]
CAM_HELP = ("Grad-CAM weights the layer's channels by their mean gradient; Grad-CAM++ and LayerCAM refine the "
            "weighting; HiResCAM follows the class score exactly; ScoreCAM needs no gradients but one forward pass "
            "per channel (slow on a CPU); EigenCAM ignores the class, so every class gets the same map.")
LIME_HELP = ("LIME switches superpixels off at random and fits a linear model to the class probability. More "
             "samples give steadier maps and take longer: each sample is one forward pass.")
COVERAGE_HELP = ("How far up the nose the mask reaches: 0 is just above the nose tip, 1 is the bridge of the nose "
                 "just below the eyes.")


# ---------------------------------------------------------------------------------------------
# Runs


@st.cache_data(ttl=cache.RUNS_TTL_SECONDS, show_spinner=False)
def _describe_run(run_dir: str) -> RunInfo:
    return explain_view.describe_run(Path(run_dir))


def available_runs() -> tuple[list[RunInfo], list[str]]:
    """Return the runs with a finished fold, newest first, and why each other run is left out."""
    table = cache.runs_table()
    found, left_out = [], []
    for run_id in table["run_id"].astype(str):
        try:
            found.append(_describe_run(str(runs_root() / run_id)))
        except FileNotFoundError as error:
            left_out.append(f"{run_id}: {error}")
        except (ValueError, KeyError, TypeError, OSError) as error:
            logger.warning("run %s cannot be explained: %s", run_id, error)
            left_out.append(f"{run_id}: its files cannot be read ({error})")
    return found, left_out


def runs_ui(found: list[RunInfo]) -> list[RunInfo]:
    """Let the user choose up to four runs; `?runs=a,b` in the address preselects them."""
    by_id = {run.run_id: run for run in found}
    requested = [run_id for run_id in st.query_params.get("runs", "").split(",") if run_id in by_id]
    chosen = st.multiselect(
        "Runs to compare (up to four, typically one per backbone on the same data set)", list(by_id),
        default=requested[:MAX_RUNS] or explain_view.default_runs(found, MAX_RUNS), max_selections=MAX_RUNS,
        key="explain-runs", format_func=lambda run_id: f"{by_id[run_id].dataset} · {by_id[run_id].title}",
    )
    st.query_params["runs"] = ",".join(chosen)
    return [by_id[run_id] for run_id in chosen]


# ---------------------------------------------------------------------------------------------
# Settings


@st.cache_data(show_spinner="Finding the layers that can serve as CAM targets...")
def layer_options(backbone: str, num_classes: int, input_size: int) -> list[str]:
    """Return the candidate CAM layers of a backbone, found on an untrained copy of the same architecture."""
    return candidate_layers(build_model(backbone, num_classes, pretrained=False), input_size)


def layers_ui(selected: list[RunInfo]) -> tuple[tuple[str, str], ...]:
    """Let the user pick a CAM layer per backbone; return the (backbone, layer) pairs that differ from the default."""
    first_run = {}
    for run in selected:
        first_run.setdefault(run.backbone, run)

    chosen = []
    with st.expander("CAM layer per backbone"):
        st.caption("Later layers give coarse maps of what decides the class; earlier layers give sharper maps of "
                   "lower-level features.")
        for backbone, run in first_run.items():
            default = default_layer(backbone)
            options = layer_options(backbone, len(run.classes), run.input_size)
            if default not in options:
                options = [default, *options]
            layer = st.selectbox(backbone, options, index=options.index(default), key=f"explain-layer-{backbone}",
                                 format_func=lambda name, default=default: f"{name} (default)" if name == default
                                 else name)
            if layer != default:
                chosen.append((backbone, layer))
    return tuple(chosen)


def settings_ui(selected: list[RunInfo]) -> ExplainRequest:
    """Collect the CAM method and layers, the class to explain and the LIME settings."""
    top = st.columns([1, 2, 1])
    method = top[0].selectbox("CAM method", [method.value for method in CamMethod], key="explain-method",
                              help=CAM_HELP)
    label_choice = top[1].radio("Class to explain", list(LABEL_TITLES), format_func=LABEL_TITLES.get,
                                key="explain-label", horizontal=True,
                                help="The true class exists only for faces of a test set.")
    chosen_class = None
    if label_choice == LabelChoice.CHOSEN.value:
        classes = figures.order_labels([name for run in selected for name in run.classes])
        chosen_class = top[2].selectbox("Class", classes, key="explain-class")

    row = st.columns([1, 1, 1, 1, 1])
    lime = row[0].toggle("LIME", value=True, key="explain-lime", help=LIME_HELP)
    samples = row[1].number_input("LIME samples", MIN_LIME_SAMPLES, MAX_LIME_SAMPLES, DEFAULT_LIME_SAMPLES, step=100,
                                  key="explain-samples", disabled=not lime, help=LIME_HELP)
    segmentation = row[2].selectbox("Superpixels", [choice.value for choice in Segmentation],
                                    key="explain-segmentation", disabled=not lime,
                                    help="SLIC makes a chosen number of compact superpixels; quickshift follows "
                                         "colour edges.")
    segments = row[3].number_input("SLIC superpixels", 2, MAX_SEGMENTS, DEFAULT_SEGMENT_COUNT, key="explain-segments",
                                   disabled=not lime or segmentation != Segmentation.SLIC.value)
    seed = row[4].number_input("Seed", 0, 1_000_000, 0, key="explain-seed", disabled=not lime,
                               help="The same seed gives the same LIME map.")
    return ExplainRequest(method=method, layers=layers_ui(selected), label_choice=label_choice,
                          chosen_class=chosen_class, lime=lime, samples=int(samples), segmentation=segmentation,
                          n_segments=int(segments), seed=int(seed))


# ---------------------------------------------------------------------------------------------
# Faces


def face_ui(selected: list[RunInfo]) -> Face | None:
    """Let the user pick a test crop, a misclassified crop or an uploaded photo."""
    source = st.segmented_control("Face", SOURCES, default=SOURCES[0], key="explain-source")
    if source == SOURCES[2]:
        return upload_face_ui(selected)
    return prepared_face_ui(selected, misclassified=source == SOURCES[1])


def prepared_face_ui(selected: list[RunInfo], misclassified: bool) -> Face | None:
    """Let the user pick a crop from one run's test data, or only from its mistakes."""
    columns = st.columns([2, 1, 3])
    by_id = {run.run_id: run for run in selected}
    run_id = columns[0].selectbox("From the test data of", list(by_id), format_func=lambda r: by_id[r].title,
                                  key="explain-face-run")
    run = by_id[run_id]
    table = _faces_table(run)
    if table is None:
        return None
    if misclassified:
        table = results.misclassified(table, limit=len(table))

    mask_names = ["all"] + figures.order_mask_types(table["mask_type"].astype(str).unique())
    mask = columns[1].selectbox("Mask type", mask_names, key="explain-face-mask",
                                format_func=lambda m: figures.MASK_LABELS.get(m, m))
    if mask != "all":
        table = table[table["mask_type"].astype(str) == mask]
    table = table.reset_index(drop=True)
    if table.empty and misclassified:
        st.success(f"No misclassified test image of {run.title} with this mask type.")
        return None
    if table.empty:
        st.info(f"Run {run.run_id} has no test image with this mask type.")
        return None

    position = columns[2].selectbox("Image", range(len(table)), key=f"explain-image-{run_id}-{misclassified}-{mask}",
                                    format_func=lambda i: _face_label(table.iloc[i]))
    row = table.iloc[position].to_dict()
    path = Path(run.prepared_dir) / str(row["image"])
    try:
        loaded = cache.read_image_file(str(path), path.stat().st_mtime if path.exists() else 0.0)
    except ImageReadError as error:
        st.error(f"{path} cannot be read: {error.describe()}")
        return None
    return explain_view.face_from_row(loaded.rgb, row, run.prepared_dir, run.dataset)


def _faces_table(run: RunInfo) -> pd.DataFrame | None:
    try:
        predictions = cache.run_predictions(run.run_dir)
    except FileNotFoundError as error:
        st.info(f"Run {run.run_id} has no test predictions yet: {error}")
        return None
    except ValueError as error:
        st.error(f"The test predictions of run {run.run_id} cannot be read: {error}")
        return None
    if run.prepared_dir is None or not (run.prepared_dir / "manifest.csv").is_file():
        st.error(f"The prepared set of run {run.run_id} ({run.prepared_dir}) was moved or deleted, so its test "
                 "images cannot be shown. Prepare the data set again with the same settings, or upload a photo.")
        return None
    return explain_view.faces_table(predictions, cache.training_manifest(run.prepared_dir))


def _face_label(row: pd.Series) -> str:
    text = f"{row['source_id']} · {figures.MASK_LABELS.get(str(row['mask_type']), row['mask_type'])} · {row['label']}"
    if str(row["predicted"]) != str(row["label"]):
        text += f" → predicted {row['predicted']}"
        if "confidence" in row and pd.notna(row["confidence"]):
            text += f" ({row['confidence']:.0%})"
    return text


def upload_face_ui(selected: list[RunInfo]) -> Face | None:
    """Let the user upload a photo, find and crop its face, and draw a mask on it."""
    crop = explain_view.crop_settings(selected[0].prepared_dir)
    columns = st.columns([3, 1, 1])
    upload = columns[0].file_uploader("Photo with one face, looking roughly at the camera (never saved)",
                                      type=photos.UPLOAD_TYPES, key="explain-upload")
    mask_type = columns[1].selectbox("Mask to draw", UPLOAD_MASKS, key="explain-upload-mask",
                                     format_func=lambda m: "no mask" if m == MaskType.NONE.value else m)
    coverage = columns[2].slider("Coverage", 0.0, 1.0, float(crop.coverage), 0.05, key="explain-upload-coverage",
                                 help=COVERAGE_HELP)
    if upload is None:
        st.info("Upload a photograph to see what the models look at on a face they have never seen.")
        return None

    try:
        loaded = photos.read_uploaded_image(upload.getvalue(), upload.name)
    except ImageReadError as error:
        st.error(f"{upload.name} cannot be read as an image: {error.describe()}")
        return None
    rgb = photos.shrink_to_fit(loaded.rgb)
    try:
        detection = cache.detect_face(rgb)
    except NoFaceError as error:
        st.error(f"No face was found in {upload.name}: {error}. Try a photo where the face is larger, well lit "
                 "and turned towards the camera.")
        return None

    face = explain_view.face_from_photo(rgb, detection, upload.name, MaskType(mask_type), crop, float(coverage),
                                        greyscale=loaded.greyscale)
    faces_found = f" {detection.face_count} faces were found; the {detection.selection} one is explained." if (
        detection.face_count > 1) else ""
    st.caption(f"Cropped like the prepared faces of {selected[0].title}: {crop.crop_size} px, with a margin of "
               f"{crop.margin:.0%} around the face box.{faces_found}")
    return face


# ---------------------------------------------------------------------------------------------
# The grid


def explain_selected(selected: list[RunInfo], face: Face, request: ExplainRequest) -> list[RunExplanation]:
    """Explain the face with every selected run, showing LIME's progress; a run that fails shows an error."""
    memo = st.session_state.setdefault(MEMO_KEY, explain_view.MapMemo())
    slot = st.empty()
    explained = []
    for run in selected:
        def report(done: int, total: int, run: RunInfo = run) -> None:
            slot.progress(done / total, text=f"LIME for {run.title}: {done} of {total} samples")

        try:
            predictions = cache.run_predictions(run.run_dir)
        except (FileNotFoundError, ValueError):
            # Without readable predictions the face is explained with the run's first fold model.
            predictions = None
        try:
            with st.spinner(f"Explaining the face with {run.title}..."):
                explained.append(explain_view.explain_for_run(
                    run, face, request, predictions, lambda fold, run=run: cache.trained_model(run.run_dir, fold),
                    memo, report))
        except (FileNotFoundError, ValueError, RuntimeError, OSError) as error:
            logger.warning("explaining %s with run %s failed: %s", face.name, run.run_id, error)
            st.error(f"{run.title} cannot explain this face: {error}")
    slot.empty()
    return explained


def face_header(face: Face) -> None:
    """Draw the face with its mask outline and what is known about it."""
    left, right = st.columns([1, 3])
    left.image(explain_view.picture(face), caption="Face and mask outline", width="stretch")
    mask = "unmasked" if face.mask_type == MaskType.NONE.value else face.mask_type
    right.markdown(f"**{face.name}**  \nMask: {mask}  \n"
                   f"True class: {face.true_label or 'unknown (uploaded photo)'}  \n"
                   f"Crop: {face.rgb.shape[1]} x {face.rgb.shape[0]} pixels")
    right.caption(face.outline_note())


def run_row(face: Face, item: RunExplanation, request: ExplainRequest) -> None:
    """Draw one run: prediction with probabilities, then the CAM and LIME maps with the mask outline."""
    with st.container(border=True):
        st.markdown(f"**{item.run.backbone}** · `{item.run.run_id}` · {item.run.dataset}")
        st.caption(item.fold_note(face))
        left, middle, right = st.columns([1.2, 1, 1])
        with left:
            probability = float(item.probabilities.max())
            truth = f" · true **{face.true_label}**" if face.true_label else ""
            st.markdown(f"Predicted **{item.predicted}** ({probability:.0%}){truth}")
            st.plotly_chart(explain_view.probability_figure(item), key=f"explain-probabilities-{item.run.run_id}",
                            config={"displayModeBar": False})
            if item.problem:
                st.warning(item.problem)
            else:
                st.markdown(f"Explaining **{item.class_name}**")

        if item.problem:
            # The warning beside the prediction explains why no class could be explained.
            return
        cam_caption = f"{request.method.value} at {item.cam_layer}"
        _map_cell(middle, face, item.cam, item.cam_error, cam_caption, item.cam_share)
        if request.lime:
            lime_caption = f"LIME, {request.samples} samples, {request.segmentation.value}, seed {request.seed}"
            _map_cell(right, face, item.lime, item.lime_error, lime_caption, item.lime_share)
        else:
            right.caption("LIME is switched off.")


def _map_cell(column: DeltaGenerator, face: Face, heatmap: np.ndarray | None, error: str | None, caption: str,
              share: AttributionShare | None) -> None:
    if heatmap is None:
        column.error(error or "No map was computed.")
        return
    shares = explain_view.share_text(share)
    column.image(explain_view.picture(face, heatmap), caption=f"{caption}. {shares}" if shares else caption,
                 width="stretch")


def export_section(face: Face, explained: list[RunExplanation], request: ExplainRequest) -> None:
    """Draw the grid's PNG download and the numbers per run with their CSV download."""
    st.subheader("Numbers and export")
    stem = widgets.file_stem(f"explain_{Path(face.name).stem}_{request.method.value}")
    st.download_button("Grid (PNG)", data=lambda: explain_view.grid_png(face, explained, request),
                       file_name=f"{stem}.png", mime="image/png", key="explain-grid-png", on_click="ignore",
                       icon=":material/download:", help="The face, CAM and LIME maps of every run with their "
                                                       "predictions, as one picture.")
    numbers = explain_view.numbers_table(face, explained, request)
    widgets.show_table(numbers, stem, key="explain-numbers", column_config=_percent_columns(numbers))


def _percent_columns(frame: pd.DataFrame) -> dict:
    percent = st.column_config.NumberColumn(format="percent")
    return {column: percent for column in frame.columns
            if column.startswith("prob_") or column.endswith(("_share", "_area"))}


def faces_tab(selected: list[RunInfo], request: ExplainRequest) -> None:
    """Draw the face picker and the grid of runs."""
    face = face_ui(selected)
    if face is None:
        return
    face_header(face)
    explained = explain_selected(selected, face, request)
    st.caption("CAM maps run from blue (no attribution) to red (strongest). LIME colours superpixels red where "
               "they support the explained class and blue where they speak against it. The white line is the "
               "mask outline.")
    for item in explained:
        run_row(face, item, request)
    if not face.uploaded:
        widgets.credit_if_london(face.dataset)
    if explained:
        export_section(face, explained, request)


# ---------------------------------------------------------------------------------------------
# Summary of whole test sets


@st.cache_data(show_spinner=False, max_entries=32)
def _attribution_table(path: str, stamp: float) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"image": "string", "mask_type": "string", "explained_class": "string",
                                    "fold": "string"}, keep_default_na=False, na_values=[""])


def summary_section(selected: list[RunInfo]) -> None:
    """Draw the upper- and lower-face attribution shares of the runs' whole test data."""
    files = {run.run_id: explain_view.attribution_files(run.run_dir) for run in selected}
    slugs = sorted({slug for found in files.values() for slug in found})
    if not slugs:
        st.info("No attribution table yet for these runs. Explain a run's whole test data below; its upper- and "
                "lower-face shares then appear here.")
        return

    slug = st.selectbox("Explanation settings", slugs, key="explain-summary-slug",
                        help="Method, layer, class target and fold of the batch explanation, as in the file name.")
    tables = {}
    for run_id, found in files.items():
        if slug in found:
            tables[run_id] = _attribution_table(str(found[slug]), found[slug].stat().st_mtime)
    missing = [run.title for run in selected if run.run_id not in tables]
    if missing:
        st.caption("No table with these settings for: " + ", ".join(missing))

    combined = explain_view.combine_attribution(tables, explain_view.model_names(selected))
    if combined.empty or combined["upper_share"].notna().sum() == 0:
        st.info("These tables have no image with a mask outline and a positive map, so there are no shares to show.")
        return
    widgets.show_figure(explain_view.region_share_figure(combined), f"attribution_regions_{slug}",
                        key="explain-summary-regions")
    widgets.show_figure(explain_view.upper_share_figure(combined, "explained_class", "Upper-face share per class",
                                                        "explained class"),
                        f"attribution_upper_per_class_{slug}", key="explain-summary-classes")
    widgets.show_figure(explain_view.upper_share_figure(combined, "mask_type", "Upper-face share per mask type",
                                                        "mask type"),
                        f"attribution_upper_per_mask_{slug}", key="explain-summary-masks")
    summary = explain_view.share_summary(combined, ("model", "explained_class", "mask_type"))
    percent = st.column_config.NumberColumn(format="percent")
    widgets.show_table(summary, f"attribution_summary_{slug}", key="explain-summary-table", column_config={
        **{column: percent for column in ("mask_share", "upper_share", "other_share", "mask_area", "upper_area")},
        "upper_enrichment": st.column_config.NumberColumn(format="%.2f", help="Upper-face share divided by the "
                                                          "upper face's share of the pixels; above 1 means the "
                                                          "maps favour the upper face."),
    })
    faithfulness = explain_view.faithfulness_summary(combined)
    if faithfulness is not None:
        st.markdown("**Faithfulness** (deletion AUC: lower is better; insertion AUC and ROAD: higher is better)")
        widgets.show_table(faithfulness, f"attribution_faithfulness_{slug}", key="explain-summary-faithfulness")


def batch_section(selected: list[RunInfo], request: ExplainRequest) -> None:
    """Draw the button that explains a run's whole test data as a background job, and its progress."""
    st.subheader("Explain a whole test set")
    st.caption("Runs in the background, so you can leave the page. Each test image is explained by the fold that "
               "tested it; the table lands in the run's explanations folder. LIME uses the samples, superpixels and "
               "seed chosen above, and CAM methods the chosen layer.")
    by_id = {run.run_id: run for run in selected}
    columns = st.columns([2, 1, 1, 1])
    run_id = columns[0].selectbox("Run", list(by_id), format_func=lambda r: by_id[r].title, key="explain-batch-run")
    methods = explain_methods()
    method = columns[1].selectbox("Method", methods, index=methods.index(request.method.value),
                                  key="explain-batch-method")
    target = columns[2].radio("Class per image", list(TARGET_TITLES), format_func=TARGET_TITLES.get,
                              key="explain-batch-target")
    faithfulness = columns[3].checkbox("Faithfulness scores", key="explain-batch-faithfulness",
                                       help="Adds deletion, insertion and ROAD scores per image: about 60 extra "
                                            "forward passes each.")
    run = by_id[run_id]
    settings = ExplainSettings(method=method, layer=None if method == LIME_METHOD else request.layer_for(run.backbone),
                               target=target, samples=request.samples, segmentation=request.segmentation,
                               n_segments=request.n_segments, seed=request.seed, faithfulness=faithfulness)
    if st.button("Explain the test data in the background", key="explain-batch-start", icon=":material/play_arrow:"):
        try:
            explain_view.submit_batch(jobs_root(), run.run_dir, settings, needs_gpu=cache.compute_device()[2])
        except (JobConflictError, ValueError, OSError) as error:
            logger.warning("batch explanation of %s was not queued: %s", run.run_id, error)
            st.error(f"The batch explanation was not started: {error}")
    batch_status(str(run.run_dir))


@st.fragment(run_every=2)
def batch_status(run_dir: str) -> None:
    """Draw the latest batch explanation of a run; refreshes every 2 seconds.

    When a batch that this session saw running ends, the whole page reruns once so the new
    attribution table appears in the summary.
    """
    progress = explain_view.batch_progress(jobs_root(), Path(run_dir))
    if progress is None:
        return
    name = Path(run_dir).name
    watched = st.session_state.setdefault(WATCHED_KEY, set())
    if progress.running:
        watched.add(run_dir)
        if progress.status.state is JobState.QUEUED:
            text = "queued until the running job ends"
        elif progress.total:
            text = f"{progress.done} of {progress.total} images"
        else:
            text = "loading the models"
        st.progress(progress.fraction, text=f"Explaining the test data of {name} ({progress.slug or 'starting'}): "
                                            f"{text}")
        return

    if run_dir in watched:
        watched.discard(run_dir)
        st.rerun(scope="app")
    if progress.error:
        st.error(f"The last batch explanation of {name} failed: {progress.error}")
    elif progress.table:
        st.caption(f"The last batch explanation of {name} ({progress.slug}) finished: {progress.done} images, "
                   f"{progress.failed_images or 0} with errors.")


def summary_tab(selected: list[RunInfo], request: ExplainRequest) -> None:
    """Draw the attribution summary and the batch explanation controls."""
    summary_section(selected)
    batch_section(selected, request)


def main() -> None:
    """Draw the explain page."""
    widgets.page_intro("Explain", "What trained models look at when the lower face is covered: CAM and LIME maps "
                                  "of several runs on one face, and upper- versus lower-face attribution over "
                                  "whole test sets.")
    found, left_out = available_runs()
    if not found:
        if left_out:
            st.info("No run has a finished fold yet, so there is no trained model to explain. Follow the training "
                    "on the Runs page.")
        else:
            st.info("No run yet. Train models on the Train page; they can be explained once their first fold ends.")
        st.page_link("pages/4_train.py", label="Open Train", icon=":material/model_training:")
        return

    selected = runs_ui(found)
    if left_out:
        with st.expander(f"{len(left_out)} runs cannot be explained yet"):
            st.markdown("\n".join(f"- {reason}" for reason in left_out))
    if not selected:
        st.info("Choose at least one run to explain.")
        return
    if len(selected) == 1:
        st.caption("Add a second run to compare what different models look at.")

    with st.expander("Explanation settings", expanded=True):
        request = settings_ui(selected)
    faces, summary = st.tabs(["Faces", "Summary"])
    with faces:
        faces_tab(selected, request)
    with summary:
        summary_tab(selected, request)


main()
