"""Downloads: tables as CSV, figures as HTML or PNG, images as PNG, and whole runs as one zip."""

from __future__ import annotations

import functools
import importlib.metadata
import io
import logging
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs
from PIL import Image

logger = logging.getLogger(__name__)

# Final fold weights, which the export includes on request; resumable checkpoints (which also
# hold optimiser state) are always left out.
MODELS_FOLDER = "models"
CHECKPOINTS_FOLDER = "checkpoints"
# Suffixes stored without compression: checkpoints and images do not shrink.
_STORED_SUFFIXES = frozenset({".pt", ".pth", ".ckpt", ".png", ".jpg", ".jpeg"})


class FigureExportError(RuntimeError):
    """Error raised when a figure cannot be rendered to a static image here."""


def table_csv(frame: pd.DataFrame) -> bytes:
    """Encode a table as UTF-8 CSV without the index."""
    return frame.to_csv(index=False).encode("utf-8")


def figure_html(figure: go.Figure) -> bytes:
    """Encode a figure as a self-contained interactive HTML page that works offline."""
    return pio.to_html(figure, include_plotlyjs=True, full_html=True).encode("utf-8")


@functools.cache
def png_export_available() -> bool:
    """Return True when kaleido 1.x and a Chrome or Chromium browser are installed here.

    Plotly renders static images through kaleido, and kaleido 1.x drives that browser. The
    check only looks for both (once per process), so no browser starts before a download.
    """
    try:
        kaleido_major = int(importlib.metadata.version("kaleido").split(".")[0])
        from choreographer.browsers.chromium import Chromium
    except (importlib.metadata.PackageNotFoundError, ImportError, ValueError) as error:
        logger.info("static PNG export of figures is unavailable (kaleido 1.x missing: %s); offering HTML", error)
        return False

    browser = Chromium.find_browser(skip_local=False) if kaleido_major >= 1 else None
    if browser is None:
        logger.info("static PNG export of figures is unavailable (kaleido %s, browser %s); offering HTML",
                    importlib.metadata.version("kaleido"), "found" if browser else "not found")
        return False
    return True


def figure_png(figure: go.Figure, width: int = 1000, height: int = 500) -> bytes:
    """Render a figure as PNG bytes; raise FigureExportError where kaleido cannot run."""
    if not png_export_available():
        raise FigureExportError("static PNG export needs kaleido 1.x with a Chrome or Chromium browser; "
                                "download the HTML version, or use the camera icon above the figure")
    try:
        return pio.to_image(figure, format="png", width=width, height=height)
    except (RuntimeError, ValueError, OSError) as error:
        raise FigureExportError(f"rendering the figure as PNG failed ({error}); download the HTML version, "
                                "or use the camera icon above the figure") from error


def encode_png(rgb: np.ndarray) -> bytes:
    """Encode a uint8 RGB or greyscale array as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format="PNG")
    return buffer.getvalue()


def zip_pngs(images: Mapping[str, np.ndarray]) -> bytes:
    """Pack named images into a zip, one `<name>.png` per entry."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, rgb in images.items():
            archive.writestr(f"{name}.png", encode_png(rgb))
    return buffer.getvalue()


def weights_bytes(run_dir: Path) -> int:
    """Return the total size of a run's final fold weights in bytes."""
    folder = Path(run_dir) / MODELS_FOLDER
    if not folder.is_dir():
        return 0
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def run_zip(run_dir: Path, figures: Mapping[str, go.Figure] | None = None,
            include_weights: bool = True) -> bytes:
    """Pack a run into one zip: its settings, metrics, predictions, log, figures and weights.

    Figures go under `figures/` as interactive HTML that loads `figures/plotly.min.js` from
    the zip (so each page stays small), plus PNG when kaleido can render here.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} not found; it may have been deleted")

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        root = run_dir.name
        _add_run_files(archive, run_dir, root, include_weights)
        if figures:
            _add_figures(archive, figures, f"{root}/figures")
    logger.info("exported run %s (%d bytes, weights %s)", run_dir, buffer.tell(),
                "included" if include_weights else "left out")
    return buffer.getvalue()


def _add_run_files(archive: zipfile.ZipFile, run_dir: Path, root: str, include_weights: bool) -> None:
    for path in sorted(run_dir.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        relative = path.relative_to(run_dir)
        if relative.parts[0] == CHECKPOINTS_FOLDER:
            continue
        if relative.parts[0] == MODELS_FOLDER and not include_weights:
            continue
        compression = zipfile.ZIP_STORED if path.suffix.lower() in _STORED_SUFFIXES else zipfile.ZIP_DEFLATED
        archive.write(path, f"{root}/{relative.as_posix()}", compress_type=compression)


def figures_png(figures: Mapping[str, go.Figure], width: int = 1000, height: int = 500) -> dict[str, bytes]:
    """Render several figures as PNG in one browser session (kaleido starts a browser per call)."""
    if not png_export_available():
        raise FigureExportError("static PNG export needs kaleido 1.x with a Chrome or Chromium browser")
    names = list(figures)
    with tempfile.TemporaryDirectory(prefix="fer-figures-") as folder:
        paths = [Path(folder) / f"{position}.png" for position in range(len(names))]
        try:
            pio.write_images([figures[name] for name in names], paths, width=width, height=height)
        except (RuntimeError, ValueError, OSError) as error:
            raise FigureExportError(f"rendering the figures as PNG failed ({error})") from error
        return {name: path.read_bytes() for name, path in zip(names, paths)}


def _add_figures(archive: zipfile.ZipFile, figures: Mapping[str, go.Figure], folder: str) -> None:
    archive.writestr(f"{folder}/plotly.min.js", get_plotlyjs())
    for name, figure in figures.items():
        archive.writestr(f"{folder}/{name}.html", pio.to_html(figure, include_plotlyjs="directory", full_html=True))

    if not png_export_available():
        return
    try:
        images = figures_png(figures)
    except FigureExportError as error:
        logger.warning("PNG rendering failed, so the run export contains HTML figures only: %s", error)
        return
    for name, data in images.items():
        archive.writestr(f"{folder}/{name}.png", data, compress_type=zipfile.ZIP_STORED)
