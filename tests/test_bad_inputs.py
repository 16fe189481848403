"""Bad input through the engine and the command line: each case gets a clear error or a report entry.

The rule under test: a bad file or value gets an error that names it and the fix, one bad file
never stops a whole run, and nothing that was already written is lost. Every case
uses real files built from the London faces, the real MTCNN and dlib models, and real run
folders written by the evaluation code.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fer_core.cli import main
from fer_core.constants import MaskType
from fer_core.datasets import (
    REGISTRY_FILE,
    DatasetError,
    DatasetKind,
    DatasetSpec,
    DatasetTable,
    IssueReason,
    load_dataset,
    register_dataset,
)
from fer_core.evaluation import evaluate_run, format_report
from fer_core.images import ImageProblem, ImageReadError, read_image
from fer_core.prepare import PrepareSettings, prepare_dataset, prepared_folder
from fer_core.runs import list_runs
from fer_core.splits import read_manifest
from fer_core.training import TrainSettings, drop_unreadable_images

REPO_ROOT = Path(__file__).resolve().parent.parent
FACE_SIDE = 64
FER2013_HEADER = "emotion,pixels,Usage\n"
NON_UTF8_NAME = b"\xff_1.png"
# An unprivileged user, for checks of file permissions that root would ignore.
NOBODY_ID = 65534


@pytest.fixture(scope="module")
def faces(london_root: Path) -> list[np.ndarray]:
    """Return four different real faces as 64x64 RGB arrays."""
    arrays = []
    for path in sorted((london_root / "neutral").glob("*.jpg"))[:4]:
        with Image.open(path) as image:
            arrays.append(np.asarray(image.convert("RGB").resize((FACE_SIDE, FACE_SIDE))))
    return arrays


def _save(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def _reasons(table: DatasetTable) -> dict[str, str]:
    return {Path(issue.path).name: issue.reason for issue in table.issues}


def _reason(path: Path) -> ImageReadError:
    with pytest.raises(ImageReadError) as caught:
        read_image(path)
    return caught.value


def _fer_row(emotion: str, value: int) -> str:
    return f"{emotion},{' '.join([str(value)] * 48 * 48)},Training\n"


# --- image files -----------------------------------------------------------------------


def test_folder_named_like_image(tmp_path: Path) -> None:
    folder = tmp_path / "KA.AN1.39.tiff"
    folder.mkdir()
    error = _reason(folder)
    assert error.reason is ImageProblem.NOT_FOUND
    assert "folder" in error.detail


def test_symlink_loop_named(tmp_path: Path) -> None:
    link = tmp_path / "loop.png"
    link.symlink_to(link)
    assert "loop" in _reason(link).detail


def test_broken_symlink_names_target(tmp_path: Path) -> None:
    link = tmp_path / "face.png"
    link.symlink_to(tmp_path / "gone.png")
    assert "gone.png" in _reason(link).detail


def test_animated_gif_loaded(tmp_path: Path, faces: list[np.ndarray]) -> None:
    path = tmp_path / "KA.AN1.39.gif"
    frames = [Image.fromarray(face) for face in faces[:2]]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    table = load_dataset(DatasetSpec(DatasetKind.JAFFE, tmp_path))
    assert list(table.frame["source_id"]) == ["KA.AN1.39"]
    assert read_image(path).rgb.shape == (FACE_SIDE, FACE_SIDE, 3)


@pytest.fixture()
def world_readable_folder() -> Iterator[Path]:
    """Yield a folder under /tmp that an unprivileged user can enter; pytest's tmp_path is private."""
    folder = Path(tempfile.mkdtemp(prefix="fer-bad-inputs-", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    for inner, subfolders, names in os.walk(folder):
        for name in [*subfolders, *names]:
            (Path(inner) / name).chmod(0o755)
    shutil.rmtree(folder)


def _run_as_unprivileged(code: str) -> str:
    """Run Python code as an unprivileged user and return its stdout; root reads files whatever their mode."""
    command = [sys.executable, "-c", code]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv, so file permissions cannot be tested")
        command = ["setpriv", f"--reuid={NOBODY_ID}", f"--regid={NOBODY_ID}", "--clear-groups", *command]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=120, check=True)
    return result.stdout


def test_unreadable_file_reason(world_readable_folder: Path, faces: list[np.ndarray]) -> None:
    path = _save(world_readable_folder / "face.png", faces[0])
    path.chmod(0o000)
    code = (
        "from fer_core.images import ImageReadError, read_image\n"
        f"try:\n    read_image({str(path)!r})\n"
        "except ImageReadError as error:\n    print(error.reason.name)\n"
    )
    assert _run_as_unprivileged(code).strip() == ImageProblem.NO_PERMISSION.name


def test_unreadable_folder_reported(world_readable_folder: Path, faces: list[np.ndarray]) -> None:
    root = world_readable_folder / "set"
    _save(root / "happy" / "a.png", faces[0])
    _save(root / "neutral" / "b.png", faces[1])
    (root / "neutral").chmod(0o000)
    code = (
        "from fer_core.datasets import DatasetSpec, load_dataset\n"
        f"table = load_dataset(DatasetSpec('folder', {str(root)!r}), artifacts_root={str(world_readable_folder)!r})\n"
        "print(len(table.frame)); print(table.issues[0].reason)\n"
    )
    rows, reason = _run_as_unprivileged(code).strip().splitlines()
    assert rows == "1"
    assert reason.startswith(IssueReason.UNREADABLE_FOLDER.value)


# --- data set folders ------------------------------------------------------------------


def test_non_utf8_name_reported(tmp_path: Path, faces: list[np.ndarray]) -> None:
    _save(tmp_path / "happy" / "ok_1.png", faces[0])
    _save(Path(os.fsdecode(os.path.join(os.fsencode(tmp_path / "happy"), NON_UTF8_NAME))), faces[1])
    table = load_dataset(DatasetSpec(DatasetKind.FOLDER, tmp_path))
    assert len(table.frame) == 1
    assert table.issues[0].reason.startswith(IssueReason.BAD_NAME.value)
    assert table.issues[0].path.endswith("\\xff_1.png")


def test_heic_file_reported(tmp_path: Path, faces: list[np.ndarray]) -> None:
    _save(tmp_path / "KA.AN1.39.png", faces[0])
    (tmp_path / "KA.HA1.40.heic").write_bytes(b"heic data")
    table = load_dataset(DatasetSpec(DatasetKind.JAFFE, tmp_path))
    assert _reasons(table)["KA.HA1.40.heic"].startswith(IssueReason.UNSUPPORTED_FORMAT.value)


def test_jaffe_root_is_file(tmp_path: Path, faces: list[np.ndarray]) -> None:
    path = _save(tmp_path / "KA.AN1.39.png", faces[0])
    with pytest.raises(DatasetError, match="is a file"):
        load_dataset(DatasetSpec(DatasetKind.JAFFE, path))


def test_empty_subject_group_skipped(tmp_path: Path, faces: list[np.ndarray]) -> None:
    _save(tmp_path / "happy" / "ab_1.png", faces[0])
    _save(tmp_path / "happy" / "_2.png", faces[1])
    table = load_dataset(DatasetSpec(DatasetKind.FOLDER, tmp_path, subject_pattern=r"^(?P<subject>[a-z]*)_"))
    assert list(table.frame["subject"]) == ["ab"]
    assert _reasons(table)["_2.png"].startswith(IssueReason.NO_SUBJECT.value)


def test_uibvfed_name_without_prefix(tmp_path: Path, faces: list[np.ndarray]) -> None:
    _save(tmp_path / "JOY" / "Ana_1.png", faces[0])
    _save(tmp_path / "JOY" / "portrait.png", faces[1])
    table = load_dataset(DatasetSpec(DatasetKind.UIBVFED, tmp_path))
    assert list(table.frame["subject"]) == ["Ana"]
    assert _reasons(table)["portrait.png"].startswith(IssueReason.NO_SUBJECT.value)


def test_london_info_corrupt_fallback(tmp_path: Path, london_root: Path) -> None:
    for relative in ("neutral/001_03.jpg", "smiling/001_08.jpg"):
        (tmp_path / relative).parent.mkdir(exist_ok=True)
        shutil.copy(london_root / relative, tmp_path / relative)
    (tmp_path / "london_info.csv").write_text("", encoding="utf-8")
    table = load_dataset(DatasetSpec(DatasetKind.LONDON, tmp_path), check_images=False)
    assert table.frame["gender"].notna().all()


# --- FER2013 and manifest CSV files ----------------------------------------------------


def test_fer2013_extra_field_row(tmp_path: Path) -> None:
    text = FER2013_HEADER + _fer_row("3", 10) + _fer_row("4", 20).replace(",Training", ",Training,extra")
    (tmp_path / "fer2013.csv").write_text(text, encoding="utf-8")
    table = load_dataset(DatasetSpec(DatasetKind.FER2013, tmp_path), artifacts_root=tmp_path / "artifacts")
    assert list(table.frame["source_id"]) == ["row0"]
    assert "found 4" in table.issues[0].reason


def test_fer2013_empty_file(tmp_path: Path) -> None:
    (tmp_path / "fer2013.csv").write_bytes(b"")
    with pytest.raises(DatasetError, match="is empty"):
        load_dataset(DatasetSpec(DatasetKind.FER2013, tmp_path), artifacts_root=tmp_path)


def test_fer2013_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "fer2013.csv").write_bytes((FER2013_HEADER + "3,1 2,Entraînement\n").encode("latin-1"))
    with pytest.raises(DatasetError, match="not UTF-8"):
        load_dataset(DatasetSpec(DatasetKind.FER2013, tmp_path), artifacts_root=tmp_path)


