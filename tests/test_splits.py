"""Tests for the PD, PI and leaky split protocols and the training mask filter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fer_core.constants import MaskType, Protocol
from fer_core.splits import (
    Fold,
    LeakageError,
    PiScheme,
    SplitSettings,
    assert_no_leakage,
    make_folds,
    read_manifest,
    shared_source_photographs,
    shared_subjects,
)

EXPRESSIONS = (("neutral", "03", "neutral"), ("smiling", "08", "happy"))


def london_manifest(london_root: Path, subjects: int = 12, with_subjects: bool = True) -> pd.DataFrame:
    """Build a manifest of the first London identities: 2 photographs each, 5 copies per photograph."""
    info = pd.read_csv(london_root / "london_info.csv", dtype={"face_id": str})
    rows = []
    for face_id in info["face_id"].head(subjects):
        for folder, number, label in EXPRESSIONS:
            source_id = f"{folder}/{face_id}_{number}"
            for mask_type in MaskType:
                rows.append({"image": f"images/{mask_type.value}/{folder}__{face_id}_{number}.png",
                             "source_id": source_id, "subject": face_id if with_subjects else pd.NA,
                             "label": label, "mask_type": mask_type.value})
    frame = pd.DataFrame(rows)
    frame["subject"] = frame["subject"].astype("string")
    return frame


@pytest.fixture()
def manifest(london_root: Path) -> pd.DataFrame:
    return london_manifest(london_root)


def test_pd_folds_keep_photographs_together(manifest: pd.DataFrame) -> None:
    folds = make_folds(manifest, SplitSettings(protocol=Protocol.PD, folds=4))
    for fold in folds:
        assert shared_source_photographs(manifest, fold) == set(), fold.name


def test_pd_folds_test_every_row_once(manifest: pd.DataFrame) -> None:
    folds = make_folds(manifest, SplitSettings(protocol=Protocol.PD, folds=4))
    tested = np.sort(np.concatenate([fold.test_index for fold in folds]))
    assert tested.tolist() == list(range(len(manifest)))


def test_pd_folds_are_stratified(manifest: pd.DataFrame) -> None:
    folds = make_folds(manifest, SplitSettings(protocol=Protocol.PD, folds=4))
    for fold in folds:
        labels = manifest["label"].iloc[fold.test_index].value_counts()
        assert labels["happy"] == labels["neutral"], fold.name


def test_pd_holdout_test_fraction(manifest: pd.DataFrame) -> None:
    folds = make_folds(manifest, SplitSettings(protocol=Protocol.PD, folds=1, test_fraction=0.25))
    test_photographs = manifest["source_id"].iloc[folds[0].test_index].nunique()
    assert len(folds) == 1
    assert test_photographs == 6
    assert shared_source_photographs(manifest, folds[0]) == set()


def test_pd_holdout_is_named(manifest: pd.DataFrame) -> None:
    folds = make_folds(manifest, SplitSettings(protocol=Protocol.PD, folds=1))
    assert folds[0].name == "holdout"


def test_pd_shares_subjects(manifest: pd.DataFrame) -> None:
    # Person-dependent: the neutral and the smiling photograph of one person may be split.
    folds = make_folds(manifest, SplitSettings(protocol=Protocol.PD, folds=2))
    assert any(shared_subjects(manifest, fold) for fold in folds)


def test_pd_too_many_folds(manifest: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="cannot have folds=25 greater than the number of source photographs: 24"):
        make_folds(manifest, SplitSettings(protocol=Protocol.PD, folds=25))


def test_pi_loso_one_subject_per_fold(manifest: pd.DataFrame) -> None:
    folds = make_folds(manifest, SplitSettings(protocol=Protocol.PI, pi_scheme=PiScheme.LOSO))
    assert len(folds) == 12
    for fold in folds:
        assert manifest["subject"].iloc[fold.test_index].nunique() == 1, fold.name


def test_pi_loso_keeps_subjects_apart(manifest: pd.DataFrame) -> None:
    folds = make_folds(manifest, SplitSettings(protocol=Protocol.PI, pi_scheme=PiScheme.LOSO))
    for fold in folds:
        assert shared_subjects(manifest, fold) == set(), fold.name


def test_pi_loso_fold_names(manifest: pd.DataFrame) -> None:
    folds = make_folds(manifest, SplitSettings(protocol=Protocol.PI, pi_scheme=PiScheme.LOSO))
    assert folds[0].name == "subject-001"
    assert folds[0].test_subjects == ("001",)


def test_pi_loso_names_safe_and_unique(manifest: pd.DataFrame) -> None:
    odd = manifest.copy()
    odd["subject"] = odd["subject"].replace({"001": "A/B", "002": "A B", "003": "A:B"})
    names = [fold.name for fold in make_folds(odd, SplitSettings(protocol=Protocol.PI))]
    assert len(set(names)) == len(names)
    assert all("/" not in name and " " not in name and ":" not in name for name in names)


def test_pi_kfold_keeps_subjects_apart(manifest: pd.DataFrame) -> None:
    folds = make_folds(manifest, SplitSettings(protocol=Protocol.PI, pi_scheme=PiScheme.KFOLD, folds=3))
    assert len(folds) == 3
    for fold in folds:
        assert shared_subjects(manifest, fold) == set(), fold.name
        assert shared_source_photographs(manifest, fold) == set(), fold.name


def test_pi_kfold_tests_every_subject(manifest: pd.DataFrame) -> None:
    folds = make_folds(manifest, SplitSettings(protocol=Protocol.PI, pi_scheme=PiScheme.KFOLD, folds=3))
    tested = sorted(subject for fold in folds for subject in fold.test_subjects)
    assert tested == sorted(manifest["subject"].unique())


def test_pi_holdout_keeps_subjects_apart(manifest: pd.DataFrame) -> None:
    settings = SplitSettings(protocol=Protocol.PI, pi_scheme=PiScheme.KFOLD, folds=1, test_fraction=0.25)
    fold = make_folds(manifest, settings)[0]
    assert len(fold.test_subjects) == 3
    assert shared_subjects(manifest, fold) == set()


def test_pi_too_many_folds(london_root: Path) -> None:
    manifest = london_manifest(london_root, subjects=10)
    settings = SplitSettings(protocol=Protocol.PI, pi_scheme=PiScheme.KFOLD, folds=12)
    with pytest.raises(ValueError, match="cannot have folds=12 greater than the number of subjects: 10"):
        make_folds(manifest, settings)


def test_pi_without_subjects(london_root: Path) -> None:
    manifest = london_manifest(london_root, with_subjects=False)
    with pytest.raises(ValueError, match="FER2013 has no subject ids, so person-independent evaluation "
                                         "is impossible; use PD"):
        make_folds(manifest, SplitSettings(protocol=Protocol.PI), dataset_name="FER2013")


def test_pi_with_some_subjects_missing(manifest: pd.DataFrame) -> None:
    partial = manifest.copy()
    partial.loc[:4, "subject"] = pd.NA
    with pytest.raises(ValueError, match="5 of 120 rows without a subject id"):
        make_folds(partial, SplitSettings(protocol=Protocol.PI))


def test_leaky_shares_photographs(manifest: pd.DataFrame) -> None:
    folds = make_folds(manifest, SplitSettings(protocol=Protocol.LEAKY, folds=4))
    assert all(shared_source_photographs(manifest, fold) for fold in folds)


def test_leaky_fold_names(manifest: pd.DataFrame) -> None:
    folds = make_folds(manifest, SplitSettings(protocol=Protocol.LEAKY, folds=2))
    assert [fold.name for fold in folds] == ["leaky-fold-01", "leaky-fold-02"]


def test_leaky_fold_fails_pd_check(manifest: pd.DataFrame) -> None:
    fold = make_folds(manifest, SplitSettings(protocol=Protocol.LEAKY, folds=4))[0]
    with pytest.raises(LeakageError, match="source photograph"):
        assert_no_leakage(manifest, fold, Protocol.PD)


def test_leaky_protocol_not_checked(manifest: pd.DataFrame) -> None:
    fold = make_folds(manifest, SplitSettings(protocol=Protocol.LEAKY, folds=4))[0]
    assert_no_leakage(manifest, fold, Protocol.LEAKY)


def test_leakage_check_finds_shared_subject(manifest: pd.DataFrame) -> None:
    # The neutral photograph of subject 001 trains, its smiling photograph tests: fine for PD only.
    neutral = np.flatnonzero(manifest["source_id"] == "neutral/001_03")
    smiling = np.flatnonzero(manifest["source_id"] == "smiling/001_08")
    fold = Fold("handmade", train_index=neutral, test_index=smiling)
    assert_no_leakage(manifest, fold, Protocol.PD)
    with pytest.raises(LeakageError, match="subject"):
        assert_no_leakage(manifest, fold, Protocol.PI)


def training_mask_types(manifest: pd.DataFrame, settings: SplitSettings) -> set[str]:
    fold = make_folds(manifest, settings)[0]
    return set(manifest["mask_type"].iloc[fold.train_index])


def test_mask_filter_surgical_only(manifest: pd.DataFrame) -> None:
    settings = SplitSettings(folds=3, train_mask_types=(MaskType.SURGICAL,), include_unmasked=False)
    assert training_mask_types(manifest, settings) == {"surgical"}


def test_mask_filter_unmasked_only(manifest: pd.DataFrame) -> None:
    settings = SplitSettings(folds=3, train_mask_types=(), include_unmasked=True)
    assert training_mask_types(manifest, settings) == {"none"}


def test_mask_filter_all_types(manifest: pd.DataFrame) -> None:
    assert training_mask_types(manifest, SplitSettings(folds=3)) == {m.value for m in MaskType}


def test_mask_filter_keeps_test_side(manifest: pd.DataFrame) -> None:
    settings = SplitSettings(folds=3, train_mask_types=(MaskType.SURGICAL,), include_unmasked=False)
    fold = make_folds(manifest, settings)[0]
    assert set(manifest["mask_type"].iloc[fold.test_index]) == {m.value for m in MaskType}


def test_mask_filter_missing_type(manifest: pd.DataFrame) -> None:
    unmasked_only = manifest[manifest["mask_type"] == "none"].reset_index(drop=True)
    settings = SplitSettings(folds=3, train_mask_types=(MaskType.N95,), include_unmasked=False)
    with pytest.raises(ValueError, match="no training images with mask types"):
        make_folds(unmasked_only, settings)


def test_settings_reject_none_mask_type() -> None:
    with pytest.raises(ValueError, match="include_unmasked"):
        SplitSettings(train_mask_types=(MaskType.NONE,))


def test_settings_reject_empty_training() -> None:
    with pytest.raises(ValueError, match="nothing to train on"):
        SplitSettings(train_mask_types=(), include_unmasked=False)


def test_settings_reject_zero_folds() -> None:
    with pytest.raises(ValueError, match="folds must be at least 1"):
        SplitSettings(folds=0)


def test_folds_repeat_with_seed(manifest: pd.DataFrame) -> None:
    first = make_folds(manifest, SplitSettings(folds=4, seed=3))
    second = make_folds(manifest, SplitSettings(folds=4, seed=3))
    assert all(np.array_equal(a.test_index, b.test_index) for a, b in zip(first, second))


def test_folds_change_with_seed(manifest: pd.DataFrame) -> None:
    first = make_folds(manifest, SplitSettings(folds=4, seed=3))
    second = make_folds(manifest, SplitSettings(folds=4, seed=4))
    assert not all(np.array_equal(a.test_index, b.test_index) for a, b in zip(first, second))


def write_manifest(folder: Path, manifest: pd.DataFrame) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    manifest.to_csv(folder / "manifest.csv", index=False)
    (folder / "settings.json").write_text(json.dumps({"dataset": "london"}))
    return folder


def test_read_manifest_keeps_ids_as_text(tmp_path: Path, manifest: pd.DataFrame) -> None:
    loaded = read_manifest(write_manifest(tmp_path / "set", manifest))
    assert loaded["subject"].iloc[0] == "001"


def test_read_manifest_empty_subject_is_missing(tmp_path: Path, london_root: Path) -> None:
    loaded = read_manifest(write_manifest(tmp_path / "set", london_manifest(london_root, with_subjects=False)))
    assert loaded["subject"].isna().all()


def test_read_manifest_missing_column(tmp_path: Path, manifest: pd.DataFrame) -> None:
    folder = write_manifest(tmp_path / "set", manifest.drop(columns=["mask_type"]))
    with pytest.raises(ValueError, match=r"manifest.csv is missing the column\(s\) \['mask_type'\]"):
        read_manifest(folder)


def test_read_manifest_unknown_label(tmp_path: Path, manifest: pd.DataFrame) -> None:
    folder = write_manifest(tmp_path / "set", manifest.replace({"label": {"happy": "joy"}}))
    with pytest.raises(ValueError, match=r"unknown label values \['joy'\]"):
        read_manifest(folder)


def test_read_manifest_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="prepare the data set first"):
        read_manifest(tmp_path)
