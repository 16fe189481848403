"""Train page: choose a prepared data set, backbones and protocols, check them and launch jobs."""

from __future__ import annotations

from datetime import timezone
from pathlib import Path

import streamlit as st

from fer_core.constants import DEFAULT_EPOCHS, DEFAULT_LEARNING_RATE, Backbone, MaskType, Protocol
from fer_core.dashboard import cache, forms, widgets
from fer_core.jobs import RESUMABLE_STATES, JobConflictError, JobNotFoundError, JobState, get_runner
from fer_core.models import get_spec
from fer_core.paths import jobs_root, runs_root
from fer_core.prepare import PrepareSettings
from fer_core.splits import PiScheme
from fer_core.training import TrainSettings

QUEUE_ROWS = 15
STATE_COLOURS = {
    JobState.QUEUED: "gray", JobState.RUNNING: "blue", JobState.SUCCEEDED: "green",
    JobState.FAILED: "red", JobState.CANCELLED: "orange", JobState.INTERRUPTED: "orange",
}


def dataset_ui() -> tuple[Path, str] | None:
    """Let the user choose a data set and one of its prepared sets; offer to prepare it."""
    summaries = cache.prepared_summaries()
    names = list(dict.fromkeys([spec.resolved_name() for spec in cache.current_dataset_specs()]
                               + list(summaries["data set"])))
    if not names:
        st.info("No data set is available. Add one on the Data sets page.")
        return None

    name = st.selectbox("Data set", names, key="train-dataset")
    mine = summaries[summaries["data set"] == name]
    if mine.empty:
        st.warning(f"{name} is not prepared yet: its faces must be detected, masked and cropped first.")
        widgets.prepare_button(name, PrepareSettings(), f"Prepare {name} with the default settings",
                               key="train-prepare")
        return None

    indexed = mine.set_index("folder")
    folder = st.selectbox("Prepared set", list(indexed.index), key=f"train-prepared-{name}",
                          format_func=lambda f: (f"{indexed.at[f, 'face crops']} crops; masks "
                                                 f"{indexed.at[f, 'mask types']}; coverage {indexed.at[f, 'coverage']}"))
    return Path(folder), name


def model_ui() -> tuple[tuple[Backbone, ...], tuple[Protocol, ...], bool]:
    """Collect backbones, protocols and whether to start from pretrained weights."""
    left, right = st.columns(2)
    backbones = left.multiselect("Backbones (one run each)", list(Backbone), default=[Backbone.SQUEEZENET],
                                 format_func=lambda b: get_spec(b).display_name, key="train-backbones")
    protocols = right.multiselect("Protocols (one run each)", list(Protocol), default=[Protocol.PD],
                                  format_func=lambda p: forms.PROTOCOL_TITLES[p], key="train-protocols",
                                  help="PD tests on new photos of people seen in training, PI on people never "
                                       "seen. Leaky splits masked copies of one photo across training and test "
                                       "data, which inflates accuracy: use it only to show that effect.")
    pretrained = left.toggle("Start from pretrained weights", value=True, key="train-pretrained",
                             help="ImageNet weights (VGGFace2 for InceptionResnetV1). Off: train from scratch.")
    return tuple(backbones), tuple(protocols), pretrained


def schedule_ui() -> dict:
    """Collect epochs, learning rate, batch size, seed, device and folds."""
    columns = st.columns(4)
    paper_epochs = columns[0].checkbox(f"Paper's epochs ({DEFAULT_EPOCHS[Protocol.PD]} PD, "
                                       f"{DEFAULT_EPOCHS[Protocol.PI]} PI)", value=False, key="train-paper-epochs")
    epochs = None if paper_epochs else int(columns[0].number_input("Epochs", 1, 500, 5, key="train-epochs"))
    learning_rate = columns[1].number_input("Learning rate", 1e-6, 1.0, DEFAULT_LEARNING_RATE, format="%.5f",
                                            key="train-lr")
    batch_size = columns[1].number_input("Batch size", 2, 512, 32, key="train-batch")
    seed = columns[2].number_input("Seed", 0, 1_000_000, 0, key="train-seed",
                                   help="Fixes the split, the initial head weights and the batch order.")
    device = columns[2].selectbox("Device", ("auto", "cpu", "cuda"), key="train-device",
                                  help="auto takes the GPU when there is one.")
    folds = columns[3].number_input("Folds", 1, 20, 5, key="train-folds",
                                    help="PD and k-fold PI split into this many folds; 1 is one hold-out split.")
    pi_scheme = columns[3].selectbox("PI scheme", list(PiScheme), key="train-pi-scheme",
                                     format_func=lambda s: {"loso": "leave one subject out",
                                                            "kfold": "k folds of subjects"}[s.value])
    quick = columns[3].number_input("Run only the first N folds (0: all)", 0, 200, 0, key="train-max-folds")
    return {"epochs": epochs, "learning_rate": float(learning_rate), "batch_size": int(batch_size),
            "seed": int(seed), "device": device, "folds": int(folds), "pi_scheme": pi_scheme,
            "max_folds": int(quick) or None}