@pytest.fixture()
def manifest_root(tmp_path: Path, faces: list[np.ndarray]) -> Path:
    root = tmp_path / "set"
    _save(root / "happy" / "a.png", faces[0])
    _save(root / "neutral" / "b.png", faces[1])
    _save(tmp_path / "outside" / "c.png", faces[2])
    return root


def test_manifest_outside_root(manifest_root: Path) -> None:
    (manifest_root / "m.csv").write_text(
        "path,subject,label\nhappy/a.png,s1,\nneutral/b.png,s2,\n../outside/c.png,s3,neutral\n", encoding="utf-8"
    )
    table = load_dataset(DatasetSpec(DatasetKind.FOLDER, manifest_root, manifest=Path("m.csv")))
    assert list(table.frame["source_id"]) == ["happy/a", "neutral/b"]
    assert table.issues[0].reason.startswith(IssueReason.OUTSIDE_ROOT.value)


def test_manifest_extra_field(manifest_root: Path) -> None:
    (manifest_root / "m.csv").write_text("path,subject\nhappy/a.png,s1\nneutral/b.png,s2,x\n", encoding="utf-8")
    table = load_dataset(DatasetSpec(DatasetKind.FOLDER, manifest_root, manifest=Path("m.csv")))
    assert list(table.frame["source_id"]) == ["happy/a"]
    assert _reasons(table)["m.csv"].startswith(IssueReason.BAD_ROW.value)


