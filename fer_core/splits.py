"""Split protocols: person-dependent (PD), person-independent (PI) and the leaky split.

Every prepared set contains several copies of each source photograph (the unmasked crop and one
per mask type). A sound split keeps all copies of a photograph on one side:

- PD groups rows by `source_id`, so the same people appear on both sides but no test
  photograph, masked or not, is ever trained on;
- PI groups rows by `subject`, so test people never appear in training;
- LEAKY splits single rows, as happens when the split is made after augmentation. Masked
  copies of one test photograph then land in training, which inflates accuracy. It exists
  only to measure that inflation.

Which mask types the model trains on is a setting applied to the training side only. The
test side keeps every mask type and the unmasked copies, so results per mask type exist.

>>> manifest = pd.DataFrame({
...     "image": [f"{m}/{s}.png" for s in "abcd" for m in ("none", "surgical")],
...     "source_id": [s for s in "abcd" for _ in range(2)],
...     "subject": [s for s in "abcd" for _ in range(2)],
...     "label": ["happy", "happy", "neutral", "neutral"] * 2,
...     "mask_type": ["none", "surgical"] * 4,
... })
>>> folds = make_folds(manifest, SplitSettings(protocol=Protocol.PD, folds=2))
>>> [len(fold.test_index) for fold in folds]
[4, 4]
"""

from __future__ import annotations

import enum
import logging
import numbers
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
from sklearn.model_selection import (
    GroupShuffleSplit,
    LeaveOneGroupOut,
    StratifiedGroupKFold,
    StratifiedKFold,
    train_test_split,
)

from fer_core.constants import Emotion, MaskType, Protocol

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.csv"
REQUIRED_COLUMNS = ("image", "source_id", "subject", "label", "mask_type")
# Examples listed in error messages, so a message stays one readable line.
EXAMPLES_SHOWN = 5


# Validation shared by the settings dataclasses (SplitSettings here, TrainSettings, PrepareSettings).
ChoiceT = TypeVar("ChoiceT", bound=enum.Enum)


def parse_choice(kind: type[ChoiceT], value: object, name: str) -> ChoiceT:
    """Return `value` as a member of the enum `kind`; raise ValueError naming the setting and its choices."""
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(str(member.value) for member in kind)
        raise ValueError(f"{name} must be one of {choices}, got {value!r}") from None


def check_whole_number(name: str, value: object, *, optional: bool = False) -> None:
    """Raise ValueError unless `value` is an integer (a bool is not), or None when `optional`."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        expected = "a whole number or None" if optional else "a whole number"
        raise ValueError(f"{name} must be {expected}, got {value!r}")


def check_real_number(name: str, value: object) -> None:
    """Raise ValueError unless `value` is a real number (a bool is not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")


class PiScheme(str, enum.Enum):
    """Scheme that forms person-independent folds."""

    LOSO = "loso"  # leave one subject out: one fold per subject
    KFOLD = "kfold"  # k folds of whole subjects, stratified by label


class LeakageError(ValueError):
    """A fold shares source photographs or subjects between its training and test sides."""


@dataclass(frozen=True)
class SplitSettings:
    """How to split a prepared set into folds, and which mask types to train on.

    `folds=1` means a single hold-out split with `test_fraction` of the source photographs
    (PD), subjects (PI with the k-fold scheme) or rows (LEAKY) on the test side.
    Leave-one-subject-out ignores `folds` and `test_fraction`.
    `train_mask_types` lists the masked copies used for training (empty: none of them) and
    `include_unmasked` adds the unmasked copies.
    """

    protocol: Protocol = Protocol.PD
    folds: int = 5
    pi_scheme: PiScheme = PiScheme.LOSO
    test_fraction: float = 0.2
    seed: int = 0
    train_mask_types: tuple[MaskType, ...] = MaskType.drawn()
    include_unmasked: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "protocol", parse_choice(Protocol, self.protocol, "protocol"))
        object.__setattr__(self, "pi_scheme", parse_choice(PiScheme, self.pi_scheme, "pi_scheme"))
        mask_types = tuple(dict.fromkeys(parse_choice(MaskType, m, "train_mask_types") for m in self.train_mask_types))
        object.__setattr__(self, "train_mask_types", mask_types)
        check_whole_number("folds", self.folds)
        check_whole_number("seed", self.seed)
        check_real_number("test_fraction", self.test_fraction)

        if MaskType.NONE in mask_types:
            raise ValueError("train_mask_types lists only masked copies "
                             f"({', '.join(m.value for m in MaskType.drawn())}); "
                             "use include_unmasked=True to train on the unmasked copies")
        if not mask_types and not self.include_unmasked:
            raise ValueError("nothing to train on: train_mask_types is empty and include_unmasked is False")
        if self.folds < 1:
            raise ValueError(f"folds must be at least 1 (1 means a single hold-out split), got {self.folds}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be between 0 and 1, got {self.test_fraction}")

    def training_mask_values(self) -> set[str]:
        """Return the `mask_type` values allowed on the training side."""
        allowed = {m.value for m in self.train_mask_types}
        if self.include_unmasked:
            allowed.add(MaskType.NONE.value)
        return allowed


