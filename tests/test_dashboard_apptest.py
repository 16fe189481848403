"""Dashboard tests: every page through Streamlit's AppTest, and the helpers behind the pages.

The pages run against real components: London faces, the real MTCNN and landmark model and a
real prepared set of six London photographs. Run folders are written by the engine's own run
and evaluation code. Only the predictions are made up, so no network trains here.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import zipfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import streamlit as st
import torch
from PIL import Image
from streamlit.runtime.pages_manager import PagesManager
from streamlit.testing.v1 import AppTest

from fer_core import runs as runs_module
from fer_core.constants import Backbone, MaskType, Protocol
from fer_core.dashboard import exports, figures, forms, results, uploads
from fer_core.datasets import DatasetKind, DatasetSpec, load_dataset
from fer_core.evaluation import evaluate_run
from fer_core.jobs import JobState, get_runner
from fer_core.prepare import PrepareSettings, prepare_dataset
from fer_core.training import TrainSettings, append_event

REPO_ROOT = Path(__file__).resolve().parent.parent
APP = REPO_ROOT / "streamlit_app.py"
PAGES = ("pages/1_home.py", "pages/2_mask_preview.py", "pages/3_datasets.py", "pages/4_train.py",
         "pages/5_runs.py", "pages/6_results.py", "pages/7_explain.py", "pages/8_compare.py")
# Seconds one script run may take; the first run of a process loads torch, MTCNN and dlib.
RUN_TIMEOUT = 120
# Seconds a background preparation of two photographs may take: a new process loads torch and the models.
PREPARE_TIMEOUT = 180
SUBJECTS = ("001", "002", "003")
FAILED_MESSAGE = "RuntimeError: CUDA out of memory while training fold subject-002"


# ---------------------------------------------------------------------------------------------
# Fixtures: a populated artifacts folder, built once per module


def _london_subset(london_root: Path):
    table = load_dataset(DatasetSpec(DatasetKind.LONDON, london_root), check_images=False)
    table.frame = table.frame[table.frame["subject"].isin(SUBJECTS)].reset_index(drop=True)
    return table


def _write_predictions(run_dir: Path, manifest: pd.DataFrame, protocol: Protocol) -> None:
    """Write predictions.csv and training.json as training would, with one wrong prediction per fold."""
    frame = manifest.copy()
    frame["subject"] = frame["subject"].astype(str)
    if protocol is Protocol.PI:
        frame["fold"] = "subject-" + frame["subject"]
    else:
        sources = sorted(frame["source_id"].astype(str).unique())
        frame["fold"] = frame["source_id"].astype(str).map(lambda s: f"fold-{sources.index(s) % 2 + 1}")

    classes = sorted(frame["label"].astype(str).unique())
    frame["predicted"] = frame["label"].astype(str)
    for _, rows in frame.groupby("fold"):
        first = rows.index[0]
        frame.loc[first, "predicted"] = next(c for c in classes if c != frame.at[first, "label"])
    for name in classes:
        frame[f"prob_{name}"] = np.where(frame["predicted"] == name, 0.8, 0.2)

    columns = ["image", "source_id", "subject", "label", "mask_type", "fold", "predicted"]
    frame[columns + [f"prob_{c}" for c in classes]].to_csv(run_dir / "predictions.csv", index=False)
    folds = [{"name": name, "train_images": 0, "test_images": len(rows),
              "test_subjects": sorted(rows["subject"].unique())} for name, rows in frame.groupby("fold")]
    record = {"backbone": Backbone.SQUEEZENET.value, "classes": classes, "input_size": 224,
              "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "folds": folds}
    (run_dir / "training.json").write_text(json.dumps(record))


def _write_events(run_dir: Path, folds: list[str], finished: bool) -> None:
    append_event(run_dir, "run_start", backbone=Backbone.SQUEEZENET.value, folds=folds, epochs=2)
    for position, fold in enumerate(folds, start=1):
        append_event(run_dir, "fold_start", fold=fold, position=position, folds=len(folds), resumed_from_epoch=0)
        for epoch in (1, 2):
            append_event(run_dir, "epoch", fold=fold, epoch=epoch, epochs=2, train_loss=1.0 / epoch,
                         train_accuracy=0.5 + 0.2 * epoch, test_loss=1.2 / epoch, test_accuracy=0.4 + 0.2 * epoch,
                         images_per_second=50.0, eta_seconds=30.0)
        if not finished:
            return
        append_event(run_dir, "fold_end", fold=fold, test_accuracy=0.8)
    append_event(run_dir, "run_end", status="succeeded", accuracy=0.8)


def _finished_run(runs_root: Path, prepared_dir: Path, protocol: Protocol, when: datetime) -> str:
    settings = TrainSettings(prepared_dir=prepared_dir, backbone=Backbone.SQUEEZENET, protocol=protocol, epochs=2,
                             device="cpu", folds=2)
    run_dir = runs_module.create_run(runs_root, settings, now=when)
    manifest = pd.read_csv(prepared_dir / "manifest.csv", dtype={"subject": "string", "source_id": "string"})
    _write_predictions(run_dir, manifest, protocol)
    folds = json.loads((run_dir / "training.json").read_text())["folds"]
    _write_events(run_dir, [fold["name"] for fold in folds], finished=True)
    started = when.astimezone(timezone.utc)
    runs_module.update_status(run_dir, state="succeeded", started_at=started.isoformat(),
                              finished_at=(started + timedelta(minutes=3)).isoformat())
    evaluate_run(run_dir)
    return run_dir.name


def _failed_run(runs_root: Path, prepared_dir: Path, when: datetime) -> str:
    settings = TrainSettings(prepared_dir=prepared_dir, backbone=Backbone.RESNET50, protocol=Protocol.PI,
                             epochs=2, device="cpu")
    run_dir = runs_module.create_run(runs_root, settings, now=when)
    append_event(run_dir, "error", message=FAILED_MESSAGE)
    runs_module.update_status(run_dir, state="failed", started_at=when.isoformat(), finished_at=when.isoformat(),
                              error=FAILED_MESSAGE)
    return run_dir.name


def _running_run(runs_root: Path, prepared_dir: Path, when: datetime) -> str:
    settings = TrainSettings(prepared_dir=prepared_dir, backbone=Backbone.ALEXNET, protocol=Protocol.PD,
                             epochs=2, device="cpu", folds=2)
    run_dir = runs_module.create_run(runs_root, settings, now=when)
    _write_events(run_dir, ["fold-1", "fold-2"], finished=False)
    runs_module.update_status(run_dir, state="running", started_at=when.isoformat(), pid=os.getpid())
    return run_dir.name


def _prepared_without_subjects(prepared_dir: Path, prepared_root: Path) -> Path:
    """Copy a prepared set's tables under another data set name, with every subject id removed."""
    folder = prepared_root / "nosubjects-000000000000"
    folder.mkdir()
    manifest = pd.read_csv(prepared_dir / "manifest.csv")
    manifest["subject"] = pd.NA
    manifest.to_csv(folder / "manifest.csv", index=False)
    info = json.loads((prepared_dir / "settings.json").read_text())
    info.update(dataset="nosubjects", has_subjects=False)
    (folder / "settings.json").write_text(json.dumps(info))
    for name in ("faces.csv", "report.csv"):
        shutil.copy(prepared_dir / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory, london_root: Path) -> dict:
    """Build an artifacts folder with a prepared London subset, three finished runs, a failed and a running run."""
    root = tmp_path_factory.mktemp("populated") / "artifacts"
    prepared = prepare_dataset(_london_subset(london_root), PrepareSettings(workers=1),
                               output_root=root / "prepared")
    runs_root = root / "runs"
    start = datetime(2026, 1, 5, 10, 0, tzinfo=timezone.utc)
    pd_run = _finished_run(runs_root, prepared.folder, Protocol.PD, start)
    pi_run = _finished_run(runs_root, prepared.folder, Protocol.PI, start + timedelta(minutes=10))
    failed = _failed_run(runs_root, prepared.folder, start + timedelta(minutes=20))
    running = _running_run(runs_root, prepared.folder, start + timedelta(minutes=30))
    _prepared_without_subjects(prepared.folder, root / "prepared")
    return {"root": root, "prepared": prepared.folder, "pd": pd_run, "pi": pi_run, "failed": failed,
            "running": running}