def test_manifest_empty_file(manifest_root: Path) -> None:
    (manifest_root / "m.csv").write_bytes(b"")
    with pytest.raises(DatasetError, match="m.csv is empty"):
        load_dataset(DatasetSpec(DatasetKind.FOLDER, manifest_root, manifest=Path("m.csv")))


# --- the data set registry -------------------------------------------------------------


def test_registry_keeps_invalid_entry(tmp_path: Path, faces: list[np.ndarray]) -> None:
    _save(tmp_path / "set" / "happy" / "a.png", faces[0])
    invalid = {"kind": "jafe", "root": "/data/jaffe", "name": "typo"}
    (tmp_path / REGISTRY_FILE).write_text(json.dumps({"datasets": [invalid]}), encoding="utf-8")
    register_dataset(DatasetSpec(DatasetKind.FOLDER, tmp_path / "set", name="mine"), tmp_path)
    stored = json.loads((tmp_path / REGISTRY_FILE).read_text(encoding="utf-8"))["datasets"]
    assert stored[0] == invalid


def test_registry_not_object(tmp_path: Path, faces: list[np.ndarray]) -> None:
    _save(tmp_path / "set" / "happy" / "a.png", faces[0])
    (tmp_path / REGISTRY_FILE).write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(DatasetError, match="does not contain"):
        register_dataset(DatasetSpec(DatasetKind.FOLDER, tmp_path / "set", name="mine"), tmp_path)


