"""Tests for fer_core.datasets on small data sets built from real London faces."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fer_core.constants import Emotion
from fer_core.datasets import (
    FER2013_FILE,
    LONDON_COMMIT,
    UIBVFED_LABELS,
    DatasetError,
    DatasetKind,
    DatasetSpec,
    DatasetTable,
    IssueReason,
    available_datasets,
    default_london_root,
    fetch_london,
    load_dataset,
    london_url,
    register_dataset,
    unregister_dataset,
)
from fer_core.images import ImageProblem

FACE_SIDE = 64
EXIF_ORIENTATION_TAG = 0x0112


@pytest.fixture(scope="module")
def faces(london_root: Path) -> list[np.ndarray]:
    """Return eight different real faces as 64x64 RGB arrays."""
    arrays = []
    for path in sorted((london_root / "neutral").glob("*.jpg"))[:8]:
        with Image.open(path) as image:
            arrays.append(np.asarray(image.convert("RGB").resize((FACE_SIDE, FACE_SIDE), Image.Resampling.LANCZOS)))
    return arrays


def _save(path: Path, pixels: np.ndarray, **options: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **options)
    return path


def _reasons(table: DatasetTable) -> dict[str, str]:
    return {Path(issue.path).name: issue.reason for issue in table.issues}


def _labels(table: DatasetTable) -> dict[str, str]:
    return dict(zip(table.frame["source_id"], table.frame["label"]))


# --- London ---------------------------------------------------------------------------


def test_london_real_rows(london_root: Path) -> None:
    table = load_dataset(DatasetSpec(DatasetKind.LONDON, london_root))
    assert len(table.frame) == 204
    assert table.frame["subject"].nunique() == 102
    assert set(table.frame["label"]) == {Emotion.NEUTRAL.value, Emotion.HAPPY.value}
    assert table.issues == []
    assert table.has_subjects is True


def test_london_real_metadata(london_root: Path) -> None:
    table = load_dataset(DatasetSpec(DatasetKind.LONDON, london_root))
    assert {"age", "gender", "ethnicity"} <= set(table.frame.columns)
    assert table.frame["age"].isna().sum() == 4  # faces 031 and 135 have no recorded age
    assert table.frame["age"].min() >= 18
    assert set(table.frame["gender"]) == {"female", "male"}
    assert table.counts_by_label().to_dict() == {"happy": 102, "neutral": 102}


def test_london_real_source_ids(london_root: Path) -> None:
    table = load_dataset(DatasetSpec(DatasetKind.LONDON, london_root))
    assert "neutral/001_03" in set(table.frame["source_id"])
    assert table.frame["source_id"].is_unique
    assert table.counts_by_subject().eq(2).all()


def test_london_fingerprint_stable(london_root: Path) -> None:
    first = load_dataset(DatasetSpec(DatasetKind.LONDON, london_root), check_images=False)
    second = load_dataset(DatasetSpec(DatasetKind.LONDON, london_root), check_images=False)
    assert first.fingerprint() == second.fingerprint()
    assert len(first.fingerprint()) == 64


def test_london_bad_name(tmp_path: Path, faces: list[np.ndarray]) -> None:
    _save(tmp_path / "neutral" / "001_03.jpg", faces[0])
    _save(tmp_path / "smiling" / "001_08.jpg", faces[1])
    _save(tmp_path / "smiling" / "portrait.jpg", faces[2])

    table = load_dataset(DatasetSpec(DatasetKind.LONDON, tmp_path))
    assert len(table.frame) == 2
    assert _reasons(table)["portrait.jpg"].startswith(IssueReason.BAD_NAME.value)
    assert table.frame["age"].tolist() == [24, 24]


# --- JAFFE ----------------------------------------------------------------------------


@pytest.fixture()
def jaffe_root(tmp_path: Path, faces: list[np.ndarray]) -> Path:
    root = tmp_path / "jaffe"
    grey = [np.asarray(Image.fromarray(face).convert("L")) for face in faces]
    _save(root / "KA.AN1.39.tiff", grey[0])
    Image.fromarray(grey[1]).convert("P").save(root / "KA.HA2.30.tiff")
    _save(root / "KA.NE1.26.tiff", np.stack([grey[2]] * 3, axis=2))
    _save(root / "KM.SU3.17.tiff", grey[3])
    _save(root / "KM.FE1.4.tiff", grey[4])
    _save(root / "KA_AN_badly_named.tiff", grey[5])
    _save(root / "KM.XX1.5.tiff", grey[6])
    (root / "README_FIRST.txt").write_text("ratings\n")
    return root


def test_jaffe_rows(jaffe_root: Path) -> None:
    table = load_dataset(DatasetSpec(DatasetKind.JAFFE, jaffe_root))
    assert _labels(table) == {
        "KA.AN1.39": "angry",
        "KA.HA2.30": "happy",
        "KA.NE1.26": "neutral",
        "KM.FE1.4": "fear",
        "KM.SU3.17": "surprise",
    }
    assert table.counts_by_subject().to_dict() == {"KA": 3, "KM": 2}


def test_jaffe_palette_loaded(jaffe_root: Path) -> None:
    assert Image.open(jaffe_root / "KA.HA2.30.tiff").mode == "P"
    table = load_dataset(DatasetSpec(DatasetKind.JAFFE, jaffe_root))
    assert str(jaffe_root / "KA.HA2.30.tiff") in set(table.frame["path"])


def test_jaffe_bad_name_issue(jaffe_root: Path) -> None:
    reason = _reasons(load_dataset(DatasetSpec(DatasetKind.JAFFE, jaffe_root)))["KA_AN_badly_named.tiff"]
    assert reason.startswith(IssueReason.BAD_NAME.value)
    assert "KA.AN1.39.tiff" in reason


def test_jaffe_unknown_code_issue(jaffe_root: Path) -> None:
    reason = _reasons(load_dataset(DatasetSpec(DatasetKind.JAFFE, jaffe_root)))["KM.XX1.5.tiff"]
    assert reason.startswith(IssueReason.UNKNOWN_LABEL.value)
    assert "label_map" in reason


def test_jaffe_label_map_override(jaffe_root: Path) -> None:
    table = load_dataset(DatasetSpec(DatasetKind.JAFFE, jaffe_root, label_map={"XX": "disgust"}))
    assert _labels(table)["KM.XX1.5"] == "disgust"
    assert table.label_map["XX"] == "disgust"
    assert table.label_map["AN"] == "angry"


def test_jaffe_text_file_ignored(jaffe_root: Path) -> None:
    table = load_dataset(DatasetSpec(DatasetKind.JAFFE, jaffe_root))
    assert "README_FIRST.txt" not in _reasons(table)
    assert len(table.issues) == 2


# --- UIBVFED --------------------------------------------------------------------------


@pytest.fixture()
def uibvfed_root(tmp_path: Path, faces: list[np.ndarray]) -> Path:
    root = tmp_path / "UIBVFED"
    _save(root / "JOY" / "C01" / "joy_open.png", faces[0])
    _save(root / "ANGER" / "C01" / "anger_shout.png", faces[1])
    _save(root / "C02" / "SADNESS" / "sad_1.png", faces[2])
    _save(root / "C02" / "NEUTRAL" / "neutral.png", faces[3])
    _save(root / "SURPRISE" / "C03_surprise.png", faces[4])
    _save(root / "stray.png", faces[5])
    return root


def test_uibvfed_labels(uibvfed_root: Path) -> None:
    table = load_dataset(DatasetSpec(DatasetKind.UIBVFED, uibvfed_root))
    assert _labels(table) == {
        "JOY/C01/joy_open": "happy",
        "ANGER/C01/anger_shout": "angry",
        "C02/SADNESS/sad_1": "sad",
        "C02/NEUTRAL/neutral": "neutral",
        "SURPRISE/C03_surprise": "surprise",
    }


def test_uibvfed_subjects(uibvfed_root: Path) -> None:
    table = load_dataset(DatasetSpec(DatasetKind.UIBVFED, uibvfed_root))
    assert table.counts_by_subject().to_dict() == {"C01": 2, "C02": 2, "C03": 1}


def test_uibvfed_label_map_exported(uibvfed_root: Path) -> None:
    table = load_dataset(DatasetSpec(DatasetKind.UIBVFED, uibvfed_root))
    assert table.label_map == dict(UIBVFED_LABELS)
    assert UIBVFED_LABELS["JOY"] == Emotion.HAPPY.value


def test_uibvfed_stray_file_issue(uibvfed_root: Path) -> None:
    reason = _reasons(load_dataset(DatasetSpec(DatasetKind.UIBVFED, uibvfed_root)))["stray.png"]
    assert reason.startswith(IssueReason.NO_LABEL_FOLDER.value)


def test_uibvfed_subject_pattern(uibvfed_root: Path) -> None:
    spec = DatasetSpec(DatasetKind.UIBVFED, uibvfed_root, subject_pattern=r"^(?P<subject>[a-z]+)")
    table = load_dataset(spec)
    assert table.frame.set_index("source_id").loc["JOY/C01/joy_open", "subject"] == "joy"


# --- FER2013 --------------------------------------------------------------------------


def _fer_pixels(face: np.ndarray) -> str:
    grey = Image.fromarray(face).convert("L").resize((48, 48), Image.Resampling.LANCZOS)
    return " ".join(str(value) for value in np.asarray(grey).ravel())


@pytest.fixture()
def fer_csv(tmp_path: Path, faces: list[np.ndarray]) -> Path:
    rows = [
        ("3", _fer_pixels(faces[0]), "Training"),
        ("6", _fer_pixels(faces[1]), "PublicTest"),
        ("0", " ".join(["12"] * 2000), "Training"),
        ("9", _fer_pixels(faces[2]), "Training"),
        ("4", _fer_pixels(faces[0]), "PrivateTest"),
        ("5", _fer_pixels(faces[3]), "PrivateTest"),
    ]
    path = tmp_path / "fer" / FER2013_FILE
    path.parent.mkdir()
    pd.DataFrame(rows, columns=["emotion", "pixels", "Usage"]).to_csv(path, index=False)
    return path


def test_fer2013_rows(fer_csv: Path, tmp_path: Path) -> None:
    table = load_dataset(DatasetSpec(DatasetKind.FER2013, fer_csv.parent), artifacts_root=tmp_path / "artifacts")
    assert _labels(table) == {"row0": "happy", "row1": "neutral", "row5": "surprise"}
    assert table.frame["usage"].tolist() == ["Training", "PublicTest", "PrivateTest"]


def test_fer2013_no_subjects(fer_csv: Path, tmp_path: Path) -> None:
    table = load_dataset(DatasetSpec(DatasetKind.FER2013, fer_csv), artifacts_root=tmp_path / "artifacts")
    assert table.has_subjects is False
    assert table.frame["subject"].isna().all()
    assert table.counts_by_subject().empty


def test_fer2013_cache_files(fer_csv: Path, tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    table = load_dataset(DatasetSpec(DatasetKind.FER2013, fer_csv), artifacts_root=artifacts)
    digest = hashlib.sha256(fer_csv.read_bytes()).hexdigest()[:16]
    cache = artifacts / "datasets" / f"fer2013-{digest}"
    assert sorted(p.name for p in cache.iterdir()) == ["0.png", "1.png", "5.png"]
    assert Path(table.frame["path"].iloc[0]) == cache / "0.png"
    assert Image.open(cache / "0.png").size == (48, 48)


def test_fer2013_cache_reused(fer_csv: Path, tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    first = load_dataset(DatasetSpec(DatasetKind.FER2013, fer_csv), artifacts_root=artifacts)
    cached = Path(first.frame["path"].iloc[0])
    os.utime(cached, ns=(1_000_000_000, 1_000_000_000))

    load_dataset(DatasetSpec(DatasetKind.FER2013, fer_csv), artifacts_root=artifacts)
    assert cached.stat().st_mtime_ns == 1_000_000_000


def test_fer2013_bad_rows(fer_csv: Path, tmp_path: Path) -> None:
    table = load_dataset(DatasetSpec(DatasetKind.FER2013, fer_csv), artifacts_root=tmp_path / "artifacts")
    reasons = [issue.reason for issue in table.issues]
    assert len(reasons) == 3
    assert reasons[0].startswith(f"{IssueReason.BAD_ROW.value}: row 2 ")
    assert "2304" in reasons[0]
    assert reasons[1].startswith(f"{IssueReason.BAD_ROW.value}: row 3 ")
    assert "'9'" in reasons[1]


def test_fer2013_duplicate_row(fer_csv: Path, tmp_path: Path) -> None:
    table = load_dataset(DatasetSpec(DatasetKind.FER2013, fer_csv), artifacts_root=tmp_path / "artifacts")
    reason = table.issues[2].reason
    assert reason.startswith(f"{IssueReason.DUPLICATE.value}: row 4 ")
    assert "row 0" in reason
    assert table.issues[2].path == str(fer_csv)


def test_fer2013_missing_columns(tmp_path: Path) -> None:
    path = tmp_path / FER2013_FILE
    path.write_text("label,image\n3,1 2 3\n")
    with pytest.raises(DatasetError, match="pixels"):
        load_dataset(DatasetSpec(DatasetKind.FER2013, path), artifacts_root=tmp_path)


# --- plain emotion folders and broken files -------------------------------------------


@pytest.fixture()
def folder_root(tmp_path: Path, faces: list[np.ndarray]) -> Path:
    root = tmp_path / "faces"
    _save(root / "happy" / "s01_a.png", faces[0])
    _save(root / "Happiness" / "s02_a.jpg", faces[1], quality=92)
    _save(root / "SAD" / "s01_b.png", faces[2])
    _save(root / "surprised" / "s02_b.png", faces[3])
    _save(root / "sad" / "unnamed.png", faces[4])
    return root


def test_folder_synonyms(folder_root: Path) -> None:
    table = load_dataset(DatasetSpec(DatasetKind.FOLDER, folder_root))
    assert _labels(table) == {
        "happy/s01_a": "happy",
        "Happiness/s02_a": "happy",
        "SAD/s01_b": "sad",
        "sad/unnamed": "sad",
        "surprised/s02_b": "surprise",
    }


def test_folder_without_subjects(folder_root: Path) -> None:
    table = load_dataset(DatasetSpec(DatasetKind.FOLDER, folder_root))
    assert table.has_subjects is False
    assert table.frame["subject"].isna().all()


def test_folder_subject_pattern(folder_root: Path) -> None:
    table = load_dataset(DatasetSpec(DatasetKind.FOLDER, folder_root, subject_pattern=r"^(?P<subject>s\d+)_"))
    assert table.has_subjects is True
    assert table.counts_by_subject().to_dict() == {"s01": 2, "s02": 2}
    assert _reasons(table)["unnamed.png"].startswith(IssueReason.NO_SUBJECT.value)


def test_folder_unknown_names(folder_root: Path, faces: list[np.ndarray]) -> None:
    _save(folder_root / "contempt" / "s03_a.png", faces[5])
    with pytest.raises(DatasetError, match="contempt") as caught:
        load_dataset(DatasetSpec(DatasetKind.FOLDER, folder_root))
    assert "label_map" in str(caught.value)


def test_folder_label_map(folder_root: Path, faces: list[np.ndarray]) -> None:
    _save(folder_root / "contempt" / "s03_a.png", faces[5])
    table = load_dataset(DatasetSpec(DatasetKind.FOLDER, folder_root, label_map={"contempt": "disgust"}))
    assert _labels(table)["contempt/s03_a"] == "disgust"
    assert table.label_map["contempt"] == "disgust"


def test_folder_manifest(folder_root: Path) -> None:
    manifest = folder_root / "subjects.csv"
    pd.DataFrame(
        {"path": ["happy/s01_a.png", "SAD/s01_b.png", "surprised/s02_b.png"], "subject": ["p1", "p1", "p2"]}
    ).to_csv(manifest, index=False)

    table = load_dataset(DatasetSpec(DatasetKind.FOLDER, folder_root, manifest=Path("subjects.csv")))
    assert table.counts_by_subject().to_dict() == {"p1": 2, "p2": 1}
    assert _reasons(table)["unnamed.png"].startswith(IssueReason.NOT_IN_MANIFEST.value)


def test_folder_manifest_labels(folder_root: Path) -> None:
    manifest = folder_root / "subjects.csv"
    pd.DataFrame({"path": ["sad/unnamed.png"], "subject": ["p9"], "label": ["Fearful"]}).to_csv(manifest, index=False)

    table = load_dataset(DatasetSpec(DatasetKind.FOLDER, folder_root, manifest=manifest))
    assert _labels(table) == {"sad/unnamed": "fear"}


@pytest.fixture()
def broken_root(tmp_path: Path, faces: list[np.ndarray], london_root: Path) -> Path:
    root = tmp_path / "broken"
    _save(root / "happy" / "a_original.png", faces[0])
    _save(root / "happy" / "b_copy.png", faces[0])
    (root / "happy" / "c_empty.jpg").touch()
    jpeg = (london_root / "smiling" / "001_08.jpg").read_bytes()
    (root / "happy" / "d_truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "happy" / "e_notes.jpg").write_text("this is text\n")
    deep = np.asarray(Image.fromarray(faces[1]).convert("L")).astype(np.uint16) * 257
    _save(root / "neutral" / "f_deep.png", deep)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = 6
    _save(root / "neutral" / "g_rotated.jpg", faces[2][:, :48], exif=exif)
    _save(root / "neutral" / "h_tiny.png", faces[3][:20, :20])
    (root / "neutral" / "notes.txt").write_text("ignored\n")
    _save(root / "neutral" / ".hidden.png", faces[4])
    _save(root / "neutral" / "i_same.png", faces[5])
    _save(root / "neutral" / "i_same.jpg", faces[6])
    return root


def test_broken_kept_rows(broken_root: Path) -> None:
    table = load_dataset(DatasetSpec(DatasetKind.FOLDER, broken_root))
    assert sorted(table.frame["source_id"]) == [
        "happy/a_original",
        "neutral/f_deep",
        "neutral/g_rotated",
        "neutral/i_same",
    ]


def test_broken_issue_reasons(broken_root: Path) -> None:
    reasons = _reasons(load_dataset(DatasetSpec(DatasetKind.FOLDER, broken_root)))
    assert reasons["c_empty.jpg"].startswith(ImageProblem.EMPTY.value)
    assert reasons["d_truncated.jpg"].startswith(ImageProblem.CORRUPT.value)
    assert reasons["e_notes.jpg"].startswith(ImageProblem.NOT_IMAGE.value)
    assert reasons["h_tiny.png"].startswith(ImageProblem.TOO_SMALL.value)
    assert reasons["i_same.png"].startswith(IssueReason.DUPLICATE_SOURCE_ID.value)
    assert len(reasons) == 6


def test_broken_duplicate_names_first(broken_root: Path) -> None:
    reason = _reasons(load_dataset(DatasetSpec(DatasetKind.FOLDER, broken_root)))["b_copy.png"]
    assert reason.startswith(IssueReason.DUPLICATE.value)
    assert str(broken_root / "happy" / "a_original.png") in reason


def test_broken_without_checks(broken_root: Path) -> None:
    table = load_dataset(DatasetSpec(DatasetKind.FOLDER, broken_root), check_images=False)
    reasons = _reasons(table)
    assert reasons["c_empty.jpg"].startswith(ImageProblem.EMPTY.value)
    assert "d_truncated.jpg" not in reasons
    assert len(table.frame) == 8


def test_fingerprint_changes_on_touch(folder_root: Path) -> None:
    spec = DatasetSpec(DatasetKind.FOLDER, folder_root)
    table = load_dataset(spec)
    before = table.fingerprint()
    os.utime(folder_root / "happy" / "s01_a.png", ns=(1_000_000_000, 1_000_000_000))
    assert table.fingerprint() != before


def test_fingerprint_changes_on_label(folder_root: Path) -> None:
    plain = load_dataset(DatasetSpec(DatasetKind.FOLDER, folder_root))
    relabelled = load_dataset(DatasetSpec(DatasetKind.FOLDER, folder_root, label_map={"surprised": "fear"}))
    assert plain.fingerprint() != relabelled.fingerprint()


def test_fingerprint_removed_file(folder_root: Path) -> None:
    table = load_dataset(DatasetSpec(DatasetKind.FOLDER, folder_root))
    (folder_root / "happy" / "s01_a.png").unlink()
    with pytest.raises(DatasetError, match="load the data set again"):
        table.fingerprint()


# --- whole-set errors -----------------------------------------------------------------


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found") as caught:
        load_dataset(DatasetSpec(DatasetKind.JAFFE, tmp_path / "absent"))
    assert str(tmp_path / "absent") in str(caught.value)
    assert "KA.AN1.39.tiff" in str(caught.value)


def test_empty_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="No usable images") as caught:
        load_dataset(DatasetSpec(DatasetKind.FOLDER, tmp_path))
    assert "<root>/<emotion>/<image file>" in str(caught.value)


def test_all_files_broken(tmp_path: Path) -> None:
    (tmp_path / "happy").mkdir()
    (tmp_path / "happy" / "empty.png").touch()
    with pytest.raises(DatasetError) as caught:
        load_dataset(DatasetSpec(DatasetKind.FOLDER, tmp_path))
    assert len(caught.value.issues) == 1
    assert "empty.png" in str(caught.value)


def test_spec_rejects_pattern_without_group(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="named group"):
        DatasetSpec(DatasetKind.FOLDER, tmp_path, subject_pattern=r"^s\d+")


def test_spec_rejects_bad_label(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not an emotion"):
        DatasetSpec(DatasetKind.FOLDER, tmp_path, label_map={"contempt": "scorn"})


def test_spec_rejects_bad_name(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="Invalid data set name"):
        DatasetSpec(DatasetKind.FOLDER, tmp_path, name="my faces/v2")


def test_spec_rejects_manifest_for_jaffe(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="manifest"):
        DatasetSpec(DatasetKind.JAFFE, tmp_path, manifest=tmp_path / "m.csv")


def test_spec_derived_names(tmp_path: Path) -> None:
    assert DatasetSpec(DatasetKind.JAFFE, tmp_path / "jaffedbase").resolved_name() == "jaffedbase"
    assert DatasetSpec(DatasetKind.JAFFE, tmp_path / "Copy 2").resolved_name() == "jaffe-copy-2"
    assert DatasetSpec(DatasetKind.FER2013, tmp_path / "kaggle" / "fer2013.csv").resolved_name() == "fer2013-kaggle"
    assert DatasetSpec(DatasetKind.FOLDER, tmp_path / "My Faces").resolved_name() == "my-faces"


def test_spec_round_trip(tmp_path: Path) -> None:
    spec = DatasetSpec(
        "folder", tmp_path, name="mine", subject_pattern=r"(?P<subject>\d+)", label_map={"joyful": "Happy"}
    )
    assert DatasetSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert spec.label_map == {"joyful": "happy"}
    assert isinstance(hash(spec), int)


def test_spec_blank_name(tmp_path: Path) -> None:
    spec = DatasetSpec(DatasetKind.FOLDER, tmp_path / "mine", name="  ")
    assert spec.name is None
    assert spec.resolved_name() == "mine"


# --- registry -------------------------------------------------------------------------


def test_register_and_list(tmp_path: Path, jaffe_root: Path) -> None:
    config = tmp_path / "artifacts"
    stored = register_dataset(DatasetSpec(DatasetKind.JAFFE, jaffe_root), config)
    names = [spec.name for spec in available_datasets(config)]
    assert stored.name == "jaffe"
    assert "jaffe" in names
    assert json.loads((config / "datasets.json").read_text())["datasets"][0]["root"] == str(jaffe_root)


def test_register_lists_london_first(tmp_path: Path, london_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FER_STUDIO_LONDON_DIR", str(london_root))
    specs = available_datasets(tmp_path)
    assert specs[0].kind is DatasetKind.LONDON
    assert specs[0].root == london_root
    assert specs[0].name == "london"


def test_register_duplicate_name(tmp_path: Path, jaffe_root: Path) -> None:
    register_dataset(DatasetSpec(DatasetKind.JAFFE, jaffe_root), tmp_path)
    with pytest.raises(DatasetError, match="already registered"):
        register_dataset(DatasetSpec(DatasetKind.JAFFE, jaffe_root, label_map={"XX": "fear"}), tmp_path)


def test_register_replace(tmp_path: Path, jaffe_root: Path) -> None:
    register_dataset(DatasetSpec(DatasetKind.JAFFE, jaffe_root), tmp_path)
    register_dataset(DatasetSpec(DatasetKind.JAFFE, jaffe_root, label_map={"XX": "fear"}), tmp_path, replace=True)
    registered = [spec for spec in available_datasets(tmp_path) if spec.name == "jaffe"]
    assert len(registered) == 1
    assert registered[0].label_map == {"XX": "fear"}


def test_register_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        register_dataset(DatasetSpec(DatasetKind.FOLDER, tmp_path / "absent"), tmp_path)


def test_unregister(tmp_path: Path, jaffe_root: Path) -> None:
    register_dataset(DatasetSpec(DatasetKind.JAFFE, jaffe_root), tmp_path)
    unregister_dataset("jaffe", tmp_path)
    assert "jaffe" not in [spec.name for spec in available_datasets(tmp_path)]
    assert (jaffe_root / "KA.AN1.39.tiff").is_file()


def test_unregister_unknown(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="No data set named 'ghost'"):
        unregister_dataset("ghost", tmp_path)


def test_registry_invalid_json(tmp_path: Path) -> None:
    (tmp_path / "datasets.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        available_datasets(tmp_path)


def test_default_london_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "neutral").mkdir()
    (tmp_path / "smiling").mkdir()
    monkeypatch.setenv("FER_STUDIO_LONDON_DIR", str(tmp_path))
    assert default_london_root() == tmp_path


# --- fetching the London Set ----------------------------------------------------------


class FakeResponse:
    """Stand-in for requests.Response carrying fixed bytes."""

    def __init__(self, content: bytes) -> None:
        self.content = content

    def raise_for_status(self) -> None:
        return None


class FakeSession:
    """Stand-in for requests.Session that serves bytes from memory and records each URL."""

    def __init__(self, serve: callable) -> None:
        self.serve = serve
        self.urls: list[str] = []

    def get(self, url: str, timeout: float) -> FakeResponse:
        self.urls.append(url)
        return FakeResponse(self.serve(url))


def _serve_shared_copy(london_root: Path) -> callable:
    def serve(url: str) -> bytes:
        folder = "neutral" if "/neutral_front/" in url else "smiling"
        return (london_root / folder / url.rsplit("/", 1)[1]).read_bytes()

    return serve


def _checksums(tmp_path: Path, london_root: Path) -> Path:
    lines = []
    for source, local in [("inst/neutral_front/001_03.jpg", "neutral"), ("inst/smiling_front/001_08.jpg", "smiling")]:
        digest = hashlib.sha256((london_root / local / source.rsplit("/", 1)[1]).read_bytes()).hexdigest()
        lines.append(f"{digest}  {source}\n")
    path = tmp_path / "checksums.sha256"
    path.write_text("".join(lines))
    return path


def test_london_url_format() -> None:
    assert london_url("inst/neutral_front/001_03.jpg") == (
        f"https://raw.githubusercontent.com/debruine/webmorphR.stim/{LONDON_COMMIT}/inst/neutral_front/001_03.jpg"
    )


def test_fetch_writes_verified(tmp_path: Path, london_root: Path) -> None:
    session = FakeSession(_serve_shared_copy(london_root))
    target = fetch_london(tmp_path / "london", session=session, checksums_file=_checksums(tmp_path, london_root))
    assert (target / "neutral" / "001_03.jpg").read_bytes() == (london_root / "neutral" / "001_03.jpg").read_bytes()
    assert (target / "smiling" / "001_08.jpg").is_file()
    assert (target / "london_info.csv").is_file()
    assert "CC BY 4.0" in (target / "CREDIT.txt").read_text()
    assert session.urls[0] == london_url("inst/neutral_front/001_03.jpg")


def test_fetch_skips_verified(tmp_path: Path, london_root: Path) -> None:
    checksums = _checksums(tmp_path, london_root)
    fetch_london(tmp_path / "london", session=FakeSession(_serve_shared_copy(london_root)), checksums_file=checksums)
    second = FakeSession(_serve_shared_copy(london_root))
    fetch_london(tmp_path / "london", session=second, checksums_file=checksums)
    assert second.urls == []


def test_fetch_result_loads(tmp_path: Path, london_root: Path) -> None:
    session = FakeSession(_serve_shared_copy(london_root))
    target = fetch_london(tmp_path / "london", session=session, checksums_file=_checksums(tmp_path, london_root))
    table = load_dataset(DatasetSpec(DatasetKind.LONDON, target))
    assert _labels(table) == {"neutral/001_03": "neutral", "smiling/001_08": "happy"}


def test_fetch_rejects_mismatch(tmp_path: Path, london_root: Path) -> None:
    session = FakeSession(lambda url: b"tampered bytes")
    target = tmp_path / "london"
    with pytest.raises(DatasetError, match="SHA-256 mismatch") as caught:
        fetch_london(target, session=session, checksums_file=_checksums(tmp_path, london_root))
    assert "2 of 2" in str(caught.value)
    assert not (target / "neutral").exists()


def test_fetch_packaged_checksums(tmp_path: Path, london_root: Path) -> None:
    # The packaged list hashes the 1350x1350 originals, so the 512x512 copy must fail every check.
    session = FakeSession(_serve_shared_copy(london_root))
    target = tmp_path / "london"
    with pytest.raises(DatasetError, match="204 of 204"):
        fetch_london(target, session=session)
    assert len(session.urls) == 204
    assert session.urls[0] == london_url("inst/neutral_front/001_03.jpg")
    assert not (target / "neutral").exists()


def test_fetch_keeps_other_file(tmp_path: Path, london_root: Path) -> None:
    target = tmp_path / "london"
    (target / "neutral").mkdir(parents=True)
    (target / "neutral" / "001_03.jpg").write_bytes(b"user file")
    session = FakeSession(_serve_shared_copy(london_root))
    with pytest.raises(DatasetError, match="not overwritten"):
        fetch_london(target, session=session, checksums_file=_checksums(tmp_path, london_root))
    assert (target / "neutral" / "001_03.jpg").read_bytes() == b"user file"
    assert (target / "smiling" / "001_08.jpg").is_file()


def test_fetch_progress(tmp_path: Path, london_root: Path) -> None:
    calls: list[tuple[int, int]] = []
    session = FakeSession(_serve_shared_copy(london_root))
    checksums = _checksums(tmp_path, london_root)
    fetch_london(tmp_path / "london", session=session, checksums_file=checksums, progress=lambda *a: calls.append(a))
    assert calls == [(1, 2), (2, 2)]
