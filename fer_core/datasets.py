"""Load face data sets of several layouts into one table of images, labels and subjects.

Every loader returns a `DatasetTable`: one row per usable image with the columns
`path`, `subject`, `label` (a `constants.Emotion` value) and `source_id`, plus any
metadata the data set provides. Files that cannot be used never stop loading; each one
becomes a `FileIssue` that says why it was skipped.

Where to get the data sets (this project ships none of their images):

- Face Research Lab London Set (102 adults, neutral and smiling; CC BY 4.0):
  `fetch_london` downloads the originals from the public GitHub repository
  `debruine/webmorphR.stim` and checks each file's SHA-256. Credit: DeBruine, L., &
  Jones, B. (2017). Face Research Lab London Set. figshare.
  doi:10.6084/m9.figshare.5047666.v5.
- JAFFE (213 greyscale TIFFs of 10 Japanese women, 7 expressions): request access from
  its authors (Lyons, Kamachi and Gyoba) through Zenodo, doi:10.5281/zenodo.3451524. It
  may be used for non-commercial research with a citation and may not be redistributed,
  so keep it outside this repository and register its folder.
- UIBVFED (20 virtual characters, 32 expressions grouped into 6 emotions and neutral):
  download it from its authors' site, http://ugivia.uib.es/uibvfed/ (Oliver and
  Amengual Alcover, PLoS ONE 15(4): e0231266, 2020), and register its folder.
- FER2013 (`fer2013.csv`): from the Kaggle challenge "Challenges in Representation
  Learning: Facial Expression Recognition Challenge".
- Any folder laid out as `<root>/<emotion>/<image file>`.
"""

from __future__ import annotations

import csv
import enum
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np
import pandas as pd

from fer_core import paths
from fer_core.constants import Emotion
from fer_core.images import (
    UNSUPPORTED_IMAGE_SUFFIXES,
    ImageReadError,
    check_image_file,
    is_image_file,
    read_image,
    write_bytes_atomic,
    write_image_atomic,
)

logger = logging.getLogger(__name__)

PACKAGE_DATA = Path(__file__).resolve().parent / "data"
LONDON_ENV = "FER_STUDIO_LONDON_DIR"
REGISTRY_FILE = "datasets.json"

LONDON_REPOSITORY = "debruine/webmorphR.stim"
LONDON_COMMIT = "fa8b78fda2d659bb74ce62fcd99c4407551d2a77"
LONDON_URL_TEMPLATE = "https://raw.githubusercontent.com/{repository}/{commit}/{path}"
LONDON_CREDIT = (
    "Face Research Lab London Set: DeBruine, L., & Jones, B. (2017). figshare. "
    "doi:10.6084/m9.figshare.5047666.v5. License: CC BY 4.0."
)
LONDON_INFO_FILE = "london_info.csv"
LONDON_CHECKSUM_FILE = "ORIGINALS.sha256"
LONDON_SOURCE_FOLDERS = MappingProxyType({"inst/neutral_front": "neutral", "inst/smiling_front": "smiling"})
DOWNLOAD_TIMEOUT_SECONDS = 60.0

FER2013_FILE = "fer2013.csv"
FER2013_SIDE = 48

# JPEGs are validated at a reduced libjpeg scale that keeps at least this many pixels per side.
VALIDATION_DRAFT_SIZE = 128

# Text columns use pandas' NA-aware string type with Python storage, so a missing subject
# reads <NA> and results do not depend on whether pyarrow is installed.
_TEXT = pd.StringDtype("python")

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
JAFFE_NAME_PATTERN = re.compile(
    r"^(?P<subject>[A-Za-z]{2})\.(?P<code>[A-Za-z]{2})(?P<number>\d+)\.(?P<index>\d+)$"
)
LONDON_NAME_PATTERN = re.compile(r"^(?P<subject>\d{3})_(?P<pose>\d{2})$")
_FILE_PREFIX_PATTERN = re.compile(r"^(?P<prefix>[A-Za-z0-9]+)[_\-. ]")


class DatasetKind(str, enum.Enum):
    """Layout of a data set on disk."""

    LONDON = "london"
    JAFFE = "jaffe"
    UIBVFED = "uibvfed"
    FER2013 = "fer2013"
    FOLDER = "folder"


def _emotion_map(pairs: Mapping[str, Emotion]) -> Mapping[str, str]:
    return MappingProxyType({raw: emotion.value for raw, emotion in pairs.items()})


JAFFE_LABELS = _emotion_map(
    {
        "AN": Emotion.ANGRY,
        "DI": Emotion.DISGUST,
        "FE": Emotion.FEAR,
        "HA": Emotion.HAPPY,
        "NE": Emotion.NEUTRAL,
        "SA": Emotion.SAD,
        "SU": Emotion.SURPRISE,
    }
)
UIBVFED_LABELS = _emotion_map(
    {
        "ANGER": Emotion.ANGRY,
        "DISGUST": Emotion.DISGUST,
        "FEAR": Emotion.FEAR,
        "JOY": Emotion.HAPPY,
        "NEUTRAL": Emotion.NEUTRAL,
        "SADNESS": Emotion.SAD,
        "SURPRISE": Emotion.SURPRISE,
    }
)
# FER2013's emotion column: 0 angry, 1 disgust, 2 fear, 3 happy, 4 sad, 5 surprise, 6 neutral.
FER2013_LABELS = _emotion_map(
    {
        "0": Emotion.ANGRY,
        "1": Emotion.DISGUST,
        "2": Emotion.FEAR,
        "3": Emotion.HAPPY,
        "4": Emotion.SAD,
        "5": Emotion.SURPRISE,
        "6": Emotion.NEUTRAL,
    }
)
LONDON_LABELS = _emotion_map({"neutral": Emotion.NEUTRAL, "smiling": Emotion.HAPPY})
# Folder names that `<root>/<emotion>/<file>` data sets may use, matched case-insensitively.
FOLDER_SYNONYMS = _emotion_map(
    {
        "happy": Emotion.HAPPY,
        "happiness": Emotion.HAPPY,
        "joy": Emotion.HAPPY,
        "sad": Emotion.SAD,
        "sadness": Emotion.SAD,
        "angry": Emotion.ANGRY,
        "anger": Emotion.ANGRY,
        "surprise": Emotion.SURPRISE,
        "surprised": Emotion.SURPRISE,
        "fear": Emotion.FEAR,
        "fearful": Emotion.FEAR,
        "disgust": Emotion.DISGUST,
        "disgusted": Emotion.DISGUST,
        "neutral": Emotion.NEUTRAL,
    }
)
DEFAULT_LABELS: Mapping[DatasetKind, Mapping[str, str]] = MappingProxyType(
    {
        DatasetKind.LONDON: LONDON_LABELS,
        DatasetKind.JAFFE: JAFFE_LABELS,
        DatasetKind.UIBVFED: UIBVFED_LABELS,
        DatasetKind.FER2013: FER2013_LABELS,
        DatasetKind.FOLDER: FOLDER_SYNONYMS,
    }
)