def masks_ui() -> tuple[tuple[MaskType, ...], bool]:
    """Collect which masked copies (and whether the unmasked copy) go into training."""
    left, right = st.columns([3, 1])
    masks = left.multiselect("Mask types used for training", list(MaskType.drawn()), default=list(MaskType.drawn()),
                             format_func=lambda m: m.value, key="train-masks",
                             help="Test data always contains every copy, so accuracy per mask type shows how "
                                  "well the model handles masks it did not see.")
    unmasked = right.checkbox("Also unmasked faces", value=True, key="train-unmasked")
    return tuple(masks), unmasked


def checked_settings(choice: forms.TrainChoice) -> list[TrainSettings] | None:
    """Build and check the runs; show every problem and return None unless all can start."""
    try:
        settings_list = forms.build_settings(choice)
    except ValueError as error:
        st.error(f"These settings cannot be used: {error}")
        return None

    problems = []
    for settings in settings_list:
        found = (forms.device_problem(settings.device),
                 cache.split_problem(choice.prepared_dir, settings.split_settings(), choice.dataset_name))
        problems += [f"{forms.run_title(settings)}: {problem}" for problem in found if problem]
    for problem in problems:
        st.error(problem)
    for warning in dict.fromkeys(filter(None, (forms.missing_weights(s) for s in settings_list))):
        st.warning(warning)
    return None if problems else settings_list


def launch_section(settings_list: list[TrainSettings]) -> None:
    """Draw the launch button and queue the runs when it is pressed."""
    label = "Start 1 run" if len(settings_list) == 1 else f"Start {len(settings_list)} runs"
    if not st.button(label, type="primary", key="train-launch", icon=":material/rocket_launch:"):
        return
    try:
        submitted = forms.submit_runs(settings_list, runs_root(), jobs_root())
    except (ValueError, OSError, JobConflictError) as error:
        st.error(f"The runs could not be started: {error}")
        return
    st.success("Queued " + ", ".join(f"`{run_dir.name}`" for run_dir, _ in submitted)
               + ". Follow the progress below or on the Runs page.")
    st.page_link("pages/5_runs.py", label="Open Runs", icon=":material/monitoring:")


def _cancel(job_id: str) -> None:
    try:
        get_runner(jobs_root()).cancel(job_id)
    except (JobNotFoundError, JobConflictError, OSError) as error:
        st.session_state["train-queue-error"] = f"Job {job_id} could not be cancelled: {error}"


def _resume(job_id: str) -> None:
    try:
        get_runner(jobs_root()).resume(job_id)
    except (JobNotFoundError, JobConflictError, OSError) as error:
        st.session_state["train-queue-error"] = f"Job {job_id} could not be resumed: {error}"


@st.fragment(run_every=3)
def queue_section() -> None:
    """Draw the latest jobs with cancel and resume buttons; refreshes every 3 seconds."""
    st.subheader("Job queue")
    error = st.session_state.pop("train-queue-error", None)
    if error:
        st.error(error)

    jobs = get_runner(jobs_root()).list_jobs()
    if not jobs:
        st.caption("No jobs yet.")
        return
    for status in reversed(jobs[-QUEUE_ROWS:]):
        columns = st.columns([4, 2, 3, 1])
        columns[0].markdown(f"`{status.label or status.job_id}`")
        stopping = " (stopping)" if status.cancel_requested and not status.state.is_final else ""
        columns[1].markdown(f":{STATE_COLOURS[status.state]}[{status.state.value}{stopping}]")
        columns[2].caption(f"submitted {status.submitted_at.astimezone(timezone.utc):%Y-%m-%d %H:%M:%S} UTC")
        if not status.state.is_final:
            columns[3].button("Cancel", key=f"cancel-{status.job_id}", on_click=_cancel, args=(status.job_id,),
                              disabled=status.cancel_requested)
        elif status.state in RESUMABLE_STATES:
            columns[3].button("Resume", key=f"resume-{status.job_id}", on_click=_resume, args=(status.job_id,),
                              help="Continue from the last finished epoch.")


def main() -> None:
    """Draw the train page."""
    widgets.page_intro("Train", "Fine-tune backbones on a prepared data set; every run trains in the background, "
                                "so you can close the browser.")
    chosen = dataset_ui()
    if chosen is not None:
        prepared_dir, dataset_name = chosen
        backbones, protocols, pretrained = model_ui()
        schedule = schedule_ui()
        train_masks, unmasked = masks_ui()
        choice = forms.TrainChoice(prepared_dir=prepared_dir, dataset_name=dataset_name, backbones=backbones,
                                   protocols=protocols, train_mask_types=train_masks, include_unmasked=unmasked,
                                   pretrained=pretrained, **schedule)
        settings_list = checked_settings(choice)
        if settings_list:
            launch_section(settings_list)
    queue_section()


main()
