"""Preparation pipeline on real London faces: real MTCNN, real dlib landmarks, real masks."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from fer_core.constants import MOUTH, NOSE_TIP, MaskType
from fer_core.datasets import DatasetKind, DatasetSpec, load_dataset
from fer_core.faces import FaceAnalyzer
from fer_core.prepare import (
    PrepareSettings,
    _safe_file_stem,
    list_prepared,
    load_prepared,
    prepare_dataset,
    prepared_folder,
)

SUBJECTS = ("001", "002", "003", "004")


def _make_folder_set(london_root: Path, target: Path, subjects=SUBJECTS) -> Path:
    """Copy a few London faces into a `<root>/<emotion>/<file>` folder."""
    for subject in subjects:
        for folder, label, suffix in (("neutral", "neutral", "03"), ("smiling", "happy", "08")):
            (target / label).mkdir(parents=True, exist_ok=True)
            shutil.copy(london_root / folder / f"{subject}_{suffix}.jpg", target / label / f"{subject}_{suffix}.jpg")
    return target


def _folder_table(root: Path):
    return load_dataset(DatasetSpec(kind=DatasetKind.FOLDER, root=root, name="tiny",
                                    subject_pattern=r"^(?P<subject>\d{3})_"))


def _file_hashes(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_prepared(london_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """Prepare 8 London photographs once for the read-only checks of this module."""
    root = _make_folder_set(london_root, tmp_path_factory.mktemp("tiny_set"))
    table = _folder_table(root)
    prepared = prepare_dataset(table, PrepareSettings(workers=2), output_root=tmp_path_factory.mktemp("prepared"))
    return table, prepared


def test_manifest_has_every_mask_type(tiny_prepared):
    table, prepared = tiny_prepared

    counts = prepared.manifest.groupby("mask_type").size()

    assert set(counts.index) == {m.value for m in MaskType}
    assert (counts == len(table.frame)).all()


def test_crops_written_at_crop_size(tiny_prepared):
    _, prepared = tiny_prepared

    for relative in prepared.manifest["image"]:
        with Image.open(prepared.image_path(relative)) as image:
            assert image.size == (256, 256)


def test_masked_rows_carry_polygon(tiny_prepared):
    _, prepared = tiny_prepared
    masked = prepared.manifest[prepared.manifest["mask_type"] != "none"]
    unmasked = prepared.manifest[prepared.manifest["mask_type"] == "none"]

    assert all(len(json.loads(p)) >= 3 for p in masked["polygon"])
    assert all(json.loads(p) == [] for p in unmasked["polygon"])


def test_polygon_covers_nose_tip_and_mouth_in_crop(tiny_prepared):
    _, prepared = tiny_prepared
    landmarks_by_source = {row.source_id: np.array(json.loads(row.landmarks), dtype=np.float32)
                           for row in prepared.faces.itertuples()}

    for row in prepared.manifest[prepared.manifest["mask_type"] != "none"].itertuples():
        polygon = np.array(json.loads(row.polygon), dtype=np.float32)
        landmarks = landmarks_by_source[row.source_id]
        for index in [NOSE_TIP, *MOUTH]:
            point = (float(landmarks[index][0]), float(landmarks[index][1]))
            assert cv2.pointPolygonTest(polygon, point, False) >= 0, (row.image, index)


def test_faces_table_has_one_row_per_photograph(tiny_prepared):
    table, prepared = tiny_prepared

    assert sorted(prepared.faces["source_id"]) == sorted(table.frame["source_id"])


def test_subjects_and_labels_carried(tiny_prepared):
    _, prepared = tiny_prepared

    assert set(prepared.manifest["subject"]) == set(SUBJECTS)
    assert set(prepared.manifest["label"]) == {"neutral", "happy"}


def test_rerun_uses_cache(tiny_prepared):
    table, prepared = tiny_prepared
    before = {p: p.stat().st_mtime_ns for p in prepared.folder.rglob("*.png")}

    again = prepare_dataset(table, PrepareSettings(workers=2), output_root=prepared.folder.parent)

    assert again.folder == prepared.folder
    assert {p: p.stat().st_mtime_ns for p in again.folder.rglob("*.png")} == before


def test_cache_key_ignores_workers(tiny_prepared):
    table, prepared = tiny_prepared

    assert prepared_folder(table, PrepareSettings(workers=1), prepared.folder.parent) == prepared.folder


def test_cache_key_changes_with_coverage(tiny_prepared):
    table, prepared = tiny_prepared

    assert prepared_folder(table, PrepareSettings(coverage=0.2), prepared.folder.parent) != prepared.folder


def test_list_prepared_finds_set(tiny_prepared):
    _, prepared = tiny_prepared

    assert [p.folder for p in list_prepared(prepared.folder.parent)] == [prepared.folder]


def test_source_images_left_untouched(london_root: Path, tmp_path: Path):
    root = _make_folder_set(london_root, tmp_path / "set", subjects=("005",))
    before = _file_hashes(root)

    prepare_dataset(_folder_table(root), PrepareSettings(workers=1), output_root=tmp_path / "prepared")

    assert _file_hashes(root) == before


def test_bad_files_reported_not_fatal(london_root: Path, tmp_path: Path):
    root = _make_folder_set(london_root, tmp_path / "set", subjects=("006",))
    (root / "happy" / "007_08.jpg").write_bytes(b"")
    noise = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "neutral" / "008_03.png")

    prepared = prepare_dataset(_folder_table(root), PrepareSettings(workers=1), output_root=tmp_path / "prepared")

    reasons = dict(zip(prepared.report["path"].map(lambda p: Path(p).name), prepared.report["stage"]))
    assert reasons["007_08.jpg"] == "load"
    assert reasons["008_03.png"] == "detect"
    assert set(prepared.manifest["source_id"].map(lambda s: s.split("/")[-1])) == {"006_03", "006_08"}


def test_dotted_jaffe_names_kept(london_root: Path, tmp_path: Path):
    root = tmp_path / "jaffe"
    root.mkdir()
    for name, photo in (("KA.AN1.39.tiff", "neutral/009_03.jpg"), ("KA.HA2.40.tiff", "smiling/009_08.jpg")):
        grey = Image.open(london_root / photo).convert("L").resize((256, 256))
        # JAFFE ships some files in palette mode.
        grey.convert("P").save(root / name)
    table = load_dataset(DatasetSpec(kind=DatasetKind.JAFFE, root=root, name="jaffe-like"))

    prepared = prepare_dataset(table, PrepareSettings(workers=1), output_root=tmp_path / "prepared")

    names = {Path(p).name for p in prepared.manifest["image"]}
    assert "KA.AN1.39.png" in names
    assert "KA.HA2.40.png" in names


def test_greyscale_photo_gives_greyscale_crops(london_root: Path, tmp_path: Path):
    root = tmp_path / "jaffe"
    root.mkdir()
    grey = Image.open(london_root / "neutral" / "010_03.jpg").convert("L").resize((256, 256))
    grey.save(root / "KM.NE1.1.tiff")
    table = load_dataset(DatasetSpec(kind=DatasetKind.JAFFE, root=root, name="grey"))

    prepared = prepare_dataset(table, PrepareSettings(workers=1), output_root=tmp_path / "prepared")

    for relative in prepared.manifest["image"]:
        with Image.open(prepared.image_path(relative)) as image:
            assert image.mode == "L", relative


def test_landmarks_computed_once_per_photograph(london_root: Path, tmp_path: Path, monkeypatch):
    root = _make_folder_set(london_root, tmp_path / "set", subjects=("011", "012"))
    calls = []
    real_analyze = FaceAnalyzer.analyze

    def counting_analyze(self, image):
        calls.append(image.shape)
        return real_analyze(self, image)

    monkeypatch.setattr(FaceAnalyzer, "analyze", counting_analyze)
    prepare_dataset(_folder_table(root), PrepareSettings(workers=1), output_root=tmp_path / "prepared")

    assert len(calls) == 4


def test_interrupted_run_continues(london_root: Path, tmp_path: Path):
    root = _make_folder_set(london_root, tmp_path / "set", subjects=("013", "014", "016", "017", "018", "019"))
    table = _folder_table(root)
    settings = PrepareSettings(workers=1)

    def stop_after_first_chunk(done: int, total: int) -> None:
        if done >= 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(table, settings, output_root=tmp_path / "prepared", progress=stop_after_first_chunk)
    partial = prepared_folder(table, settings, tmp_path / "prepared").with_name(
        prepared_folder(table, settings, tmp_path / "prepared").name + ".partial")
    kept = {p.name: p.stat().st_mtime_ns for p in (partial / "images" / "none").glob("*.png")}
    prepared = prepare_dataset(table, settings, output_root=tmp_path / "prepared")

    assert len(kept) == 8
    assert {p.name: p.stat().st_mtime_ns for p in (prepared.folder / "images" / "none").glob("*.png")
            if p.name in kept} == kept
    assert len(prepared.faces) == 12


def test_load_prepared_rejects_plain_folder(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="manifest.csv"):
        load_prepared(tmp_path)


@pytest.mark.parametrize("field, value", [("coverage", 1.5), ("crop_size", 8), ("workers", 0), ("margin", -0.1)])
def test_invalid_settings_rejected(field: str, value):
    with pytest.raises(ValueError, match=field):
        PrepareSettings(**{field: value})


@pytest.mark.timeout(300)
def test_pool_safe_in_threaded_process(london_root: Path, tmp_path: Path):
    """A Streamlit server has threads and a loaded MTCNN; forking such a process can hang."""
    import threading

    FaceAnalyzer().analyze(np.asarray(Image.open(london_root / "neutral" / "020_03.jpg").convert("RGB")))
    root = _make_folder_set(london_root, tmp_path / "set", subjects=("020", "021", "022"))
    outcome = {}

    def prepare_in_thread() -> None:
        outcome["prepared"] = prepare_dataset(_folder_table(root), PrepareSettings(workers=2),
                                              output_root=tmp_path / "prepared")

    worker = threading.Thread(target=prepare_in_thread)
    worker.start()
    worker.join(timeout=240)

    assert not worker.is_alive()
    assert len(outcome["prepared"].faces) == 6


def test_file_stems_never_collide():
    ids = ["happy/img 1", "happy/img_1", "happy/a/b", "happy/a__b", "happy/café", "happy/caf_"]

    stems = {_safe_file_stem(source_id) for source_id in ids}

    assert len(stems) == len(ids)


def test_plain_ids_keep_readable_stems():
    assert _safe_file_stem("neutral/KA.AN1.39") == "neutral__KA.AN1.39"


def test_similar_names_get_separate_crops(london_root: Path, tmp_path: Path):
    root = tmp_path / "set"
    (root / "happy").mkdir(parents=True)
    shutil.copy(london_root / "smiling" / "024_08.jpg", root / "happy" / "img 1.jpg")
    shutil.copy(london_root / "smiling" / "025_08.jpg", root / "happy" / "img_1.jpg")
    table = load_dataset(DatasetSpec(kind=DatasetKind.FOLDER, root=root, name="similar"))

    prepared = prepare_dataset(table, PrepareSettings(workers=1, mask_types=(MaskType.NONE,)),
                               output_root=tmp_path / "prepared")

    assert prepared.manifest["image"].nunique() == 2


@pytest.mark.timeout(300)
def test_concurrent_preparations_share_result(london_root: Path, tmp_path: Path):
    import threading

    root = _make_folder_set(london_root, tmp_path / "set", subjects=("026", "027"))
    table = _folder_table(root)
    results = []

    def prepare_once() -> None:
        results.append(prepare_dataset(table, PrepareSettings(workers=1), output_root=tmp_path / "prepared"))

    threads = [threading.Thread(target=prepare_once) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)

    assert len(results) == 2
    assert results[0].folder == results[1].folder
    assert len(results[1].manifest) == 4 * len(MaskType)