DATASET_LAYOUTS: Mapping[DatasetKind, str] = MappingProxyType(
    {
        DatasetKind.LONDON: "<root>/neutral/NNN_03.jpg and <root>/smiling/NNN_08.jpg, with london_info.csv",
        DatasetKind.JAFFE: "image files named <subject>.<expression><n>.<index>.<ext>, such as KA.AN1.39.tiff",
        DatasetKind.UIBVFED: (
            "expression folders ANGER, DISGUST, FEAR, JOY, NEUTRAL, SADNESS and SURPRISE, "
            "with one folder per character above or below them"
        ),
        DatasetKind.FER2013: (
            "fer2013.csv with the columns emotion, pixels and Usage (the root may be the CSV or its folder)"
        ),
        DatasetKind.FOLDER: "<root>/<emotion>/<image file>, such as <root>/happy/001.jpg",
    }
)


class IssueReason(str, enum.Enum):
    """First words of a FileIssue reason for problems found by the loaders; image problems use ImageProblem."""

    BAD_NAME = "bad file name"
    UNKNOWN_LABEL = "unknown label"
    NO_LABEL_FOLDER = "no emotion folder"
    NO_SUBJECT = "no subject"
    BAD_ROW = "bad row"
    DUPLICATE = "duplicate"
    DUPLICATE_SOURCE_ID = "duplicate source id"
    NOT_IN_MANIFEST = "not in manifest"
    OUTSIDE_ROOT = "outside the data set folder"
    UNREADABLE_FOLDER = "unreadable folder"
    UNSUPPORTED_FORMAT = "unsupported image format"


class DatasetError(ValueError):
    """Error raised when a data set as a whole cannot be loaded, registered or fetched."""

    def __init__(self, message: str, issues: Iterable[FileIssue] = ()) -> None:
        super().__init__(message)
        self.issues = list(issues)


@dataclass(frozen=True)
class FileIssue:
    """A file (or CSV row) left out of a data set table, and why."""

    path: str
    reason: str


def _issue(path: Path | str, reason: IssueReason, detail: str) -> FileIssue:
    return FileIssue(path=printable_path(path), reason=f"{reason.value}: {detail}")


def printable_path(path: Path | str) -> str:
    """Return the path as text that any UTF-8 writer accepts; bytes that are not UTF-8 read as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _is_utf8(path: Path | str) -> bool:
    """Return True when the path's name bytes are valid UTF-8, so it can be written to CSV and JSON files."""
    return printable_path(path) == str(path)