@pytest.fixture()
def populated_env(populated: dict, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Point the dashboard at the populated artifacts folder."""
    monkeypatch.setenv("FER_STUDIO_ARTIFACTS", str(populated["root"]))
    st.cache_data.clear()
    return populated


@pytest.fixture()
def empty_env(artifacts_dir: Path) -> Path:
    """Point the dashboard at an empty artifacts folder."""
    st.cache_data.clear()
    return artifacts_dir


@pytest.fixture(autouse=True)
def navigation_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Start every AppTest run in Streamlit's st.navigation mode, as a running server is after its first request.

    AppTest resets Streamlit's legacy pages/ flag before each run, so each run would first go
    through `widgets.leave_legacy_page_mode`, whose rerun drops button clicks. Tests that use
    the `legacy_start` fixture keep the reset to check that path.
    """
    if "legacy_start" in request.fixturenames:
        return
    original_init = PagesManager.__init__

    def init_in_navigation_mode(self, *args, **kwargs) -> None:
        original_init(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    monkeypatch.setattr(PagesManager, "__init__", init_in_navigation_mode)


@pytest.fixture()
def legacy_start() -> None:
    """Let AppTest start in Streamlit's legacy pages/ mode, as a freshly started server does."""


def open_page(page: str, query: dict[str, str] | None = None) -> AppTest:
    """Run the app, switch to a page and run it; `query` sets the address's query parameters."""
    app = AppTest.from_file(str(APP), default_timeout=RUN_TIMEOUT)
    app.run()
    app.switch_page(page)
    if query:
        app.query_params.update(query)
    return app.run()


def texts(elements) -> list[str]:
    """Return the values of markdown, alert or caption elements."""
    return [str(element.value) for element in elements]


# ---------------------------------------------------------------------------------------------
# Every page renders


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_empty(page: str, empty_env: Path) -> None:
    app = open_page(page)
    assert not app.exception, [e.value for e in app.exception]


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_with_runs(page: str, populated_env: dict) -> None:
    app = open_page(page)
    assert not app.exception, [e.value for e in app.exception]


def test_navigation_lists_pages(empty_env: Path) -> None:
    app = AppTest.from_file(str(APP), default_timeout=RUN_TIMEOUT).run()
    assert app.title[0].value == "Masked FER Studio"


def test_legacy_start_reaches_page(populated_env: dict, legacy_start: None) -> None:
    app = open_page("pages/5_runs.py")
    assert [title.value for title in app.title] == ["Runs"]


def test_legacy_start_leaves_mode(populated_env: dict, legacy_start: None) -> None:
    open_page("pages/5_runs.py")
    assert PagesManager.uses_pages_directory is False


# ---------------------------------------------------------------------------------------------
# Home


def test_home_lists_london(empty_env: Path) -> None:
    app = open_page("pages/1_home.py")
    table = app.dataframe[0].value
    assert "london" in set(table["data set"])


def test_home_credits_london(empty_env: Path) -> None:
    app = open_page("pages/1_home.py")
    assert any("CC BY 4.0" in caption for caption in texts(app.caption))


# ---------------------------------------------------------------------------------------------
# Mask preview


def test_preview_shows_four_masks(empty_env: Path) -> None:
    app = open_page("pages/2_mask_preview.py")
    captions = [caption for image in app.image for caption in image.captions]
    assert captions[1:] == ["Surgical", "Cloth", "N95", "KN95"]


def test_preview_shows_landmarks(empty_env: Path) -> None:
    app = open_page("pages/2_mask_preview.py")
    assert app.image[0].captions == ["Face box and 68 landmarks"]


def test_preview_offers_zip(empty_env: Path) -> None:
    app = open_page("pages/2_mask_preview.py")
    assert any(button.label == "All four masks (zip)" for button in app.get("download_button"))


def _upload(app: AppTest, name: str, data: bytes, mime: str) -> AppTest:
    app.button_group(key="preview-source").set_value("Upload a photo").run()
    app.file_uploader(key="preview-upload").set_value((name, data, mime))
    return app.run()


def test_preview_unreadable_upload(empty_env: Path) -> None:
    app = _upload(open_page("pages/2_mask_preview.py"), "broken.jpg", b"this is not a JPEG", "image/jpeg")
    assert any("broken.jpg cannot be read" in message for message in texts(app.error))


def test_preview_upload_without_face(empty_env: Path) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (200, 200), (128, 128, 128)).save(buffer, format="PNG")
    app = _upload(open_page("pages/2_mask_preview.py"), "grey.png", buffer.getvalue(), "image/png")
    assert any("No face was found in grey.png" in message for message in texts(app.error))


def test_preview_upload_with_face(empty_env: Path, london_root: Path) -> None:
    data = (london_root / "smiling" / "002_08.jpg").read_bytes()
    app = _upload(open_page("pages/2_mask_preview.py"), "me.jpg", data, "image/jpeg")
    assert len(app.image) == 5


def test_preview_upload_has_no_credit(empty_env: Path, london_root: Path) -> None:
    data = (london_root / "smiling" / "002_08.jpg").read_bytes()
    app = _upload(open_page("pages/2_mask_preview.py"), "me.jpg", data, "image/jpeg")
    assert not any("CC BY 4.0" in caption for caption in texts(app.caption))


def test_preview_colour_applies(empty_env: Path) -> None:
    app = open_page("pages/2_mask_preview.py")
    before = [image.value for image in app.image]
    app.radio(key="preview-colour-choice").set_value("One colour").run()
    assert [image.value for image in app.image][1:] != before[1:]


# ---------------------------------------------------------------------------------------------
# Data sets


def _image_zip(london_root: Path, wrapper: str = "") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for subject in ("001", "002"):
            archive.write(london_root / "neutral" / f"{subject}_03.jpg", f"{wrapper}neutral/{subject}_03.jpg")
            archive.write(london_root / "smiling" / f"{subject}_08.jpg", f"{wrapper}happy/{subject}_08.jpg")
        archive.writestr(f"{wrapper}README.txt", "four faces")
    return buffer.getvalue()


def test_datasets_upload_adds(empty_env: Path, london_root: Path) -> None:
    app = open_page("pages/3_datasets.py")
    app.text_input(key="upload-name").set_value("tiny")
    app.file_uploader(key="upload-zip").set_value(("tiny.zip", _image_zip(london_root, "tiny/"), "application/zip"))
    app.button(key="upload-submit").click().run()
    assert any(message.startswith("Added tiny: 4 images") for message in texts(app.success))


def test_datasets_upload_writes_folder(empty_env: Path, london_root: Path) -> None:
    app = open_page("pages/3_datasets.py")
    app.text_input(key="upload-name").set_value("tiny")
    app.file_uploader(key="upload-zip").set_value(("tiny.zip", _image_zip(london_root), "application/zip"))
    app.button(key="upload-submit").click().run()
    assert sorted(p.name for p in (empty_env / "datasets" / "tiny").iterdir()) == ["happy", "neutral"]


def test_datasets_rejects_bad_path(empty_env: Path) -> None:
    app = open_page("pages/3_datasets.py")
    app.text_input(key="path-name").set_value("ghost")
    app.text_input(key="path-root").set_value(str(empty_env / "no-such-folder"))
    app.button(key="path-submit").click().run()
    assert any("not found" in message for message in texts(app.error))


def test_datasets_shows_grid(populated_env: dict) -> None:
    app = open_page("pages/3_datasets.py")
    assert len(app.image) == len(SUBJECTS) * 2 * len(MaskType)


def test_datasets_counts_figure(populated_env: dict) -> None:
    app = open_page("pages/3_datasets.py")
    assert len(app.get("plotly_chart")) == 2


def test_datasets_prepare_button(empty_env: Path, london_root: Path) -> None:
    folder = empty_env / "two_faces"
    for label, source, name in (("neutral", "neutral", "001_03.jpg"), ("happy", "smiling", "001_08.jpg")):
        (folder / label).mkdir(parents=True)
        shutil.copy(london_root / source / name, folder / label / name)
    app = open_page("pages/3_datasets.py")
    app.text_input(key="path-name").set_value("two")
    app.text_input(key="path-root").set_value(str(folder))
    app.button(key="path-submit").click().run()
    app.multiselect(key="prep-masks").set_value(["none", "surgical"])
    app.button(key="prep-run").click().run()

    runner = get_runner(empty_env / "jobs")
    final = runner.wait(runner.list_jobs()[-1].job_id, timeout=PREPARE_TIMEOUT)
    assert final.state is JobState.SUCCEEDED, final.error
    st.cache_data.clear()
    assert len(app.run().image) == 2 * 2


# ---------------------------------------------------------------------------------------------
# Train


def _train_page(dataset: str) -> AppTest:
    app = open_page("pages/4_train.py")
    app.selectbox(key="train-dataset").set_value(dataset).run()
    return app


def test_train_rejects_pi_without_subjects(populated_env: dict) -> None:
    app = _train_page("nosubjects")
    app.multiselect(key="train-protocols").set_value([Protocol.PI]).run()
    assert any("no subject ids" in message for message in texts(app.error))


def test_train_pi_hides_launch(populated_env: dict) -> None:
    app = _train_page("nosubjects")
    app.multiselect(key="train-protocols").set_value([Protocol.PI]).run()
    assert not [button for button in app.button if button.key == "train-launch"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_train_rejects_cuda_without_gpu(populated_env: dict) -> None:
    app = _train_page("london")
    app.selectbox(key="train-device").set_value("cuda").run()
    assert any("CUDA is not available" in message for message in texts(app.error))


def test_train_offers_launch(populated_env: dict) -> None:
    app = _train_page("london")
    app.number_input(key="train-folds").set_value(2).run()
    assert app.button(key="train-launch").label == "Start 1 run"


def test_train_counts_runs(populated_env: dict) -> None:
    app = _train_page("london")
    app.number_input(key="train-folds").set_value(2)
    app.multiselect(key="train-backbones").set_value([Backbone.SQUEEZENET, Backbone.ALEXNET])
    app.multiselect(key="train-protocols").set_value([Protocol.PD, Protocol.PI]).run()
    assert app.button(key="train-launch").label == "Start 4 runs"


def test_train_unprepared_offers_prepare(empty_env: Path) -> None:
    app = open_page("pages/4_train.py")
    assert app.button(key="train-prepare").label.startswith("Prepare london")


# ---------------------------------------------------------------------------------------------
# Runs, results and compare


def test_runs_lists_all(populated_env: dict) -> None:
    app = open_page("pages/5_runs.py")
    table = app.dataframe[0].value
    assert len(table) == 4


def test_runs_filter_protocol(populated_env: dict) -> None:
    app = open_page("pages/5_runs.py")
    app.multiselect(key="runs-filter-protocol").set_value(["pi"]).run()
    assert set(app.dataframe[0].value["protocol"]) == {"PI"}


def test_runs_shows_error(populated_env: dict) -> None:
    app = open_page("pages/5_runs.py")
    assert FAILED_MESSAGE in texts(app.error)


def test_runs_shows_live_progress(populated_env: dict) -> None:
    app = open_page("pages/5_runs.py")
    progress = [element.value for element in app.get("progress")]
    assert progress == [50]


def test_results_query_selects_run(populated_env: dict) -> None:
    app = open_page("pages/6_results.py", {"run": populated_env["pi"]})
    assert app.selectbox(key="results-run").value == populated_env["pi"]


def test_results_unknown_run_warns(populated_env: dict) -> None:
    app = open_page("pages/6_results.py", {"run": "no-such-run"})
    assert any("no-such-run was not found" in message for message in texts(app.warning))


def test_results_confusion_counts(populated_env: dict) -> None:
    app = open_page("pages/6_results.py", {"run": populated_env["pd"]})
    app.toggle(key="results-normalised").set_value(False).run()
    table = app.dataframe[0].value
    assert table.drop(columns=table.columns[0]).to_numpy().sum() == len(SUBJECTS) * 2 * len(MaskType)


def test_results_pairs_protocols(populated_env: dict) -> None:
    app = open_page("pages/6_results.py", {"run": populated_env["pd"]})
    pair_table = next(frame.value for frame in app.dataframe if "protocol" in frame.value.columns)
    assert set(pair_table["protocol"]) == {"pd", "pi"}


def test_results_gallery_shows_mistakes(populated_env: dict) -> None:
    app = open_page("pages/6_results.py", {"run": populated_env["pd"]})
    captions = [caption for image in app.image for caption in image.captions]
    assert len(captions) == 2


def test_results_pending_run(populated_env: dict) -> None:
    app = open_page("pages/6_results.py", {"run": populated_env["failed"]})
    assert any("has no results yet" in message for message in texts(app.info))


def test_compare_diffs_settings(populated_env: dict) -> None:
    app = open_page("pages/8_compare.py", {"runs": f"{populated_env['pd']},{populated_env['pi']}"})
    diff = next(frame.value for frame in app.dataframe if "setting" in frame.value.columns)
    assert set(diff["setting"]) == {"protocol"}


def test_compare_metrics_rows(populated_env: dict) -> None:
    app = open_page("pages/8_compare.py", {"runs": f"{populated_env['pd']},{populated_env['pi']}"})
    assert list(app.dataframe[0].value["run"]) == [populated_env["pd"], populated_env["pi"]]


# ---------------------------------------------------------------------------------------------
# Upload checks


def _zip_bytes(members: dict[str, bytes]) -> io.BytesIO:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    buffer.seek(0)
    return buffer


def test_extract_rejects_zip_slip(tmp_path: Path) -> None:
    with pytest.raises(uploads.UploadError, match="outside the data set folder"):
        uploads.extract_dataset_zip(_zip_bytes({"../evil.jpg": b"x"}), "slip", tmp_path)


def test_extract_rejects_absolute(tmp_path: Path) -> None:
    with pytest.raises(uploads.UploadError, match="outside the data set folder"):
        uploads.extract_dataset_zip(_zip_bytes({"/etc/evil.jpg": b"x"}), "absolute", tmp_path)


def test_extract_slip_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(uploads.UploadError):
        uploads.extract_dataset_zip(_zip_bytes({"a/ok.jpg": b"x", "../evil.jpg": b"x"}), "slip", tmp_path / "sets")
    assert not (tmp_path / "evil.jpg").exists()


def test_extract_rejects_symlink(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        info = zipfile.ZipInfo("link.jpg")
        info.external_attr = (0o120777 << 16)
        archive.writestr(info, "/etc/passwd")
    buffer.seek(0)
    with pytest.raises(uploads.UploadError, match="symbolic link"):
        uploads.extract_dataset_zip(buffer, "links", tmp_path)


def test_extract_keeps_existing_folder(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    with pytest.raises(uploads.UploadError, match="already exists"):
        uploads.extract_dataset_zip(_zip_bytes({"happy/a.jpg": b"x"}), "taken", tmp_path)


def test_extract_size_limit(tmp_path: Path) -> None:
    with pytest.raises(uploads.UploadError, match="more than the limit"):
        uploads.extract_dataset_zip(_zip_bytes({"happy/a.jpg": b"x" * 2000}), "big", tmp_path, max_bytes=1000)


def test_extract_size_limit_cleans_up(tmp_path: Path) -> None:
    with pytest.raises(uploads.UploadError):
        uploads.extract_dataset_zip(_zip_bytes({"happy/a.jpg": b"x" * 2000}), "big", tmp_path, max_bytes=1000)
    assert list(tmp_path.iterdir()) == []


def test_extract_skips_non_images(tmp_path: Path) -> None:
    extracted = uploads.extract_dataset_zip(_zip_bytes({"happy/a.jpg": b"x", "notes.txt": b"y"}), "mixed", tmp_path)
    assert extracted.skipped == ["notes.txt"]


def test_extract_writes_images_only(tmp_path: Path) -> None:
    uploads.extract_dataset_zip(_zip_bytes({"happy/a.jpg": b"x", "run.sh": b"y", "__MACOSX/._a.jpg": b"z"}),
                                "mixed", tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()] == ["mixed/happy/a.jpg"]


def test_extract_requires_images(tmp_path: Path) -> None:
    with pytest.raises(uploads.UploadError, match="no image files"):
        uploads.extract_dataset_zip(_zip_bytes({"notes.txt": b"y"}), "empty", tmp_path)


def test_extract_rejects_non_zip(tmp_path: Path) -> None:
    with pytest.raises(uploads.UploadError, match="not a readable zip"):
        uploads.extract_dataset_zip(io.BytesIO(b"plain text"), "text", tmp_path)


def test_extract_rejects_bad_name(tmp_path: Path) -> None:
    with pytest.raises(uploads.UploadError, match="invalid data set name"):
        uploads.extract_dataset_zip(_zip_bytes({"happy/a.jpg": b"x"}), "../up", tmp_path)


def test_extract_suggests_wrapper(tmp_path: Path) -> None:
    extracted = uploads.extract_dataset_zip(_zip_bytes({"set/happy/a.jpg": b"x", "set/sad/b.jpg": b"x"}), "w", tmp_path)
    assert extracted.suggested_root == tmp_path / "w" / "set"


def test_extract_keeps_class_root(tmp_path: Path) -> None:
    extracted = uploads.extract_dataset_zip(_zip_bytes({"happy/a.jpg": b"x", "happy/b.jpg": b"x"}), "c", tmp_path)
    assert extracted.suggested_root == tmp_path / "c"


# ---------------------------------------------------------------------------------------------
# Figures, tables and exports


def test_confusion_normalised_rows() -> None:
    figure = figures.confusion_heatmap(np.array([[3, 1], [0, 4]]), ["happy", "neutral"], normalised=True)
    assert np.allclose(np.asarray(figure.data[0].z).sum(axis=1), 1.0)


def test_confusion_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="does not match 3 labels"):
        figures.confusion_heatmap(np.zeros((2, 2)), ["a", "b", "c"], normalised=False)


def test_order_labels_emotions() -> None:
    assert figures.order_labels(["zzz", "sad", "angry"]) == ["angry", "sad", "zzz"]


def test_order_mask_types_unmasked_first() -> None:
    assert figures.order_mask_types(["kn95", "none", "cloth"]) == ["none", "cloth", "kn95"]


def test_settings_diff_keeps_differences() -> None:
    diff = results.settings_diff({"a": {"seed": 1, "lr": 0.1}, "b": {"seed": 2, "lr": 0.1}})
    assert list(diff["setting"]) == ["seed"]


def test_counterpart_finds_other_protocol() -> None:
    settings = {"r1-pd": {"protocol": "pd", "backbone": "alexnet", "epochs": 25},
                "r2-pi": {"protocol": "pi", "backbone": "alexnet", "epochs": 60},
                "r3-pi": {"protocol": "pi", "backbone": "resnet50", "epochs": 60}}
    assert results.counterpart_runs("r1-pd", settings) == {"pi": "r2-pi"}


def test_epoch_frame_keeps_latest() -> None:
    events = [{"event": "epoch", "fold": "f", "epoch": 1, "test_accuracy": 0.1},
              {"event": "epoch", "fold": "f", "epoch": 1, "test_accuracy": 0.3}]
    assert results.epoch_frame(events)["test_accuracy"].tolist() == [0.3]


def test_overall_progress_half() -> None:
    summary = {"folds": 2, "epochs": 4, "fold_position": 2, "epoch": 0}
    assert results.overall_progress(summary) == 0.5


def test_format_seconds_minutes() -> None:
    assert results.format_seconds(250) == "4 min 10 s"


def test_zip_pngs_names() -> None:
    data = exports.zip_pngs({"face_surgical": np.zeros((8, 8, 3), dtype=np.uint8)})
    assert zipfile.ZipFile(io.BytesIO(data)).namelist() == ["face_surgical.png"]


def test_figure_html_is_offline() -> None:
    html = exports.figure_html(figures.count_bars(pd.Series([1, 2], index=["a", "b"]), "t", "x")).decode()
    assert not re.search(r"<script[^>]*\bsrc=", html)


@pytest.fixture()
def run_copy(populated: dict, tmp_path: Path) -> Path:
    """Copy the finished PD run, with a small weights file, into a private folder."""
    run_dir = shutil.copytree(populated["root"] / "runs" / populated["pd"], tmp_path / populated["pd"])
    (run_dir / "models").mkdir(exist_ok=True)
    (run_dir / "models" / "fold-1.pt").write_bytes(b"weights")
    return run_dir


def _zip_names(data: bytes) -> list[str]:
    return zipfile.ZipFile(io.BytesIO(data)).namelist()


def test_run_zip_contents(run_copy: Path) -> None:
    names = _zip_names(exports.run_zip(run_copy, include_weights=False))
    assert f"{run_copy.name}/metrics.json" in names


def test_run_zip_leaves_out_weights(run_copy: Path) -> None:
    names = _zip_names(exports.run_zip(run_copy, include_weights=False))
    assert not [name for name in names if "/models/" in name]


def test_run_zip_includes_weights(run_copy: Path) -> None:
    names = _zip_names(exports.run_zip(run_copy, include_weights=True))
    assert f"{run_copy.name}/models/fold-1.pt" in names


def test_run_zip_html_figures(run_copy: Path) -> None:
    figure = figures.count_bars(pd.Series([1], index=["a"]), "t", "x")
    names = _zip_names(exports.run_zip(run_copy, {"counts": figure}))
    assert f"{run_copy.name}/figures/counts.html" in names


def test_weights_bytes_counts_models(run_copy: Path) -> None:
    assert exports.weights_bytes(run_copy) == len(b"weights")


@pytest.mark.skipif(not exports.png_export_available(), reason="kaleido 1.x or Chromium is not installed")
def test_figure_png_bytes() -> None:
    data = exports.figure_png(figures.count_bars(pd.Series([1], index=["a"]), "t", "x"), width=200, height=150)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------
# The training form


def test_form_rejects_pi_without_subjects(populated: dict) -> None:
    manifest = pd.read_csv(populated["root"] / "prepared" / "nosubjects-000000000000" / "manifest.csv")
    settings = TrainSettings(prepared_dir=populated["prepared"], protocol=Protocol.PI, device="cpu")
    problems = forms.launch_problems(settings, manifest, "nosubjects")
    assert len(problems) == 1
    assert "no subject ids" in problems[0]


def test_form_one_run_per_pair(populated: dict) -> None:
    choice = forms.TrainChoice(prepared_dir=populated["prepared"], dataset_name="london",
                               backbones=(Backbone.ALEXNET, Backbone.RESNET50), protocols=(Protocol.PD, Protocol.PI))
    assert len(forms.build_settings(choice)) == 4


def test_form_requires_backbone(populated: dict) -> None:
    choice = forms.TrainChoice(prepared_dir=populated["prepared"], dataset_name="london", backbones=(),
                               protocols=(Protocol.PD,))
    with pytest.raises(ValueError, match="at least one backbone"):
        forms.build_settings(choice)
