"""Face-region attribution: the part of an explanation on the mask, above it, or elsewhere.

The face crop is split by the mask polygon into three disjoint regions: the mask itself,
the upper face (every row above the polygon's top point: eyes, brows, forehead) and the
rest (beside and below the mask). A region's share is its part of the map's positive
attribution, so "this model relies on the eyes for fear" becomes a number that can be
compared with the region's share of the pixels.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from skimage.draw import polygon2mask

logger = logging.getLogger(__name__)

Polygon = Sequence[Sequence[float]]

SHARE_COLUMNS = ("mask_share", "upper_share", "other_share", "mask_area", "upper_area")
DEFAULT_SUMMARY_GROUPS = ("backbone", "method", "explained_class", "mask_type")


@dataclass(frozen=True)
class AttributionShare:
    """Positive attribution per face region, each share in [0, 1] and summing to 1.

    `mask_area` and `upper_area` are the regions' fractions of all pixels, the shares a
    uniform map would get. Shares are NaN when the map has no positive attribution, and
    all but `other_share` are NaN when there is no polygon.
    """

    mask_share: float
    upper_share: float
    other_share: float
    mask_area: float
    upper_area: float
    positive_total: float

    def as_dict(self) -> dict[str, float]:
        """Return the fields as a plain dict, for table rows."""
        return asdict(self)


def parse_polygon(polygon: Polygon | str) -> np.ndarray:
    """Return a polygon given as a list of [x, y] points or its JSON text as an (N, 2) float array."""
    if isinstance(polygon, str):
        try:
            polygon = json.loads(polygon) if polygon.strip() else []
        except json.JSONDecodeError as error:
            raise ValueError(f"polygon is not valid JSON ({error}): {polygon[:80]!r}") from error

    points = np.asarray(polygon, dtype=np.float64)
    if points.size == 0:
        return np.zeros((0, 2))
    if points.ndim != 2 or points.shape[1] != 2 or points.shape[0] < 3:
        raise ValueError(f"a polygon needs at least 3 [x, y] points, received shape {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError("polygon contains NaN or infinite coordinates")
    return points


def face_regions(polygon: Polygon | str, image_shape: tuple[int, ...],
                 map_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Return boolean (mask region, upper face) arrays of `map_shape` for a polygon in image pixels.

    `image_shape` is the (H, W, ...) shape of the image that the polygon's coordinates refer
    to. The polygon is scaled to the map, which may have another resolution. Pixel centres
    lie at integer coordinates in both.
    """
    points = parse_polygon(polygon)
    height, width = map_shape
    if points.shape[0] == 0:
        empty = np.zeros(map_shape, dtype=bool)
        return empty, empty.copy()

    scale_y = height / image_shape[0]
    scale_x = width / image_shape[1]
    rows = (points[:, 1] + 0.5) * scale_y - 0.5
    columns = (points[:, 0] + 0.5) * scale_x - 0.5

    mask_region = polygon2mask(map_shape, np.stack([rows, columns], axis=1))
    above_top = (np.arange(height) < rows.min())[:, None]
    upper_region = np.broadcast_to(above_top, map_shape) & ~mask_region
    return mask_region, upper_region


def attribution_share(heatmap: np.ndarray, polygon: Polygon | str, image_shape: tuple[int, ...]) -> AttributionShare:
    """Split a heatmap's positive attribution into mask, upper-face and other regions.

    `heatmap` is an (H, W) map: a CAM map in [0, 1], or signed LIME weights, whose negative
    part is ignored. `polygon` is the mask outline in the pixels of an image of shape
    `image_shape`. An empty polygon (an unmasked crop) gives NaN mask and upper shares.

    >>> heat = np.zeros((10, 10)); heat[:3] = 1.0
    >>> attribution_share(heat, [[2, 5], [7, 5], [7, 9], [2, 9]], (10, 10)).upper_share
    1.0
    """
    heatmap = np.asarray(heatmap, dtype=np.float64)
    if heatmap.ndim != 2:
        raise ValueError(f"heatmap must be a 2-D (H, W) array, received shape {heatmap.shape}")
    if not np.isfinite(heatmap).all():
        raise ValueError("heatmap contains NaN or infinite values")

    mask_region, upper_region = face_regions(polygon, image_shape, heatmap.shape)
    has_polygon = bool(mask_region.any())
    positive = np.clip(heatmap, 0.0, None)
    total = float(positive.sum())

    mask_area = float(mask_region.mean()) if has_polygon else math.nan
    upper_area = float(upper_region.mean()) if has_polygon else math.nan
    if total <= 0.0:
        return AttributionShare(math.nan, math.nan, math.nan, mask_area, upper_area, total)
    if not has_polygon:
        return AttributionShare(math.nan, math.nan, 1.0, mask_area, upper_area, total)

    mask_share = float(positive[mask_region].sum()) / total
    upper_share = float(positive[upper_region].sum()) / total
    other_share = max(0.0, 1.0 - mask_share - upper_share)
    return AttributionShare(mask_share, upper_share, other_share, mask_area, upper_area, total)


def summarise_attribution(table: pd.DataFrame, by: Sequence[str] = DEFAULT_SUMMARY_GROUPS) -> pd.DataFrame:
    """Average the per-image shares over groups such as backbone, method, class and mask type.

    `table` has one row per explained image with the `SHARE_COLUMNS`; grouping columns that
    it lacks are skipped. The result adds `images` (rows with a finite upper share) and
    `upper_enrichment`, the upper share divided by the upper area: above 1 means the
    explanation favours the upper face more than a uniform map would.
    """
    missing = [column for column in SHARE_COLUMNS if column not in table.columns]
    if missing:
        raise ValueError(f"the attribution table lacks columns {missing}; expected {list(SHARE_COLUMNS)}")
    groups = [column for column in by if column in table.columns]

    numeric = table[groups + list(SHARE_COLUMNS)].copy()
    numeric["images"] = table["upper_share"].notna().astype(int)
    if groups:
        summary = numeric.groupby(groups, dropna=False).agg(
            {**{column: "mean" for column in SHARE_COLUMNS}, "images": "sum"}
        ).reset_index()
    else:
        summary = numeric.agg({**{column: "mean" for column in SHARE_COLUMNS}, "images": "sum"}).to_frame().T

    summary["upper_enrichment"] = summary["upper_share"] / summary["upper_area"]
    return summary