@dataclass(frozen=True)
class DatasetSpec:
    """Location, layout and label mapping of one data set.

    `subject_pattern` is a regular expression with a named group `subject`, searched in
    each file name (FOLDER and UIBVFED). `manifest` is a CSV with the columns `path`
    (relative to `root`), `subject` and optionally `label`, for FOLDER only. A relative
    manifest path is taken relative to `root`. `label_map` adds or replaces entries of
    the default map from raw codes or folder names to `Emotion` values. An empty `name`
    counts as no name.
    """

    kind: DatasetKind
    root: Path
    name: str | None = None
    subject_pattern: str | None = None
    manifest: Path | None = None
    label_map: Mapping[str, str] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", _parse_kind(self.kind))
        object.__setattr__(self, "name", (self.name or "").strip() or None)
        object.__setattr__(self, "root", Path(self.root).expanduser())
        if self.manifest is not None:
            object.__setattr__(self, "manifest", Path(self.manifest).expanduser())
        if self.label_map is not None:
            object.__setattr__(self, "label_map", _canonical_label_map(self.label_map))

        if self.name is not None and not _NAME_PATTERN.match(self.name):
            raise DatasetError(
                f"Invalid data set name {self.name!r}: use 1 to 64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit."
            )
        self._check_subject_options()

    def _check_subject_options(self) -> None:
        if self.subject_pattern is not None:
            if self.kind not in (DatasetKind.FOLDER, DatasetKind.UIBVFED):
                raise DatasetError(
                    f"subject_pattern applies to folder and uibvfed data sets, not {self.kind.value}; remove it."
                )
            _compile_subject_pattern(self.subject_pattern)
        if self.manifest is not None and self.kind is not DatasetKind.FOLDER:
            raise DatasetError(f"manifest applies to folder data sets, not {self.kind.value}; remove it.")
        if self.manifest is not None and self.subject_pattern is not None:
            raise DatasetError("Pass either subject_pattern or manifest, not both: each one sets the subjects.")

    @property
    def manifest_path(self) -> Path | None:
        """Manifest location, resolved against `root` when relative."""
        if self.manifest is None or self.manifest.is_absolute():
            return self.manifest
        return self.root / self.manifest

    def resolved_name(self) -> str:
        """Return `name`, or a file-system-safe name derived from the kind and the root folder."""
        if self.name:
            return self.name
        if self.kind is DatasetKind.LONDON:
            return DatasetKind.LONDON.value

        base = self.root.parent.name if self.root.suffix.lower() == ".csv" else self.root.name
        slug = re.sub(r"[^a-z0-9._-]+", "-", base.lower()).strip("-._")[:48]
        if not slug:
            return self.kind.value
        if self.kind is DatasetKind.FOLDER or self.kind.value in slug:
            return slug
        return f"{self.kind.value}-{slug}"

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dictionary that `from_dict` turns back into an equal spec."""
        return {
            "kind": self.kind.value,
            "root": str(self.root),
            "name": self.name,
            "subject_pattern": self.subject_pattern,
            "manifest": None if self.manifest is None else str(self.manifest),
            "label_map": None if self.label_map is None else dict(self.label_map),
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DatasetSpec:
        """Build a spec from `to_dict` output; raise DatasetError on missing or invalid fields."""
        missing = {"kind", "root"} - set(values)
        if missing:
            raise DatasetError(f"Data set entry {dict(values)} lacks the fields {sorted(missing)}.")
        manifest = values.get("manifest")
        return cls(
            kind=values["kind"],
            root=Path(values["root"]),
            name=values.get("name"),
            subject_pattern=values.get("subject_pattern"),
            manifest=None if manifest is None else Path(manifest),
            label_map=values.get("label_map"),
        )


def _parse_kind(kind: DatasetKind | str) -> DatasetKind:
    try:
        return DatasetKind(kind)
    except ValueError:
        known = ", ".join(member.value for member in DatasetKind)
        raise DatasetError(f"Unknown data set kind {kind!r}; expected one of {known}.") from None


def _canonical_label_map(label_map: Mapping[str, str]) -> dict[str, str]:
    """Check that every target is an Emotion value and return a plain copy."""
    canonical = {}
    for raw, target in label_map.items():
        try:
            canonical[str(raw)] = Emotion(str.lower(target)).value
        except (ValueError, TypeError):
            known = ", ".join(emotion.value for emotion in Emotion)
            raise DatasetError(
                f"label_map maps {raw!r} to {target!r}, which is not an emotion; use one of {known}."
            ) from None
    return canonical


def _compile_subject_pattern(pattern: str) -> re.Pattern[str]:
    try:
        compiled = re.compile(pattern)
    except re.error as error:
        raise DatasetError(f"Invalid subject_pattern {pattern!r}: {error}.") from None
    if "subject" not in compiled.groupindex:
        raise DatasetError(
            f"subject_pattern {pattern!r} needs a named group (?P<subject>...) that captures the subject id."
        )
    return compiled


@dataclass
class DatasetTable:
    """One row per usable source image, plus the files that were skipped and why."""

    name: str
    kind: DatasetKind
    root: Path
    frame: pd.DataFrame
    issues: list[FileIssue]
    label_map: dict[str, str]
    has_subjects: bool

    def fingerprint(self) -> str:
        """Hash each file's relative path, size, mtime_ns, label and subject into a SHA-256 hex digest.

        It is a cheap data hash for provenance: it reads no pixels, so it changes when a
        file is touched even if its content does not.
        """
        rows = []
        for path_text, label, subject, source_id in zip(
            self.frame["path"], self.frame["label"], self.frame["subject"], self.frame["source_id"]
        ):
            path = Path(path_text)
            try:
                stat = path.stat()
            except FileNotFoundError:
                raise DatasetError(
                    f"{path} was removed after data set {self.name} was loaded; load the data set again."
                ) from None
            subject_text = "" if pd.isna(subject) else str(subject)
            rows.append((self._relative_name(path, source_id), stat.st_size, stat.st_mtime_ns, label, subject_text))

        digest = hashlib.sha256()
        for row in sorted(rows):
            digest.update(("\t".join(str(value) for value in row) + "\n").encode("utf-8"))
        return digest.hexdigest()

    def _relative_name(self, path: Path, source_id: str) -> str:
        # FER2013 images live in the artifacts cache, outside the root; their source id is stable.
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return f"{source_id}{path.suffix}"

    def counts_by_label(self) -> pd.Series:
        """Return the number of images per label, sorted by label."""
        return self.frame["label"].value_counts().sort_index().astype("int64")

    def counts_by_subject(self) -> pd.Series:
        """Return the number of images per subject, sorted by subject; empty when there are no subjects."""
        return self.frame["subject"].value_counts(dropna=True).sort_index().astype("int64")


@dataclass
class _Candidate:
    path: Path
    label: str
    subject: str | None
    source_id: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Collection:
    candidates: list[_Candidate]
    issues: list[FileIssue]
    label_map: dict[str, str]
    has_subjects: bool
    extra_columns: dict[str, Any] = field(default_factory=dict)  # column name -> pandas dtype
    validated: bool = False  # True when the loader already checked every image itself


# --- loading ---------------------------------------------------------------------------


def load_dataset(
    spec: DatasetSpec, *, check_images: bool = True, artifacts_root: Path | None = None
) -> DatasetTable:
    """Load a data set into a DatasetTable, skipping unusable files as FileIssues.

    With `check_images` every image is decoded once (JPEGs at reduced scale), so
    unreadable, truncated and non-image files and exact pixel duplicates are reported.
    Without it only missing and zero-byte files are caught. The FER2013 image cache goes
    under `artifacts_root`, by default `fer_core.paths.artifacts_root()`.
    """
    root = spec.root.resolve()
    _check_root(root, spec.kind)

    label_map = dict(DEFAULT_LABELS[spec.kind])
    label_map.update(spec.label_map or {})
    collection = _collect(spec, root, label_map, artifacts_root or paths.artifacts_root())

    candidates = _drop_duplicate_source_ids(collection.candidates, collection.issues)
    if check_images and not collection.validated:
        candidates = _validate_images(candidates, collection.issues)
    elif not collection.validated:
        candidates = _check_files(candidates, collection.issues)

    if not candidates:
        first_issues = "; ".join(f"{issue.path}: {issue.reason}" for issue in collection.issues[:3])
        skipped = f"{len(collection.issues)} files skipped" + (f": {first_issues}" if first_issues else "")
        raise DatasetError(
            f"No usable images in {root} ({skipped}). "
            f"Expected {DATASET_LAYOUTS[spec.kind]}.",
            collection.issues,
        )

    table = DatasetTable(
        name=spec.resolved_name(),
        kind=spec.kind,
        root=root,
        frame=_build_frame(candidates, collection.extra_columns),
        issues=collection.issues,
        label_map=collection.label_map,
        has_subjects=collection.has_subjects,
    )
    logger.info(
        "Loaded %s data set %s from %s: %d images, %d subjects, %d skipped files",
        spec.kind.value,
        table.name,
        root,
        len(table.frame),
        table.frame["subject"].nunique(dropna=True),
        len(table.issues),
    )
    return table


def _check_root(root: Path, kind: DatasetKind) -> None:
    """Raise DatasetError when the root is missing, a file where a folder belongs, or not UTF-8."""
    if not root.exists():
        raise DatasetError(f"Data set folder not found: {root}. Expected {DATASET_LAYOUTS[kind]}.")
    if root.is_file() and kind is not DatasetKind.FER2013:
        raise DatasetError(
            f"{root} is a file, but a {kind.value} data set is a folder; give its folder. "
            f"Expected {DATASET_LAYOUTS[kind]}."
        )
    if not _is_utf8(root):
        raise DatasetError(
            f"The path {printable_path(root)} is not valid UTF-8, so results cannot name its files; "
            "rename the folder."
        )


def _collect(spec: DatasetSpec, root: Path, label_map: dict[str, str], artifacts_root: Path) -> _Collection:
    if spec.kind is DatasetKind.LONDON:
        return _collect_london(root, label_map)
    if spec.kind is DatasetKind.JAFFE:
        return _collect_jaffe(root, label_map)
    if spec.kind is DatasetKind.UIBVFED:
        return _collect_uibvfed(spec, root, label_map)
    if spec.kind is DatasetKind.FER2013:
        return _collect_fer2013(root, label_map, artifacts_root)
    return _collect_folder(spec, root, label_map)


def _image_files(root: Path, issues: list[FileIssue]) -> list[Path]:
    """List image files under root in sorted order, skipping hidden files and folders.

    Folders that cannot be listed, image names that are not valid UTF-8 and image formats
    that Pillow cannot read are added to `issues`. Other files (notes, tables) are passed over.
    """

    def report_unreadable(error: OSError) -> None:
        detail = f"{error.strerror or error}; its images are left out. Make the folder readable for this user"
        issues.append(_issue(error.filename or root, IssueReason.UNREADABLE_FOLDER, detail))

    files = []
    for folder, subfolders, names in os.walk(root, onerror=report_unreadable):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        for name in sorted(names):
            path = Path(folder) / name
            if name.startswith("."):
                continue
            if path.suffix.lower() in UNSUPPORTED_IMAGE_SUFFIXES:
                detail = f"Pillow cannot read {path.suffix} files; convert the image to PNG or JPEG"
                issues.append(_issue(path, IssueReason.UNSUPPORTED_FORMAT, detail))
            elif not is_image_file(path):
                continue
            elif not _is_utf8(path):
                detail = "the name is not valid UTF-8, so results cannot name the file; rename it"
                issues.append(_issue(path, IssueReason.BAD_NAME, detail))
            else:
                files.append(path)
    return files


def _lookup(label_map: Mapping[str, str]) -> dict[str, str]:
    """Key a label map by casefolded raw label, so matching ignores case."""
    return {raw.casefold(): label for raw, label in label_map.items()}


def _collect_jaffe(root: Path, label_map: dict[str, str]) -> _Collection:
    lookup = _lookup(label_map)
    candidates, issues = [], []
    for path in _image_files(root, issues):
        match = JAFFE_NAME_PATTERN.match(path.stem)
        if match is None:
            issues.append(
                _issue(path, IssueReason.BAD_NAME, f"expected {DATASET_LAYOUTS[DatasetKind.JAFFE]}; rename the file")
            )
            continue

        code = match["code"].upper()
        label = lookup.get(code.casefold())
        if label is None:
            issues.append(
                _issue(
                    path,
                    IssueReason.UNKNOWN_LABEL,
                    f"expression code {code} is not one of {', '.join(sorted(label_map))}; "
                    "add it to label_map to use the file",
                )
            )
            continue
        candidates.append(_Candidate(path, label, match["subject"].upper(), path.stem))
    return _Collection(candidates, issues, label_map, has_subjects=True)


def _collect_uibvfed(spec: DatasetSpec, root: Path, label_map: dict[str, str]) -> _Collection:
    lookup = _lookup(label_map)
    pattern = None if spec.subject_pattern is None else _compile_subject_pattern(spec.subject_pattern)
    candidates, issues = [], []
    for path in _image_files(root, issues):
        relative = path.relative_to(root)
        folders = relative.parts[:-1]
        emotion_positions = [index for index, folder in enumerate(folders) if folder.casefold() in lookup]
        labels = {lookup[folders[index].casefold()] for index in emotion_positions}
        if len(labels) != 1:
            found = "none" if not labels else ", ".join(sorted(labels))
            issues.append(
                _issue(
                    path,
                    IssueReason.NO_LABEL_FOLDER,
                    f"expected exactly one expression folder ({', '.join(label_map)}) in {relative.parent}, "
                    f"found {found}; move the file into one",
                )
            )
            continue

        others = [folder for index, folder in enumerate(folders) if index not in emotion_positions]
        subject = _uibvfed_subject(path, others, pattern, lookup)
        if subject is None:
            issues.append(
                _issue(
                    path,
                    IssueReason.NO_SUBJECT,
                    "cannot tell the character: put the file in a character folder, start its name with "
                    "the character id and '_', or pass subject_pattern",
                )
            )
            continue
        candidates.append(_Candidate(path, labels.pop(), subject, relative.with_suffix("").as_posix()))
    return _Collection(candidates, issues, label_map, has_subjects=True)


def _uibvfed_subject(
    path: Path, other_folders: list[str], pattern: re.Pattern[str] | None, lookup: Mapping[str, str]
) -> str | None:
    """Take the character id from the pattern, the one non-expression folder or the file-name prefix."""
    if pattern is not None:
        match = pattern.search(path.name)
        return (match["subject"] or None) if match else None
    if len(other_folders) == 1:
        return other_folders[0]

    # The stem, because the dot before the extension would make any name a prefix.
    match = _FILE_PREFIX_PATTERN.match(path.stem)
    if match is None or match["prefix"].casefold() in lookup:
        return None
    return match["prefix"]


def _collect_folder(spec: DatasetSpec, root: Path, label_map: dict[str, str]) -> _Collection:
    if spec.manifest is not None:
        return _collect_folder_manifest(spec, root, label_map)

    lookup = _lookup(label_map)
    pattern = None if spec.subject_pattern is None else _compile_subject_pattern(spec.subject_pattern)
    candidates, issues = [], []
    unknown_folders: set[str] = set()
    used_labels: dict[str, str] = {}
    for path in _image_files(root, issues):
        relative = path.relative_to(root)
        if len(relative.parts) == 1:
            issues.append(
                _issue(path, IssueReason.NO_LABEL_FOLDER, "the file is not inside an emotion folder; move it into one")
            )
            continue

        folder = relative.parts[0]
        label = lookup.get(folder.casefold())
        if label is None:
            unknown_folders.add(folder)
            continue
        used_labels[folder] = label

        subject = None
        if pattern is not None:
            match = pattern.search(path.name)
            if match is None or not match["subject"]:
                problem = "does not match" if match is None else "matches with an empty subject group of"
                issues.append(
                    _issue(
                        path,
                        IssueReason.NO_SUBJECT,
                        f"the file name {problem} subject_pattern {pattern.pattern!r}; rename it or "
                        "change the pattern",
                    )
                )
                continue
            subject = match["subject"]
        candidates.append(_Candidate(path, label, subject, relative.with_suffix("").as_posix()))

    _raise_for_unknown_labels(root, unknown_folders, "folders")
    return _Collection(candidates, issues, used_labels, has_subjects=pattern is not None)


def _raise_for_unknown_labels(root: Path, unknown: set[str], label_source: str) -> None:
    if not unknown:
        return
    known = ", ".join(sorted(FOLDER_SYNONYMS))
    raise DatasetError(
        f"Unknown emotion {label_source} in {root}: {', '.join(sorted(unknown))}. Known names are {known}; "
        "pass label_map to map the others to emotions, for example {'contempt': 'disgust'}."
    )


def _collect_folder_manifest(spec: DatasetSpec, root: Path, label_map: dict[str, str]) -> _Collection:
    manifest = spec.manifest_path
    lookup = _lookup(label_map)
    candidates, issues = [], []
    unknown: set[str] = set()
    used_labels: dict[str, str] = {}
    listed: set[Path] = set()

    for line, row, problem in _read_manifest(manifest):
        if row is None:
            issues.append(_issue(manifest, IssueReason.BAD_ROW, f"line {line}: {problem}; fix or delete the line"))
            continue
        if not row["path"].strip():
            issues.append(_issue(manifest, IssueReason.BAD_ROW, f"line {line}: the path is empty; fill it in"))
            continue
        relative = _manifest_relative_path(root, row["path"])
        if relative is None:
            detail = (
                f"line {line} of {manifest} names {row['path']!r}, which is not a file inside {root}; "
                "copy the file into the data set folder and list it relative to that folder"
            )
            issues.append(_issue(manifest, IssueReason.OUTSIDE_ROOT, detail))
            continue
        path = (root / relative).resolve()
        listed.add(path)
        raw = row.get("label") or (relative.parts[0] if len(relative.parts) > 1 else "")
        if not raw:
            detail = f"line {line} of {manifest} gives no label and no emotion folder"
            issues.append(_issue(path, IssueReason.NO_LABEL_FOLDER, detail))
            continue
        label = lookup.get(raw.casefold())
        if label is None:
            unknown.add(raw)
            continue
        used_labels[raw] = label

        subject = row["subject"].strip()
        if not subject:
            issues.append(_issue(path, IssueReason.NO_SUBJECT, f"line {line} of {manifest} has an empty subject"))
            continue
        candidates.append(_Candidate(path, label, subject, relative.with_suffix("").as_posix()))

    _raise_for_unknown_labels(root, unknown, "labels in the manifest")
    for path in _image_files(root, issues):
        if path.resolve() not in listed:
            issues.append(_issue(path, IssueReason.NOT_IN_MANIFEST, f"add it to {manifest} to use it"))
    return _Collection(candidates, issues, used_labels, has_subjects=True)


def _manifest_relative_path(root: Path, text: str) -> Path | None:
    """Return a manifest path relative to root, or None when it leads outside root or to root itself.

    The check is on the written path, so a symbolic link inside root that points elsewhere
    is still accepted.
    """
    normalised = Path(os.path.normpath(root / text.strip()))
    try:
        relative = normalised.relative_to(root)
    except ValueError:
        return None
    return relative if relative.parts else None


MANIFEST_LAYOUT = "a CSV with the columns path (relative to the data set folder), subject and optionally label"


def _read_manifest(manifest: Path) -> Iterator[tuple[int, dict[str, str] | None, str]]:
    if not manifest.is_file():
        raise DatasetError(f"Manifest not found: {manifest}. Expected {MANIFEST_LAYOUT}.")
    return _csv_rows(manifest, {"path", "subject"}, MANIFEST_LAYOUT)


def _csv_rows(path: Path, required: set[str], expected: str) -> Iterator[tuple[int, dict[str, str] | None, str]]:
    """Yield (line number, row, problem) for each non-blank data line of a UTF-8 CSV file.

    A row is a dict keyed by the header. A line with the wrong number of fields yields None
    and a problem text instead, so one bad line never stops loading. Raises DatasetError
    when the file is empty, is not UTF-8 text, is not CSV or lacks a required column.
    """
    reader = None
    try:
        with path.open(newline="", encoding="utf-8-sig") as stream:
            reader = csv.reader(stream)
            header = [name.strip() for name in next(reader, [])]
            if not any(header):
                raise DatasetError(f"{path} is empty. Expected {expected}.")
            missing = required - set(header)
            if missing:
                raise DatasetError(
                    f"{path} lacks the columns {sorted(missing)}; found {header}. Expected {expected}."
                )

            for fields in reader:
                if not any(field.strip() for field in fields):
                    continue
                if len(fields) != len(header):
                    problem = f"expected {len(header)} fields ({', '.join(header)}), found {len(fields)}"
                    yield reader.line_num, None, problem
                    continue
                yield reader.line_num, dict(zip(header, fields)), ""
    except UnicodeDecodeError as error:
        raise DatasetError(f"{path} is not UTF-8 text ({error}); save it as UTF-8. Expected {expected}.") from None
    except csv.Error as error:
        line = reader.line_num if reader is not None else 1
        raise DatasetError(f"{path} is not a readable CSV file (line {line}: {error}). Expected {expected}.") from None


def _collect_london(root: Path, label_map: dict[str, str]) -> _Collection:
    lookup = _lookup(label_map)
    info = _read_london_info(root)
    candidates, issues = [], []
    for path in _image_files(root, issues):
        relative = path.relative_to(root)
        folder = relative.parts[0] if len(relative.parts) == 2 else ""
        label = lookup.get(folder.casefold())
        if label is None:
            issues.append(
                _issue(path, IssueReason.NO_LABEL_FOLDER, f"expected {DATASET_LAYOUTS[DatasetKind.LONDON]}")
            )
            continue

        match = LONDON_NAME_PATTERN.match(path.stem)
        if match is None:
            issues.append(_issue(path, IssueReason.BAD_NAME, "expected NNN_PP.jpg, such as 001_03.jpg"))
            continue

        subject = match["subject"]
        extra = info.get(subject, {"age": pd.NA, "gender": pd.NA, "ethnicity": pd.NA})
        candidates.append(_Candidate(path, label, subject, f"{folder}/{path.stem}", dict(extra)))

    columns = {"age": "Int64", "gender": _TEXT, "ethnicity": _TEXT}
    return _Collection(candidates, issues, label_map, has_subjects=True, extra_columns=columns)


def _read_london_info(root: Path) -> dict[str, dict[str, Any]]:
    """Read age, gender and ethnicity per face id, from the root or else from the packaged copy."""
    path = root / LONDON_INFO_FILE
    if not path.is_file():
        logger.info("No %s in %s; using the copy shipped with fer_core", LONDON_INFO_FILE, root)
        path = PACKAGE_DATA / LONDON_INFO_FILE

    # The file writes unknown values as NA (two people have no recorded age).
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        if "face_id" not in frame.columns:
            raise ValueError(f"it lacks the column face_id; found {list(frame.columns)}")
    except ValueError as error:  # pandas' parser errors and UnicodeDecodeError are ValueErrors
        if path == PACKAGE_DATA / LONDON_INFO_FILE:
            raise
        logger.warning("Cannot read %s (%s); using the copy shipped with fer_core instead", path, error)
        return _read_london_info(PACKAGE_DATA)
    info = {}
    for row in frame.to_dict(orient="records"):
        age = pd.to_numeric(row.get("face_age", ""), errors="coerce")
        info[row["face_id"].zfill(3)] = {
            "age": pd.NA if pd.isna(age) else int(age),
            "gender": _known(row.get("face_gender")),
            "ethnicity": _known(row.get("face_eth")),
        }
    return info


def _known(value: str | None) -> Any:
    return pd.NA if value in (None, "", "NA") else value


def _collect_fer2013(root: Path, label_map: dict[str, str], artifacts_root: Path) -> _Collection:
    """Decode valid, distinct rows of fer2013.csv into cached 48x48 PNGs, written once and reused."""
    csv_path = root if root.is_file() else root / FER2013_FILE
    if not csv_path.is_file():
        raise DatasetError(f"{FER2013_FILE} not found at {csv_path}. Expected {DATASET_LAYOUTS[DatasetKind.FER2013]}.")

    rows = _csv_rows(csv_path, {"emotion", "pixels"}, DATASET_LAYOUTS[DatasetKind.FER2013])
    cache = Path(artifacts_root) / "datasets" / f"fer2013-{_file_sha256(csv_path)[:16]}"
    logger.info("Reading %s; images are cached in %s", csv_path, cache)
    lookup = _lookup(label_map)
    candidates, issues = [], []
    first_rows: dict[bytes, tuple[int, str]] = {}
    written = 0
    # `row` counts every non-blank data line, so cache names and source ids stay those of
    # earlier versions, which numbered the rows of pandas.read_csv.
    for row, (line, values, row_problem) in enumerate(rows):
        where = f"row {row} (line {line})"
        if values is None:
            issues.append(_issue(csv_path, IssueReason.BAD_ROW, f"{where}: {row_problem}; fix or delete the row"))
            continue
        emotion, pixels, usage = values["emotion"], values["pixels"], values.get("Usage", "")
        label = lookup.get(emotion.strip().casefold())
        if label is None:
            known = ", ".join(sorted(label_map))
            detail = f"{where}: emotion code {emotion!r} is not one of {known}; fix or delete the row"
            issues.append(_issue(csv_path, IssueReason.BAD_ROW, detail))
            continue
        image, problem = _parse_fer2013_pixels(pixels)
        if image is None:
            issues.append(_issue(csv_path, IssueReason.BAD_ROW, f"{where}: {problem}; fix or delete the row"))
            continue

        key = hashlib.sha256(image.tobytes()).digest()
        if key in first_rows:
            first_row, first_label = first_rows[key]
            detail = (
                f"{where} has the same pixels as row {first_row} ({cache / f'{first_row}.png'}), "
                f"labelled {first_label} there and {label} here; only the first copy is kept"
            )
            issues.append(_issue(csv_path, IssueReason.DUPLICATE, detail))
            continue
        first_rows[key] = (row, label)

        path = cache / f"{row}.png"
        if not (path.is_file() and path.stat().st_size > 0):
            write_image_atomic(path, image)
            written += 1
        candidates.append(_Candidate(path, label, None, f"row{row}", {"usage": usage or pd.NA}))

    logger.info("FER2013 cache %s: wrote %d images, reused %d", cache, written, len(candidates) - written)
    return _Collection(
        candidates, issues, label_map, has_subjects=False, extra_columns={"usage": _TEXT}, validated=True
    )


def _parse_fer2013_pixels(pixels: str) -> tuple[np.ndarray | None, str]:
    """Parse 2304 space-separated values 0..255 into a 48x48 uint8 image, or explain the problem."""
    values = pixels.split()
    expected = FER2013_SIDE * FER2013_SIDE
    if len(values) != expected:
        return None, f"expected {expected} pixel values ({FER2013_SIDE}x{FER2013_SIDE}), found {len(values)}"
    try:
        numbers = np.array(values, dtype=np.int64)
    except ValueError:
        return None, "the pixels column contains values that are not integers"
    if numbers.min() < 0 or numbers.max() > 255:
        return None, f"pixel values must be 0..255, found {numbers.min()}..{numbers.max()}"
    return numbers.astype(np.uint8).reshape(FER2013_SIDE, FER2013_SIDE), ""


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _drop_duplicate_source_ids(candidates: list[_Candidate], issues: list[FileIssue]) -> list[_Candidate]:
    """Keep the first file per source id; the same stem with two extensions would otherwise collide."""
    first_paths: dict[str, Path] = {}
    usable = []
    for candidate in candidates:
        first = first_paths.get(candidate.source_id)
        if first is not None:
            detail = f"{first} already has source id {candidate.source_id}; rename one of them"
            issues.append(_issue(candidate.path, IssueReason.DUPLICATE_SOURCE_ID, detail))
            continue
        first_paths[candidate.source_id] = candidate.path
        usable.append(candidate)
    return usable


def _check_files(candidates: list[_Candidate], issues: list[FileIssue]) -> list[_Candidate]:
    """Drop missing and zero-byte files without decoding anything."""
    usable = []
    for candidate in candidates:
        try:
            check_image_file(candidate.path)
        except ImageReadError as error:
            issues.append(FileIssue(str(candidate.path), error.describe()))
            continue
        usable.append(candidate)
    return usable


def _validate_images(candidates: list[_Candidate], issues: list[FileIssue]) -> list[_Candidate]:
    """Decode every image; drop unreadable ones and exact pixel duplicates of an earlier file."""
    first_by_digest: dict[bytes, _Candidate] = {}
    usable = []
    for candidate in candidates:
        try:
            loaded = read_image(candidate.path, draft_size=VALIDATION_DRAFT_SIZE)
        except ImageReadError as error:
            issues.append(FileIssue(str(candidate.path), error.describe()))
            continue

        digest = hashlib.sha256(repr(loaded.rgb.shape).encode() + loaded.rgb.tobytes()).digest()
        first = first_by_digest.get(digest)
        if first is not None and _same_pixels(first.path, candidate.path):
            detail = (
                f"same pixels as {first.path} (labelled {first.label} there and {candidate.label} here); "
                "only the first copy is kept"
            )
            issues.append(_issue(candidate.path, IssueReason.DUPLICATE, detail))
            continue
        first_by_digest.setdefault(digest, candidate)
        usable.append(candidate)
    return usable


def _same_pixels(first: Path, second: Path) -> bool:
    """Compare two images at full resolution, because validation may decode JPEGs at reduced scale."""
    try:
        return bool(np.array_equal(read_image(first).rgb, read_image(second).rgb))
    except ImageReadError as error:
        logger.warning("Cannot compare %s with %s at full resolution, keeping both: %s", first, second, error)
        return False


def _build_frame(candidates: list[_Candidate], extra_columns: Mapping[str, Any]) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "path": pd.array([str(candidate.path) for candidate in candidates], dtype=_TEXT),
            "subject": pd.array([candidate.subject for candidate in candidates], dtype=_TEXT),
            "label": pd.array([candidate.label for candidate in candidates], dtype=_TEXT),
            "source_id": pd.array([candidate.source_id for candidate in candidates], dtype=_TEXT),
        }
    )
    for column, dtype in extra_columns.items():
        values = [candidate.extra.get(column, pd.NA) for candidate in candidates]
        frame[column] = pd.array(values, dtype=dtype)
    return frame


# --- locations and the registry --------------------------------------------------------


def default_london_root(artifacts_root: Path | None = None) -> Path | None:
    """Find the London Set: $FER_STUDIO_LONDON_DIR, the shared data folder or artifacts/data/london_faces.

    The shared data folder is `../shared/data/london_faces` next to the repository that
    contains this package. Returns None when none of them contains the set.
    """
    configured = os.environ.get(LONDON_ENV)
    if configured:
        path = Path(configured).expanduser()
        if _looks_like_london(path):
            return path
        logger.warning("%s=%s does not contain neutral/ and smiling/ folders; looking elsewhere", LONDON_ENV, path)

    candidates = [
        paths.PROJECT_ROOT.parent / "shared" / "data" / "london_faces",
        (artifacts_root or paths.artifacts_root()) / "data" / "london_faces",
    ]
    for path in candidates:
        if _looks_like_london(path):
            return path
    return None


def _looks_like_london(path: Path) -> bool:
    return (path / "neutral").is_dir() and (path / "smiling").is_dir()


def available_datasets(config_root: Path) -> list[DatasetSpec]:
    """List the London Set (when found) and the data sets registered in config_root/datasets.json."""
    specs = []
    london = default_london_root(config_root)
    if london is not None:
        specs.append(DatasetSpec(DatasetKind.LONDON, london, name=DatasetKind.LONDON.value))
    specs.extend(_read_registry(Path(config_root)))
    return specs


def register_dataset(spec: DatasetSpec, config_root: Path, *, replace: bool = False) -> DatasetSpec:
    """Store a data set in config_root/datasets.json under its resolved name, and return the stored spec.

    Raises DatasetError when the root does not exist or the name is taken and `replace`
    is False. The root is stored as an absolute path.
    """
    root = spec.root.resolve()
    if not root.exists():
        raise DatasetError(f"Data set folder not found: {root}. Expected {DATASET_LAYOUTS[spec.kind]}.")
    stored = DatasetSpec(
        kind=spec.kind,
        root=root,
        name=spec.resolved_name(),
        subject_pattern=spec.subject_pattern,
        manifest=spec.manifest,
        label_map=spec.label_map,
    )
    if stored.name == DatasetKind.LONDON.value and spec.kind is not DatasetKind.LONDON:
        raise DatasetError("The name 'london' is reserved for the built-in London Set; choose another name.")

    config_root = Path(config_root)
    registered = _registry_entries(config_root)
    entries = [entry for entry in registered if _entry_name(entry) != stored.name]
    if len(entries) < len(registered) and not replace:
        raise DatasetError(
            f"A data set named {stored.name!r} is already registered in {config_root / REGISTRY_FILE}; "
            "choose another name or pass replace=True."
        )
    _write_registry(config_root, [*entries, stored.to_dict()])
    logger.info("Registered %s data set %s at %s", stored.kind.value, stored.name, stored.root)
    return stored


def unregister_dataset(name: str, config_root: Path) -> None:
    """Remove a data set from config_root/datasets.json; its files are left untouched."""
    config_root = Path(config_root)
    entries = _registry_entries(config_root)
    remaining = [entry for entry in entries if _entry_name(entry) != name]
    if len(remaining) == len(entries):
        known = ", ".join(str(_entry_name(entry)) for entry in entries) or "none"
        raise DatasetError(
            f"No data set named {name!r} is registered in {config_root / REGISTRY_FILE}; registered: {known}."
        )
    _write_registry(config_root, remaining)
    logger.info("Unregistered data set %s", name)


def _registry_entries(config_root: Path) -> list[Any]:
    """Return the raw entries of config_root/datasets.json, invalid ones included.

    Register and unregister write every other entry back unchanged, so an entry that this
    version cannot read is kept for the user to fix.
    """
    path = config_root / REGISTRY_FILE
    if not path.is_file():
        return []
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path} is not valid JSON ({error}); fix it or delete it to start a new list.") from None

    entries = document.get("datasets", []) if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise DatasetError(
            f'{path} does not contain an object {{"datasets": [...]}}; fix it or delete it to start a new list.'
        )
    return entries


def _entry_name(entry: Any) -> Any:
    return entry.get("name") if isinstance(entry, dict) else None


def _read_registry(config_root: Path) -> list[DatasetSpec]:
    path = config_root / REGISTRY_FILE
    specs = []
    for entry in _registry_entries(config_root):
        try:
            specs.append(DatasetSpec.from_dict(entry))
        except (DatasetError, TypeError, AttributeError) as error:
            logger.warning("Skipping invalid data set entry in %s: %s", path, error)
    return specs


def _write_registry(config_root: Path, entries: list[Any]) -> None:
    # NOTE: read-modify-write without a lock; two processes registering at once can lose one entry.
    document = {"datasets": entries}
    write_bytes_atomic(config_root / REGISTRY_FILE, (json.dumps(document, indent=2) + "\n").encode("utf-8"))


# --- downloading the London Set --------------------------------------------------------


class HttpResponse(Protocol):
    """Part of requests.Response that fetch_london uses."""

    content: bytes

    def raise_for_status(self) -> None: ...


class HttpSession(Protocol):
    """Part of requests.Session that fetch_london uses."""

    def get(self, url: str, timeout: float) -> HttpResponse: ...


def london_url(source_path: str) -> str:
    """Return the raw GitHub URL of one London Set file at the pinned commit."""
    return LONDON_URL_TEMPLATE.format(repository=LONDON_REPOSITORY, commit=LONDON_COMMIT, path=source_path)


def read_checksums(path: Path) -> dict[str, str]:
    """Parse a `sha256sum`-style file into {relative path: lowercase hex digest}."""
    checksums = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not re.fullmatch(r"[0-9a-fA-F]{64}", parts[0]):
            raise DatasetError(f"Line {number} of {path} is not '<sha256>  <path>': {line!r}.")
        checksums[parts[1].strip().lstrip("*")] = parts[0].lower()
    return checksums


def fetch_london(
    target: Path,
    *,
    session: HttpSession | None = None,
    checksums_file: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Download the London Set originals into target/neutral and target/smiling, checking each SHA-256.

    Files already present with the right hash are skipped, so an interrupted download
    can simply be run again. A file whose hash does not match is never written, and an
    existing file with other content is never overwritten. After trying every file,
    raises DatasetError listing those that failed. `checksums_file` defaults to the
    packaged ORIGINALS.sha256; `progress` receives (files done, files total).
    """
    target = Path(target)
    checksums = read_checksums(checksums_file or PACKAGE_DATA / LONDON_CHECKSUM_FILE)
    if session is None:
        import requests

        session = requests.Session()

    failures = []
    downloaded = 0
    for done, (source_path, expected) in enumerate(checksums.items(), start=1):
        try:
            downloaded += _fetch_london_file(session, source_path, expected, target / _london_destination(source_path))
        except (DatasetError, OSError) as error:
            failures.append(f"{source_path}: {error}")
        if progress is not None:
            progress(done, len(checksums))

    _write_london_extras(target)
    logger.info("London Set in %s: downloaded %d files, %d failed", target, downloaded, len(failures))
    if failures:
        raise DatasetError(
            f"{len(failures)} of {len(checksums)} London Set files failed: {'; '.join(failures[:3])}. "
            "Run fetch_london again; verified files are kept and skipped."
        )
    return target


