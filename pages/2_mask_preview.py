"""Mask preview page: the four synthetic masks on a data set image, an upload or a camera shot."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st

from fer_core.constants import MaskType
from fer_core.dashboard import cache, exports, photos, widgets
from fer_core.datasets import DatasetError, DatasetKind
from fer_core.faces import FaceDetection, NoFaceError, draw_detection
from fer_core.images import ImageReadError
from fer_core.masks import ClothPattern, MaskStyle, render_mask

SOURCES = ("Data set image", "Upload a photo", "Camera")
# Above this many images a data set is browsed by number instead of a drop-down list.
SELECTBOX_LIMIT = 2000
COVERAGE_HELP = ("How far up the nose the mask reaches: 0 is just above the nose tip, 1 is the bridge of the "
                 "nose just below the eyes.")
MASK_TITLES = {MaskType.SURGICAL: "Surgical", MaskType.CLOTH: "Cloth", MaskType.N95: "N95", MaskType.KN95: "KN95"}


@dataclass(frozen=True)
class Photo:
    """The photograph to mask and where it came from."""

    rgb: np.ndarray
    greyscale: bool
    name: str
    from_london: bool


def dataset_photo_ui() -> Photo | None:
    """Let the user pick one image of a data set."""
    specs = cache.current_dataset_specs()
    if not specs:
        st.info("No data set is available yet: upload a photo, use the camera, or add a data set first.")
        return None

    names = [spec.resolved_name() for spec in specs]
    left, right = st.columns(2)
    name = left.selectbox("Data set", names, key="preview-dataset")
    try:
        table = cache.load_table(name)
    except (DatasetError, KeyError, OSError) as error:
        st.error(f"Data set {name} cannot be read: {error}")
        return None

    frame = table.frame.sort_values("source_id").reset_index(drop=True)
    if len(frame) <= SELECTBOX_LIMIT:
        position = right.selectbox("Image", range(len(frame)), key=f"preview-image-{name}",
                                   format_func=lambda i: f"{frame.at[i, 'source_id']} ({frame.at[i, 'label']})")
    else:
        number = right.number_input(f"Image number (1 to {len(frame)})", 1, len(frame), 1, key=f"preview-number-{name}")
        position = int(number) - 1
    row = frame.iloc[position]

    try:
        loaded = cache.read_image_file(str(row["path"]), _mtime(row["path"]))
    except ImageReadError as error:
        st.error(f"{row['path']} cannot be read: {error.describe()}")
        return None
    return Photo(loaded.rgb, loaded.greyscale, str(row["source_id"]), table.kind is DatasetKind.LONDON)


def _mtime(path: str) -> float:
    file = Path(path)
    return file.stat().st_mtime if file.exists() else 0.0


def uploaded_photo_ui(source: str) -> Photo | None:
    """Let the user upload a photograph or take one with the camera."""
    if source == "Camera":
        upload = st.camera_input("Take a photo (used only for this preview and never saved)", key="preview-camera")
    else:
        upload = st.file_uploader("Photo with one face, looking roughly at the camera", type=photos.UPLOAD_TYPES,
                                  key="preview-upload")
    if upload is None:
        return None

    try:
        loaded = photos.read_uploaded_image(upload.getvalue(), upload.name)
    except ImageReadError as error:
        st.error(f"{upload.name} cannot be read as an image: {error.describe()}")
        return None
    return Photo(loaded.rgb, loaded.greyscale, upload.name, from_london=False)


def style_ui() -> MaskStyle:
    """Collect coverage, colour, cloth pattern and seed."""
    columns = st.columns(4)
    coverage = columns[0].slider("Coverage", 0.0, 1.0, 0.6, 0.05, key="preview-coverage", help=COVERAGE_HELP)
    colour_choice = columns[1].radio("Colour", ("Typical colours", "One colour"), key="preview-colour-choice",
                                     help="Typical colours vary with the seed; greyscale photos get grey masks.")
    colour = None
    if colour_choice == "One colour":
        colour = _hex_to_rgb(columns[1].color_picker("Mask colour", "#5B8DB8", key="preview-colour"))
    pattern_names = ["Random (from the seed)"] + [pattern.value for pattern in ClothPattern]
    pattern = columns[2].selectbox("Cloth pattern", pattern_names, key="preview-pattern",
                                   help="Applies to the cloth mask only.")
    seed = columns[3].number_input("Seed", 0, 1_000_000, 0, key="preview-seed",
                                   help="The same seed always draws the same colours and pattern.")
    return MaskStyle(coverage=float(coverage), color=colour,
                     pattern=None if pattern == pattern_names[0] else ClothPattern(pattern), seed=int(seed))


def _hex_to_rgb(value: str) -> tuple[int, int, int]:
    value = value.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def detection_section(photo: Photo, rgb: np.ndarray) -> FaceDetection | None:
    """Detect the face, draw its box and landmarks, and return the detection (None without a face)."""
    try:
        detection = cache.detect_face(rgb)
    except NoFaceError as error:
        st.error(f"No face was found in {photo.name}: {error}. Try a photo where the face is larger, "
                 "well lit and turned towards the camera.")
        return None

    left, right = st.columns([1, 2])
    left.image(draw_detection(rgb, detection), caption="Face box and 68 landmarks", width="stretch")
    right.markdown(
        f"**{photo.name}**  \nFace probability: {detection.probability:.3f}  \n"
        f"Faces found: {detection.face_count} ({detection.selection})  \n"
        f"Image: {rgb.shape[1]} x {rgb.shape[0]} pixels{', greyscale' if photo.greyscale else ''}"
    )
    return detection


def masks_section(photo: Photo, rgb: np.ndarray, detection: FaceDetection, style: MaskStyle) -> None:
    """Draw the four masks side by side with a PNG download each and one zip of all."""
    rendered = {mask_type: render_mask(rgb, detection.landmarks, mask_type, style, greyscale=photo.greyscale).image
                for mask_type in MaskType.drawn()}

    zoom = st.toggle("Zoom to the face", value=True, key="preview-zoom",
                     help=f"Only the view zooms. Downloads contain the whole photograph, scaled down to at most "
                          f"{photos.PREVIEW_MAX_SIDE} pixels on its longest side.")
    stem = widgets.file_stem(photo.name.rsplit(".", 1)[0])
    columns = st.columns(len(rendered))
    for column, (mask_type, image) in zip(columns, rendered.items()):
        shown = photos.face_view(image, detection) if zoom else image
        column.image(shown, caption=MASK_TITLES[mask_type], width="stretch")
        column.download_button("PNG", data=lambda image=image: exports.encode_png(image),
                               file_name=f"{stem}_{mask_type.value}.png", mime="image/png",
                               key=f"preview-png-{mask_type.value}", on_click="ignore", icon=":material/download:")

    named = {f"{stem}_{mask_type.value}": image for mask_type, image in rendered.items()}
    st.download_button("All four masks (zip)", data=lambda: exports.zip_pngs(named), file_name=f"{stem}_masks.zip",
                       mime="application/zip", key="preview-zip", on_click="ignore", icon=":material/folder_zip:")


def main() -> None:
    """Draw the mask preview page."""
    widgets.page_intro("Mask preview", "See how the four synthetic masks sit on a face before preparing a "
                                       "whole data set.")
    source = st.segmented_control("Photo source", SOURCES, default=SOURCES[0], key="preview-source")
    photo = dataset_photo_ui() if source in (None, SOURCES[0]) else uploaded_photo_ui(source)
    style = style_ui()
    if photo is None:
        return

    rgb = photos.shrink_to_fit(photo.rgb)
    detection = detection_section(photo, rgb)
    if detection is not None:
        masks_section(photo, rgb, detection, style)
    if photo.from_london:
        widgets.london_credit()


main()