@dataclass(frozen=True, eq=False)
class Fold:
    """One split: positional row indices of the manifest on each side.

    `test_subjects` lists the subjects on the test side (empty when the data set has none).
    """

    name: str
    train_index: np.ndarray
    test_index: np.ndarray
    test_subjects: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------
# Manifest


def read_manifest(prepared_dir: Path) -> pd.DataFrame:
    """Read and check a prepared set's manifest.csv; ids stay strings ("001" is not 1).

    Raises FileNotFoundError when the file is missing and ValueError when a required column
    is missing or a label or mask type is unknown.
    """
    path = Path(prepared_dir) / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; prepare the data set first (fer-studio prepare)")

    text_columns = {column: "string" for column in ("image", "source_id", "subject", "label", "mask_type")}
    try:
        # index_col=False keeps a row with an extra field from shifting every column by one.
        manifest = pd.read_csv(path, dtype=text_columns, keep_default_na=False, na_values=[""], index_col=False)
    except ValueError as error:  # pandas' parser errors and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{path} is not a readable CSV file ({error}); delete {path.parent} and run the "
                         "preparation again (fer-studio prepare), which rebuilds it") from error
    check_manifest(manifest, source=str(path))
    return manifest.reset_index(drop=True)


def check_manifest(manifest: pd.DataFrame, source: str = "manifest") -> None:
    """Raise ValueError when the manifest lacks a column or contains an unknown label or mask type."""
    missing = [column for column in REQUIRED_COLUMNS if column not in manifest.columns]
    if missing:
        raise ValueError(f"{source} is missing the column(s) {missing}; expected at least {list(REQUIRED_COLUMNS)}")
    if manifest.empty:
        raise ValueError(f"{source} has no rows; the preparation found no usable face")

    _check_values(manifest, "label", {e.value for e in Emotion}, source)
    _check_values(manifest, "mask_type", {m.value for m in MaskType}, source)
    if manifest["source_id"].isna().any():
        raise ValueError(f"{source} has rows without a source_id; every crop must name its source photograph")


def _check_values(manifest: pd.DataFrame, column: str, known: set[str], source: str) -> None:
    unknown = sorted(set(manifest[column].dropna().astype(str)) - known)
    if unknown or manifest[column].isna().any():
        shown = unknown[:EXAMPLES_SHOWN] if unknown else ["<empty>"]
        raise ValueError(f"{source} has unknown {column} values {shown}; expected one of {sorted(known)}")


def has_subject_ids(manifest: pd.DataFrame) -> bool:
    """Return True when every row of the manifest names its subject."""
    return "subject" in manifest.columns and bool(manifest["subject"].notna().all()) and not manifest.empty


# ---------------------------------------------------------------------------------------------
# Folds


def make_folds(manifest: pd.DataFrame, settings: SplitSettings, dataset_name: str = "this data set") -> list[Fold]:
    """Split the manifest into folds by the settings' protocol and filter the training side.

    Row indices are positions (use `manifest.iloc`). Raises ValueError for impossible
    settings (more folds than groups, PI without subject ids) and LeakageError if a PD or PI
    fold would share a source photograph or subject between its sides.
    """
    check_manifest(manifest)
    manifest = manifest.reset_index(drop=True)

    if settings.protocol is Protocol.PD:
        raw_folds = _photograph_folds(manifest, settings)
    elif settings.protocol is Protocol.PI:
        raw_folds = _subject_folds(manifest, settings, dataset_name)
    else:
        raw_folds = leaky_row_folds(manifest, settings)

    folds = [_filter_training_side(manifest, fold, settings) for fold in raw_folds]
    for fold in folds:
        assert_no_leakage(manifest, fold, settings.protocol)
    logger.info("made %d %s fold(s) over %d rows", len(folds), settings.protocol.value, len(manifest))
    return folds


