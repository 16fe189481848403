"""Explain page tests: Streamlit AppTest on real trained runs, and the helpers behind the page.

Two SqueezeNet runs (PD and PI) are trained by the training engine on real London faces at
64 px, so every map comes from trained weights. LIME runs with 20 samples to stay fast.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import streamlit as st
from PIL import Image
from streamlit.testing.v1 import AppTest
from test_dashboard_apptest import navigation_mode, texts  # noqa: F401 (navigation_mode is an autouse fixture)
from test_training import write_prepared_set

from fer_core import runs
from fer_core.constants import Backbone, MaskType, Protocol
from fer_core.dashboard import explain_view
from fer_core.explain import ExplainSettings, explain_table, run_explain_job
from fer_core.explain.__main__ import build_parser
from fer_core.images import read_image
from fer_core.jobs import JobState, get_runner
from fer_core.splits import read_manifest
from fer_core.training import TrainSettings, train

REPO_ROOT = Path(__file__).resolve().parent.parent
APP = REPO_ROOT / "streamlit_app.py"
PAGE = "pages/7_explain.py"
# Seconds one script run may take; the first run of a process loads torch.
RUN_TIMEOUT = 120
LIME_SAMPLES = 20
# Seconds a background explanation job may take: a new process loads torch and the run's models.
JOB_TIMEOUT = 180
CLASSES = ("happy", "neutral")
# 4 subjects x 2 photographs x 2 crops (unmasked and surgical); every crop is tested once per run.
TEST_IMAGES = 16
BATCH_SETTINGS = ExplainSettings(method="gradcam", device="cpu")
SUMMARY_TITLES = ("Where positive attribution falls, per model", "Upper-face share per class",
                  "Upper-face share per mask type")


# ---------------------------------------------------------------------------------------------
# Fixtures: two trained runs, built once per module


def _train_run(runs_root: Path, prepared: Path, protocol: Protocol) -> Path:
    settings = TrainSettings(prepared_dir=prepared, backbone=Backbone.SQUEEZENET, protocol=protocol, epochs=1,
                             batch_size=8, folds=2, pi_scheme="kfold", pretrained=False, input_size=64, device="cpu")
    run_dir = runs.create_run(runs_root, settings)
    assert train(settings, run_dir)["status"] == "succeeded"
    return run_dir


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, london_root: Path) -> dict:
    """Build an artifacts folder with a prepared London subset and a PD and a PI SqueezeNet run."""
    root = tmp_path_factory.mktemp("explain") / "artifacts"
    prepared = root / "prepared" / "london-test-000000000000"
    prepared.mkdir(parents=True)
    write_prepared_set(prepared, london_root, subjects=4, size=64, mask_types=(MaskType.NONE, MaskType.SURGICAL))
    run_dirs = [_train_run(root / "runs", prepared, protocol) for protocol in (Protocol.PD, Protocol.PI)]
    return {"root": root, "prepared": prepared, "runs": run_dirs}


@pytest.fixture(scope="module")
def batch_explained(trained: dict) -> dict:
    """Explain both runs' whole test data in this process, as the background job does."""
    for run_dir in trained["runs"]:
        run_explain_job(run_dir, BATCH_SETTINGS)
    return trained


