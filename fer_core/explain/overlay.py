"""Pictures for the dashboard: heatmaps blended over faces, and mask outlines."""

from __future__ import annotations

import logging

import cv2
import numpy as np

from fer_core.explain.attribution import Polygon, parse_polygon
from fer_core.explain.common import as_rgb_batch

logger = logging.getLogger(__name__)

POLYGON_COLOUR = (255, 255, 255)


def overlay_heatmap(image_rgb: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a heatmap over a uint8 RGB or greyscale image and return a uint8 (H, W, 3) image.

    Maps without negative values (CAM maps) use the JET colour map over their [0, max]
    range. Signed maps (LIME weights) use a diverging scale symmetric around zero: red
    supports the class, blue speaks against it, and zero leaves the face visible. The map is
    resized to the image with bilinear interpolation.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], received {alpha}")
    rgb = as_rgb_batch(image_rgb)[0]
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.ndim != 2:
        raise ValueError(f"heatmap must be a 2-D (H, W) array, received shape {heatmap.shape}")
    heatmap = np.nan_to_num(heatmap, nan=0.0, posinf=0.0, neginf=0.0)

    height, width = rgb.shape[:2]
    if heatmap.shape != (height, width):
        heatmap = cv2.resize(heatmap, (width, height), interpolation=cv2.INTER_LINEAR)

    if (heatmap < 0).any():
        colours, weight = _diverging_colours(heatmap)
    else:
        colours, weight = _jet_colours(heatmap)

    blend = alpha * weight[..., None]
    mixed = rgb.astype(np.float32) * (1.0 - blend) + colours.astype(np.float32) * blend
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def _jet_colours(heatmap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    peak = float(heatmap.max())
    scaled = heatmap / peak if peak > 0 else np.zeros_like(heatmap)
    bgr = cv2.applyColorMap(np.uint8(np.rint(255 * scaled)), cv2.COLORMAP_JET)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), np.ones_like(heatmap)


def _diverging_colours(heatmap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    limit = float(np.abs(heatmap).max())
    scaled = heatmap / limit
    colours = np.zeros(heatmap.shape + (3,), dtype=np.float32)
    colours[scaled > 0] = (220, 30, 30)
    colours[scaled < 0] = (30, 80, 220)
    return colours, np.abs(scaled)


def draw_polygon(image: np.ndarray, polygon: Polygon | str, colour: tuple[int, int, int] = POLYGON_COLOUR,
                 thickness: int = 1, source_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Return a uint8 RGB copy of the image with the closed polygon outline drawn on it.

    `polygon` contains [x, y] points in the pixels of an image of `source_shape` (default:
    this image), and it is scaled when the shapes differ. An empty polygon returns an unchanged copy.
    """
    canvas = np.array(as_rgb_batch(image)[0])
    points = parse_polygon(polygon)
    if points.shape[0] == 0:
        return canvas

    if source_shape is not None:
        points = (points + 0.5) * [canvas.shape[1] / source_shape[1], canvas.shape[0] / source_shape[0]] - 0.5
    vertices = np.rint(points).astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(canvas, [vertices], isClosed=True, color=tuple(int(c) for c in colour), thickness=thickness,
                  lineType=cv2.LINE_AA)
    return canvas