def _london_destination(source_path: str) -> Path:
    folder, _, name = source_path.rpartition("/")
    if folder not in LONDON_SOURCE_FOLDERS:
        raise DatasetError(
            f"Unexpected London Set path {source_path!r}; expected files under {', '.join(LONDON_SOURCE_FOLDERS)}."
        )
    return Path(LONDON_SOURCE_FOLDERS[folder]) / name


def _fetch_london_file(session: HttpSession, source_path: str, expected: str, destination: Path) -> int:
    """Download one file unless already present; return 1 when it was downloaded, else 0."""
    if destination.exists():
        actual = _file_sha256(destination)
        if actual == expected:
            return 0
        raise DatasetError(
            f"{destination} exists with other content (SHA-256 {actual}, expected {expected}); "
            "it was not overwritten. Move it away or choose an empty target folder."
        )

    url = london_url(source_path)
    response = session.get(url, timeout=DOWNLOAD_TIMEOUT_SECONDS)
    response.raise_for_status()
    actual = hashlib.sha256(response.content).hexdigest()
    if actual != expected:
        raise DatasetError(f"SHA-256 mismatch for {url}: expected {expected}, received {actual}; nothing was written.")

    write_bytes_atomic(destination, response.content)
    return 1


def _write_london_extras(target: Path) -> None:
    """Copy the metadata table and write the credit line next to the images, unless present."""
    info = target / LONDON_INFO_FILE
    if not info.exists():
        write_bytes_atomic(info, (PACKAGE_DATA / LONDON_INFO_FILE).read_bytes())
    credit = target / "CREDIT.txt"
    if not credit.exists():
        write_bytes_atomic(credit, (LONDON_CREDIT + "\n").encode("utf-8"))
