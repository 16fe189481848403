"""Safe extraction of a data set uploaded as a zip archive.

The archive lands in `<datasets root>/<name>/` and never over an existing folder. Members
that would land outside that folder (absolute paths, `..` parts, symbolic links) reject the
whole archive. Only image files are extracted. Other files are listed as skipped, and the
total size is checked against the declared sizes and again while writing, because a zip
header can understate what a member expands to.
"""

from __future__ import annotations

import logging
import re
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from fer_core.images import is_image_file
from fer_core.paths import artifacts_root

logger = logging.getLogger(__name__)

MAX_EXTRACTED_BYTES = 2 * 1024**3
MAX_MEMBERS = 200_000
_CHUNK_BYTES = 1024 * 1024
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Files that archivers add on their own; they are dropped without being reported.
_ARCHIVER_JUNK = ("__MACOSX/", ".DS_Store", "Thumbs.db", "desktop.ini")


class UploadError(ValueError):
    """Error raised when an uploaded archive is rejected; the message gives the reason and the fix."""


@dataclass(frozen=True)
class ExtractedDataset:
    """Result of an extraction: where the images are and what was left out."""

    folder: Path
    suggested_root: Path
    image_count: int
    skipped: list[str] = field(default_factory=list)


def uploaded_datasets_root() -> Path:
    """Return the folder that contains data sets uploaded through the dashboard."""
    return artifacts_root() / "datasets"


def check_dataset_name(name: str) -> str:
    """Return the name stripped of spaces, or raise UploadError when it cannot name a folder."""
    name = name.strip()
    if not _NAME_PATTERN.fullmatch(name) or ".." in name:
        raise UploadError(f"invalid data set name {name!r}: use 1 to 64 letters, digits, '_', '-' or '.', "
                          "starting with a letter or digit")
    return name


def extract_dataset_zip(source: BinaryIO | Path, name: str, datasets_root: Path | None = None,
                        max_bytes: int = MAX_EXTRACTED_BYTES, max_members: int = MAX_MEMBERS) -> ExtractedDataset:
    """Extract the images of a zip archive into `<datasets_root>/<name>/`.

    Raises UploadError for a bad name, an existing target folder, a file that is not a zip,
    an unsafe member path, too many members, too many bytes, or an archive without images.
    """
    name = check_dataset_name(name)
    root = Path(datasets_root) if datasets_root is not None else uploaded_datasets_root()
    target = root / name
    if target.exists():
        raise UploadError(f"a data set folder named {name!r} already exists at {target}; "
                          "choose another name (existing folders are never overwritten)")

    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as error:
        raise UploadError(f"the upload is not a readable zip archive ({error}); create it again with a zip tool") from None

    with archive:
        images, skipped = _plan_members(archive, max_bytes, max_members)
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=root, prefix=f".upload-{name}-"))
        try:
            _extract_members(archive, images, staging, max_bytes)
            if target.exists():
                raise UploadError(f"a data set folder named {name!r} appeared at {target} during the upload; "
                                  "choose another name")
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    relative_paths = [PurePosixPath(info.filename) for info in images]
    suggested = target / _common_top_folder(relative_paths)
    logger.info("extracted %d images into %s (%d other files skipped)", len(images), target, len(skipped))
    return ExtractedDataset(folder=target, suggested_root=suggested, image_count=len(images), skipped=skipped)


def _plan_members(archive: zipfile.ZipFile, max_bytes: int,
                  max_members: int) -> tuple[list[zipfile.ZipInfo], list[str]]:
    """Check every member and split them into images to extract and skipped names."""
    members = archive.infolist()
    if len(members) > max_members:
        raise UploadError(f"the archive has {len(members)} entries, more than the limit of {max_members}; "
                          "split it into smaller data sets")

    images: list[zipfile.ZipInfo] = []
    skipped: list[str] = []
    for info in members:
        _check_member_path(info)
        if info.is_dir() or _is_archiver_junk(info.filename):
            continue
        if is_image_file(Path(info.filename)):
            images.append(info)
        else:
            skipped.append(info.filename)

    if not images:
        raise UploadError("the archive contains no image files (jpg, png, bmp, tif, webp, pgm, ppm); "
                          "zip the folder that contains the images")
    declared = sum(info.file_size for info in images)
    if declared > max_bytes:
        raise UploadError(f"the images expand to {declared / 1024**2:.0f} MB, more than the limit of "
                          f"{max_bytes / 1024**2:.0f} MB; add a data set this large by its path instead")
    return images, skipped


def _check_member_path(info: zipfile.ZipInfo) -> None:
    """Reject members that would be written outside the target folder, or as links."""
    name = info.filename.replace("\\", "/")
    path = PurePosixPath(name)
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in path.parts:
        raise UploadError(f"the archive entry {info.filename!r} points outside the data set folder; "
                          "the archive was rejected as unsafe")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise UploadError(f"the archive entry {info.filename!r} is a symbolic link; "
                          "the archive was rejected as unsafe")


def _is_archiver_junk(name: str) -> bool:
    base = PurePosixPath(name).name
    return name.startswith("__MACOSX/") or base.startswith("._") or base in _ARCHIVER_JUNK


def _extract_members(archive: zipfile.ZipFile, images: list[zipfile.ZipInfo], staging: Path, max_bytes: int) -> None:
    """Copy each image member into `staging`, counting the bytes actually written."""
    written = 0
    staging_resolved = staging.resolve()
    for info in images:
        destination = (staging / info.filename.replace("\\", "/")).resolve()
        if not destination.is_relative_to(staging_resolved):
            raise UploadError(f"the archive entry {info.filename!r} points outside the data set folder; "
                              "the archive was rejected as unsafe")
        destination.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(info) as reader, destination.open("wb") as writer:
            while chunk := reader.read(_CHUNK_BYTES):
                written += len(chunk)
                if written > max_bytes:
                    raise UploadError(f"the images expand to more than {max_bytes / 1024**2:.0f} MB "
                                      "(more than the archive declares); the archive was rejected")
                writer.write(chunk)


def _common_top_folder(paths: list[PurePosixPath]) -> PurePosixPath:
    """Return the single wrapping folder of an archive, so its root contains the class folders.

    Descends while every image lies under the same first folder and at least two levels
    below it, as when someone zips `my_set/` that contains `happy/`, `sad/` and so on.
    """
    prefix = PurePosixPath()
    current = paths
    while current and all(len(p.parts) >= 3 for p in current) and len({p.parts[0] for p in current}) == 1:
        prefix = prefix / current[0].parts[0]
        current = [PurePosixPath(*p.parts[1:]) for p in current]
    return prefix