@pytest.fixture()
def trained_env(trained: dict, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Point the dashboard at the artifacts folder with the two runs."""
    monkeypatch.setenv("FER_STUDIO_ARTIFACTS", str(trained["root"]))
    st.cache_data.clear()
    return trained


@pytest.fixture()
def empty_env(artifacts_dir: Path) -> Path:
    """Point the dashboard at an empty artifacts folder."""
    st.cache_data.clear()
    return artifacts_dir


def open_explain(**state: object) -> AppTest:
    """Run the app, switch to the Explain page with 20 LIME samples and the given session state, and run it."""
    app = AppTest.from_file(str(APP), default_timeout=RUN_TIMEOUT)
    app.run()
    app.switch_page(PAGE)
    for key, value in {"explain-samples": LIME_SAMPLES, **state}.items():
        app.session_state[key] = value
    return app.run()


def image_captions(app: AppTest) -> list[str]:
    """Return the captions of every image on the page."""
    return [caption for image in app.image for caption in image.captions]


def chart_titles(app: AppTest) -> list[str]:
    """Return the titles of every Plotly chart on the page."""
    titles = []
    for chart in app.get("plotly_chart"):
        title = json.loads(chart.proto.spec).get("layout", {}).get("title", {})
        titles.append(title.get("text", "") if isinstance(title, dict) else str(title))
    return titles


def first_face(run: explain_view.RunInfo) -> explain_view.Face:
    """Return the first unmasked test crop of a run as a Face."""
    table = explain_view.faces_table(runs.load_predictions(run.run_dir), read_manifest(run.prepared_dir))
    row = table[table["mask_type"] == MaskType.NONE.value].iloc[0].to_dict()
    return explain_view.face_from_row(read_image(run.prepared_dir / row["image"]).rgb, row, run.prepared_dir,
                                      run.dataset)


def explain_runs(run_dirs: list[Path], request: explain_view.ExplainRequest) -> tuple:
    """Explain the first run's first unmasked test crop with every run; return the face and the results."""
    infos = [explain_view.describe_run(run_dir) for run_dir in run_dirs]
    face = first_face(infos[0])
    memo = explain_view.MapMemo()
    explained = [explain_view.explain_for_run(info, face, request, runs.load_predictions(info.run_dir),
                                              lambda fold, info=info: runs.load_trained_model(info.run_dir, fold),
                                              memo)
                 for info in infos]
    return face, explained


# ---------------------------------------------------------------------------------------------
# Empty states


def test_page_without_runs(empty_env: Path) -> None:
    app = open_explain()
    assert any("No run yet" in message for message in texts(app.info))


def test_page_without_finished_fold(empty_env: Path, london_root: Path, tmp_path: Path) -> None:
    prepared = write_prepared_set(tmp_path / "prepared", london_root, subjects=2, size=64)
    runs.create_run(empty_env / "runs", TrainSettings(prepared_dir=prepared, device="cpu"))
    app = open_explain()
    assert any("No run has a finished fold yet" in message for message in texts(app.info))


# ---------------------------------------------------------------------------------------------
# The grid


def test_grid_shows_cam_per_run(trained_env: dict) -> None:
    app = open_explain()
    assert not app.exception, [error.value for error in app.exception]
    assert sum(caption.startswith("gradcam at ") for caption in image_captions(app)) == 2


def test_grid_shows_lime_per_run(trained_env: dict) -> None:
    app = open_explain()
    lime = [caption for caption in image_captions(app) if caption.startswith(f"LIME, {LIME_SAMPLES} samples")]
    assert len(lime) == 2


def test_grid_uses_testing_fold(trained_env: dict) -> None:
    app = open_explain()
    notes = [caption for caption in texts(app.caption) if "which tested this crop" in caption]
    assert len(notes) == 2


def test_grid_explains_chosen_class(trained_env: dict) -> None:
    app = open_explain(**{"explain-lime": False})
    predicted = app.dataframe[0].value.at[0, "predicted"]
    other = next(name for name in CLASSES if name != predicted)

    app.radio(key="explain-label").set_value("chosen").run()
    app.selectbox(key="explain-class").set_value(other).run()
    numbers = app.dataframe[0].value
    assert (numbers["explained_class"] == other).all()
    assert numbers.at[0, "predicted"] != other


def test_grid_offers_png(trained_env: dict) -> None:
    app = open_explain(**{"explain-lime": False})
    assert "Grid (PNG)" in [button.label for button in app.get("download_button")]


def test_grid_png_is_png(trained: dict) -> None:
    face, explained = explain_runs(trained["runs"], explain_view.ExplainRequest(samples=LIME_SAMPLES))
    image = Image.open(io.BytesIO(explain_view.grid_png(face, explained, explain_view.ExplainRequest())))
    assert image.format == "PNG"


def test_grid_png_row_per_run(trained: dict) -> None:
    request = explain_view.ExplainRequest(lime=False)
    face, explained = explain_runs(trained["runs"], request)
    header_only = explain_view.grid_image(face, [], request).shape[0]
    one_row = explain_view.grid_image(face, explained[:1], request).shape[0]
    two_rows = explain_view.grid_image(face, explained, request).shape[0]
    assert two_rows - one_row == one_row - header_only


def test_grid_png_shows_maps(trained: dict) -> None:
    request = explain_view.ExplainRequest(lime=False)
    face, explained = explain_runs(trained["runs"], request)
    assert not np.array_equal(explain_view.picture(face, explained[0].cam), explain_view.picture(face))


# ---------------------------------------------------------------------------------------------
# Uploads


def _upload(app: AppTest, name: str, data: bytes, mime: str) -> AppTest:
    app.button_group(key="explain-source").set_value("Upload a photo").run()
    app.file_uploader(key="explain-upload").set_value((name, data, mime))
    return app.run()


def test_upload_without_face(trained_env: dict) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (200, 200), (128, 128, 128)).save(buffer, format="PNG")
    app = _upload(open_explain(**{"explain-lime": False}), "grey.png", buffer.getvalue(), "image/png")
    assert any("No face was found in grey.png" in message for message in texts(app.error))


def test_upload_uses_first_fold(trained_env: dict, london_root: Path) -> None:
    data = (london_root / "smiling" / "002_08.jpg").read_bytes()
    app = _upload(open_explain(**{"explain-lime": False}), "me.jpg", data, "image/jpeg")
    notes = [caption for caption in texts(app.caption) if "Uploaded face: explained by the model of the run's "
             "first finished fold" in caption]
    assert len(notes) == 2


# ---------------------------------------------------------------------------------------------
# Summary and batch jobs