def _photograph_folds(manifest: pd.DataFrame, settings: SplitSettings) -> list[Fold]:
    """Split by source photograph (PD), stratified by label."""
    groups = manifest["source_id"].astype(str).to_numpy()
    labels = manifest["label"].astype(str).to_numpy()
    photographs = manifest.groupby("source_id", sort=True)["label"].first()

    if settings.folds == 1:
        train_sources, test_sources = _stratified_holdout(
            photographs.index.to_numpy(), photographs.to_numpy(), settings, "source photographs")
        test_mask = np.isin(groups, test_sources)
        return [_fold_from_mask(manifest, "holdout", test_mask)]

    _check_fold_count(settings.folds, len(photographs), "source photographs")
    splitter = StratifiedGroupKFold(n_splits=settings.folds, shuffle=True, random_state=settings.seed)
    splits = splitter.split(np.zeros(len(manifest)), labels, groups)
    return [_fold(manifest, _fold_name(i), train, test) for i, (train, test) in enumerate(splits)]


def _subject_folds(manifest: pd.DataFrame, settings: SplitSettings, dataset_name: str) -> list[Fold]:
    """Split by subject (PI): leave one subject out, or k folds of whole subjects."""
    if not has_subject_ids(manifest):
        without = int(manifest["subject"].isna().sum()) if "subject" in manifest.columns else len(manifest)
        if without == len(manifest):
            raise ValueError(f"{dataset_name} has no subject ids, so person-independent evaluation "
                             "is impossible; use PD")
        raise ValueError(f"{dataset_name} has {without} of {len(manifest)} rows without a subject id, so "
                         "person-independent evaluation is impossible; fix the subject ids or use PD")

    groups = manifest["subject"].astype(str).to_numpy()
    subjects = np.unique(groups)

    if settings.pi_scheme is PiScheme.LOSO:
        if len(subjects) < 2:
            raise ValueError(f"leave-one-subject-out needs at least 2 subjects, {dataset_name} has {len(subjects)}")
        splits = list(LeaveOneGroupOut().split(np.zeros(len(manifest)), groups=groups))
        names = _unique_names(f"subject-{_safe_name(groups[test[0]])}" for _, test in splits)
        return [_fold(manifest, name, train, test) for name, (train, test) in zip(names, splits)]

    if settings.folds == 1:
        if len(subjects) < 2:
            raise ValueError(f"a subject hold-out needs at least 2 subjects, {dataset_name} has {len(subjects)}")
        splitter = GroupShuffleSplit(n_splits=1, test_size=settings.test_fraction, random_state=settings.seed)
        train, test = next(splitter.split(np.zeros(len(manifest)), groups=groups))
        return [_fold(manifest, "holdout", train, test)]

    _check_fold_count(settings.folds, len(subjects), "subjects")
    splitter = StratifiedGroupKFold(n_splits=settings.folds, shuffle=True, random_state=settings.seed)
    splits = splitter.split(np.zeros(len(manifest)), manifest["label"].astype(str).to_numpy(), groups)
    return [_fold(manifest, _fold_name(i), train, test) for i, (train, test) in enumerate(splits)]


def leaky_row_folds(manifest: pd.DataFrame, settings: SplitSettings) -> list[Fold]:
    """Split single rows, ignoring source photographs: the leaky split after augmentation.

    Masked copies of one photograph land on both sides, so the model is tested on faces it
    trained on with another mask. This split exists only to show how much that inflates
    accuracy; never report its results as a model's accuracy.
    """
    labels = manifest["label"].astype(str).to_numpy()
    rows = np.arange(len(manifest))

    if settings.folds == 1:
        train, test = _stratified_holdout(rows, labels, settings, "rows")
        return [_fold(manifest, "leaky-holdout", np.sort(train), np.sort(test))]

    _check_fold_count(settings.folds, len(manifest), "rows")
    splitter = StratifiedKFold(n_splits=settings.folds, shuffle=True, random_state=settings.seed)
    splits = splitter.split(np.zeros(len(manifest)), labels)
    return [_fold(manifest, f"leaky-{_fold_name(i)}", train, test) for i, (train, test) in enumerate(splits)]