# --- preparation -----------------------------------------------------------------------

PREPARE_SETTINGS = PrepareSettings(mask_types=(MaskType.NONE, MaskType.SURGICAL), crop_size=64, workers=1)


@pytest.fixture(scope="module")
def awkward_photos(london_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build a folder data set: a plain face, a face half outside the frame, and a non-UTF-8 name."""
    root = tmp_path_factory.mktemp("awkward")
    (root / "happy").mkdir()
    (root / "neutral").mkdir()
    shutil.copy(london_root / "smiling" / "002_08.jpg", root / "happy" / "plain.jpg")
    with Image.open(london_root / "neutral" / "001_03.jpg") as photo:
        edge = Image.new("RGB", photo.size)
        edge.paste(photo, (-200, 0))
    edge.save(root / "neutral" / "edge.jpg")
    shutil.copy(london_root / "smiling" / "003_08.jpg", os.path.join(os.fsencode(root / "happy"), NON_UTF8_NAME))
    return root


@pytest.fixture(scope="module")
def awkward_prepared(awkward_photos: Path, tmp_path_factory: pytest.TempPathFactory):
    table = load_dataset(DatasetSpec(DatasetKind.FOLDER, awkward_photos))
    return prepare_dataset(table, PREPARE_SETTINGS, output_root=tmp_path_factory.mktemp("prepared"))


def test_prepare_survives_non_utf8(awkward_prepared) -> None:
    assert set(awkward_prepared.manifest["source_id"]) == {"happy/plain", "neutral/edge"}


def test_prepare_reports_non_utf8(awkward_prepared) -> None:
    report = awkward_prepared.report
    assert report["path"].str.endswith("\\xff_1.png").any()


def test_prepare_flags_face_outside(awkward_prepared) -> None:
    flagged = awkward_prepared.report[awkward_prepared.report["reason"].str.contains("outside the photograph")]
    assert [Path(path).name for path in flagged["path"]] == ["edge.jpg"]


def test_prepare_write_failure_keeps_work(awkward_photos: Path, tmp_path: Path) -> None:
    table = load_dataset(DatasetSpec(DatasetKind.FOLDER, awkward_photos))
    work_folder = Path(f"{prepared_folder(table, PREPARE_SETTINGS, tmp_path)}.partial")
    # A folder where the second photograph's record file belongs makes that write fail.
    (work_folder / "records" / "neutral__edge.json").mkdir(parents=True)

    with pytest.raises(OSError, match="1 of 2 photographs prepared so far are kept"):
        prepare_dataset(table, PREPARE_SETTINGS, output_root=tmp_path)
    assert (work_folder / "records" / "happy__plain.json").is_file()


def test_truncated_crop_left_out(awkward_prepared, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(awkward_prepared.folder, tmp_path / "prepared"))
    damaged = "images/surgical/happy__plain.png"
    (folder / damaged).write_bytes((folder / damaged).read_bytes()[:300])
    _, dropped = drop_unreadable_images(read_manifest(folder), folder)
    assert dropped == [damaged]


# --- training settings -----------------------------------------------------------------


def test_infinite_learning_rate(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="learning_rate"):
        TrainSettings(prepared_dir=tmp_path, learning_rate=float("inf"))


def test_malformed_cuda_device(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cuda:N"):
        TrainSettings(prepared_dir=tmp_path, device="cuda:x")


def test_fractional_epochs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="epochs must be a whole number"):
        TrainSettings(prepared_dir=tmp_path, epochs=2.5)


def test_unknown_optimizer_lists_choices(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="optimizer must be one of sgd, adam"):
        TrainSettings(prepared_dir=tmp_path, optimizer="rmsprop")


def test_fractional_crop_size() -> None:
    with pytest.raises(ValueError, match="crop_size must be a whole number"):
        PrepareSettings(crop_size=64.5)


# --- run folders -----------------------------------------------------------------------


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    """Write a small finished run: settings.json and predictions.csv, then metrics by evaluate_run."""
    folder = tmp_path / "runs" / "20260101-000000-squeezenet1_1-pd-abcd"
    folder.mkdir(parents=True)
    (folder / "settings.json").write_text(json.dumps(TrainSettings(prepared_dir=tmp_path).to_dict()))
    predictions = pd.DataFrame({
        "image": [f"images/none/{n}.png" for n in "abcd"],
        "source_id": list("abcd"),
        "subject": ["s1", "s1", "s2", "s2"],
        "label": ["happy", "neutral", "happy", "neutral"],
        "mask_type": ["none"] * 4,
        "fold": ["fold-01"] * 4,
        "predicted": ["happy", "happy", "happy", "neutral"],
        "prob_happy": [0.9, 0.6, 0.7, 0.2],
        "prob_neutral": [0.1, 0.4, 0.3, 0.8],
    })
    predictions.to_csv(folder / "predictions.csv", index=False)
    evaluate_run(folder)
    return folder


def test_show_metrics_list(run_dir: Path) -> None:
    (run_dir / "metrics.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="metrics.json contains a JSON list"):
        format_report(run_dir)


def test_show_metrics_nan(run_dir: Path) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["accuracy"] = float("nan")
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    assert "Accuracy n/a" in format_report(run_dir)


def test_evaluate_settings_list(run_dir: Path) -> None:
    (run_dir / "settings.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="settings.json contains a JSON list"):
        evaluate_run(run_dir)


def test_evaluate_missing_column(run_dir: Path) -> None:
    predictions = pd.read_csv(run_dir / "predictions.csv").drop(columns=["predicted"])
    predictions.to_csv(run_dir / "predictions.csv", index=False)
    with pytest.raises(ValueError, match=r"predictions.csv lacks the columns \['predicted'\]"):
        evaluate_run(run_dir)


def test_evaluate_unknown_label(run_dir: Path) -> None:
    predictions = pd.read_csv(run_dir / "predictions.csv")
    predictions.loc[2, "label"] = "contempt"
    predictions.to_csv(run_dir / "predictions.csv", index=False)
    with pytest.raises(ValueError, match=r"'contempt'.*lines 4"):
        evaluate_run(run_dir)


def test_evaluate_empty_predictions(run_dir: Path) -> None:
    (run_dir / "predictions.csv").write_bytes(b"")
    with pytest.raises(ValueError, match="predictions.csv is not a readable CSV"):
        evaluate_run(run_dir)


def test_list_runs_root_is_file(tmp_path: Path) -> None:
    (tmp_path / "runs").write_text("not a folder")
    with pytest.raises(NotADirectoryError, match="move the file away"):
        list_runs(tmp_path / "runs")


# --- command line ----------------------------------------------------------------------


def test_cli_show_without_settings(run_dir: Path) -> None:
    (run_dir / "settings.json").unlink()
    assert main(["show", str(run_dir)]) == 0


def test_cli_show_plain_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["show", str(tmp_path)])
    assert "is not a run folder" in capsys.readouterr().err


def test_cli_preview_out_is_file(tmp_path: Path, london_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "out").write_text("a file")
    code = main(["preview", str(london_root / "neutral" / "001_03.jpg"), "--out", str(tmp_path / "out")])
    assert code == 2
    assert "is a file" in capsys.readouterr().err


def test_cli_artifacts_is_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "artifacts").write_text("a file")
    monkeypatch.setenv("FER_STUDIO_ARTIFACTS", str(tmp_path / "artifacts"))
    assert main(["runs"]) == 1
    assert "artifacts" in capsys.readouterr().err


def test_cli_label_map(artifacts_dir: Path, tmp_path: Path, faces: list[np.ndarray]) -> None:
    _save(tmp_path / "set" / "happy" / "a.png", faces[0])
    _save(tmp_path / "set" / "contempt" / "b.png", faces[1])
    code = main(["add-dataset", "--dataset", "mine", "--kind", "folder", "--root", str(tmp_path / "set"),
                 "--label-map", "contempt=disgust"])
    assert code == 0