def test_summary_shows_share_plots(batch_explained: dict, trained_env: dict) -> None:
    app = open_explain(**{"explain-lime": False})
    titles = chart_titles(app)
    for title in SUMMARY_TITLES:
        assert title in titles


def test_summary_reports_batch(batch_explained: dict, trained_env: dict) -> None:
    app = open_explain(**{"explain-lime": False})
    assert any(f"finished: {TEST_IMAGES} images" in caption for caption in texts(app.caption))


def test_batch_button_runs_job(trained_env: dict) -> None:
    # The PI run gets this job, so the PD run's latest batch stays the one of `batch_explained`.
    app = open_explain(**{"explain-lime": False, "explain-batch-method": "eigencam",
                          "explain-batch-run": trained_env["runs"][1].name})
    app.button(key="explain-batch-start").click().run()
    runner = get_runner(trained_env["root"] / "jobs")
    job = [status for status in runner.list_jobs() if status.kind == explain_view.EXPLAIN_JOB_KIND][-1]
    final = runner.wait(job.job_id, timeout=JOB_TIMEOUT)
    assert final.state is JobState.SUCCEEDED, final.error
    assert "eigencam-default-predicted-all" in explain_view.attribution_files(job.run_dir.parent)


def test_batch_progress_from_events(batch_explained: dict, tmp_path: Path) -> None:
    progress = explain_view.batch_progress(tmp_path / "jobs", batch_explained["runs"][0])
    assert progress.done == TEST_IMAGES
    assert progress.slug == BATCH_SETTINGS.slug()


def test_batch_argv_matches_cli(trained: dict) -> None:
    settings = ExplainSettings(method="gradcam++", layer="features.9", target="true", fold="fold-01")
    args = build_parser().parse_args(explain_view.batch_argv(trained["runs"][0], settings)[1:])
    assert (args.method, args.layer, args.target, args.fold) == ("gradcam++", "features.9", "true", "fold-01")


def test_batch_folder_is_not_run_folder(trained: dict) -> None:
    run_dir = trained["runs"][0]
    assert explain_view.batch_folder(run_dir) == Path(os.path.abspath(run_dir / "explanations"))


def test_share_summary_per_model(batch_explained: dict) -> None:
    infos = [explain_view.describe_run(run_dir) for run_dir in batch_explained["runs"]]
    tables = {info.run_id: pd.read_csv(explain_view.attribution_files(info.run_dir)[BATCH_SETTINGS.slug()])
              for info in infos}
    combined = explain_view.combine_attribution(tables, explain_view.model_names(infos))
    assert len(explain_view.share_summary(combined, ("model",))) == 2


def test_faithfulness_summary_per_model(trained: dict, tmp_path: Path) -> None:
    info = explain_view.describe_run(trained["runs"][0])
    predictions = runs.load_predictions(info.run_dir)
    rows = explain_view.faces_table(predictions[predictions["fold"] == info.folds[0]].head(1),
                                    read_manifest(info.prepared_dir))
    settings = ExplainSettings(method="gradcam", faithfulness=True, device="cpu")
    table = explain_table(rows, info.prepared_dir, lambda fold: runs.load_trained_model(info.run_dir, fold), settings,
                          tmp_path / "cache")
    combined = explain_view.combine_attribution({info.run_id: table}, explain_view.model_names([info]))
    summary = explain_view.faithfulness_summary(combined)
    assert summary["deletion_auc"].between(0, 1).all()
    assert summary.at[0, "images"] == len(table)


def test_faithfulness_summary_without_scores(batch_explained: dict) -> None:
    info = explain_view.describe_run(batch_explained["runs"][0])
    table = pd.read_csv(explain_view.attribution_files(info.run_dir)[BATCH_SETTINGS.slug()])
    combined = explain_view.combine_attribution({info.run_id: table}, explain_view.model_names([info]))
    assert explain_view.faithfulness_summary(combined) is None


# ---------------------------------------------------------------------------------------------
# Helpers


def test_label_true_without_label() -> None:
    request = explain_view.ExplainRequest(label_choice="true")
    label, problem = explain_view.resolve_label(request, CLASSES, np.array([0.4, 0.6]), None)
    assert label is None
    assert "no true label" in problem


def test_label_chosen_missing_class() -> None:
    request = explain_view.ExplainRequest(label_choice="chosen", chosen_class="fear")
    label, problem = explain_view.resolve_label(request, CLASSES, np.array([0.4, 0.6]), "happy")
    assert label is None
    assert "'fear' is not one of this run's classes" in problem


def test_memo_evicts_oldest() -> None:
    memo = explain_view.MapMemo(max_entries=2)
    for key in ("a", "b", "c"):
        memo.get_or_compute(key, lambda: np.zeros(1))
    assert "a" not in memo


def test_memo_reuses_value() -> None:
    memo = explain_view.MapMemo()
    first = memo.get_or_compute("a", lambda: np.zeros(1))
    assert memo.get_or_compute("a", lambda: np.ones(1)) is first