def _stratified_holdout(items: np.ndarray, labels: np.ndarray, settings: SplitSettings,
                        what: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        train, test = train_test_split(items, test_size=settings.test_fraction, stratify=labels,
                                       random_state=settings.seed)
    except ValueError as error:
        raise ValueError(f"cannot make a stratified hold-out of {len(items)} {what} with "
                         f"test_fraction={settings.test_fraction}: {error}") from error
    return train, test


def _check_fold_count(folds: int, groups: int, what: str) -> None:
    if folds > groups:
        raise ValueError(f"cannot have folds={folds} greater than the number of {what}: {groups}")


def _fold_name(position: int) -> str:
    return f"fold-{position + 1:02d}"


def _safe_name(text: str) -> str:
    """Return text usable in a file name (fold names name checkpoint files)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "unnamed"


def _unique_names(names: Iterable[str]) -> list[str]:
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        count = seen.get(name, 0)
        seen[name] = count + 1
        unique.append(name if count == 0 else f"{name}-{count + 1}")
    return unique


def _fold(manifest: pd.DataFrame, name: str, train: np.ndarray, test: np.ndarray) -> Fold:
    subjects = manifest["subject"].iloc[test].dropna().astype(str).unique()
    return Fold(name=name, train_index=np.asarray(train, dtype=np.int64),
                test_index=np.asarray(test, dtype=np.int64), test_subjects=tuple(sorted(subjects)))


def _fold_from_mask(manifest: pd.DataFrame, name: str, test_mask: np.ndarray) -> Fold:
    return _fold(manifest, name, np.flatnonzero(~test_mask), np.flatnonzero(test_mask))


def _filter_training_side(manifest: pd.DataFrame, fold: Fold, settings: SplitSettings) -> Fold:
    """Keep only the allowed mask types on the training side; the test side is unchanged."""
    allowed = settings.training_mask_values()
    keep = manifest["mask_type"].iloc[fold.train_index].astype(str).isin(allowed).to_numpy()
    train_index = fold.train_index[keep]
    if len(train_index) == 0:
        raise ValueError(f"fold {fold.name} has no training images with mask types {sorted(allowed)}; "
                         "the prepared set lacks them, so prepare it with those mask types or train on others")
    return Fold(name=fold.name, train_index=train_index, test_index=fold.test_index,
                test_subjects=fold.test_subjects)


# ---------------------------------------------------------------------------------------------
# Leakage checks


def shared_source_photographs(manifest: pd.DataFrame, fold: Fold) -> set[str]:
    """Return the source photographs that have copies on both sides of the fold."""
    sources = manifest["source_id"].astype(str)
    return set(sources.iloc[fold.train_index]) & set(sources.iloc[fold.test_index])


def shared_subjects(manifest: pd.DataFrame, fold: Fold) -> set[str]:
    """Return the subjects that appear on both sides of the fold (rows without ids excluded)."""
    subjects = manifest["subject"]
    return (set(subjects.iloc[fold.train_index].dropna().astype(str))
            & set(subjects.iloc[fold.test_index].dropna().astype(str)))


def assert_no_leakage(manifest: pd.DataFrame, fold: Fold, protocol: Protocol) -> None:
    """Raise LeakageError when a PD or PI fold shares photographs, or a PI fold shares subjects.

    The LEAKY protocol shares photographs by design, so it is not checked.
    """
    protocol = Protocol(protocol)
    if protocol is Protocol.LEAKY:
        return

    photographs = shared_source_photographs(manifest, fold)
    if photographs:
        examples = sorted(photographs)[:EXAMPLES_SHOWN]
        raise LeakageError(f"fold {fold.name}: {len(photographs)} source photograph(s) have copies in both "
                           f"training and test data, e.g. {examples}")

    if protocol is Protocol.PI:
        subjects = shared_subjects(manifest, fold)
        if subjects:
            examples = sorted(subjects)[:EXAMPLES_SHOWN]
            raise LeakageError(f"fold {fold.name}: {len(subjects)} subject(s) appear in both training and "
                               f"test data, e.g. {examples}")
