"""Attribution shares on constructed maps with known shares, and their summary table."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from fer_core.explain.attribution import attribution_share, face_regions, parse_polygon, summarise_attribution

# A mask rectangle over rows 32..63 and columns 16..47 of a 64 x 64 crop.
RECTANGLE = [[16, 32], [47, 32], [47, 63], [16, 63]]
SHAPE = (64, 64)


def _heatmap(upper: float = 0.0, mask: float = 0.0, other: float = 0.0) -> np.ndarray:
    heatmap = np.full(SHAPE, other)
    heatmap[:32] = upper
    heatmap[32:, 16:48] = mask
    return heatmap


def test_share_upper_only():
    share = attribution_share(_heatmap(upper=1.0), RECTANGLE, SHAPE)
    assert share.upper_share == pytest.approx(1.0)
    assert share.mask_share == pytest.approx(0.0)


def test_share_mask_only():
    share = attribution_share(_heatmap(mask=1.0), RECTANGLE, SHAPE)
    assert share.mask_share == pytest.approx(1.0)
    assert share.upper_share == pytest.approx(0.0)


def test_share_other_only():
    share = attribution_share(_heatmap(other=1.0), RECTANGLE, SHAPE)
    assert share.other_share == pytest.approx(1.0)


def test_share_uniform_matches_area():
    share = attribution_share(np.ones(SHAPE), RECTANGLE, SHAPE)
    assert share.mask_share == pytest.approx(share.mask_area)
    assert share.upper_share == pytest.approx(share.upper_area)


def test_share_areas():
    share = attribution_share(np.ones(SHAPE), RECTANGLE, SHAPE)
    assert share.upper_area == pytest.approx(0.5)
    assert share.mask_area == pytest.approx(0.25)


def test_share_weighted_mix():
    share = attribution_share(_heatmap(upper=3.0, mask=1.0), RECTANGLE, SHAPE)
    # Upper half: 2048 pixels x 3; mask: 1024 pixels x 1.
    assert share.upper_share == pytest.approx(6144 / 7168)


def test_share_scales_polygon_to_map():
    crop_polygon = [[x * 4, y * 4] for x, y in [[16, 32], [48, 32], [48, 64], [16, 64]]]
    share = attribution_share(_heatmap(upper=1.0), crop_polygon, (256, 256))
    assert share.upper_share == pytest.approx(1.0)


def test_share_ignores_negative_weights():
    share = attribution_share(_heatmap(upper=1.0, mask=-5.0), RECTANGLE, SHAPE)
    assert share.upper_share == pytest.approx(1.0)


def test_share_accepts_json_polygon():
    share = attribution_share(_heatmap(upper=1.0), json.dumps(RECTANGLE), SHAPE)
    assert share.upper_share == pytest.approx(1.0)


def test_share_empty_polygon_nan():
    share = attribution_share(_heatmap(upper=1.0), [], SHAPE)
    assert math.isnan(share.mask_share)
    assert math.isnan(share.upper_share)


def test_share_zero_map_nan():
    share = attribution_share(np.zeros(SHAPE), RECTANGLE, SHAPE)
    assert math.isnan(share.upper_share)
    assert share.positive_total == 0.0


def test_share_non_finite_raises():
    heatmap = np.ones(SHAPE)
    heatmap[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        attribution_share(heatmap, RECTANGLE, SHAPE)


def test_polygon_too_few_points_raises():
    with pytest.raises(ValueError, match="at least 3"):
        parse_polygon([[0, 0], [1, 1]])


def test_polygon_bad_json_raises():
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_polygon("[[0, 0], [1")


def test_regions_disjoint():
    mask_region, upper_region = face_regions(RECTANGLE, SHAPE, SHAPE)
    assert not (mask_region & upper_region).any()


def test_summary_groups_and_enrichment():
    table = pd.DataFrame({
        "backbone": ["resnet50"] * 4,
        "explained_class": ["fear", "fear", "happy", "happy"],
        "mask_type": ["surgical"] * 4,
        "mask_share": [0.1, 0.3, 0.6, 0.8],
        "upper_share": [0.8, 0.6, 0.2, 0.1],
        "other_share": [0.1, 0.1, 0.2, 0.1],
        "mask_area": [0.25] * 4,
        "upper_area": [0.5] * 4,
    })

    summary = summarise_attribution(table).set_index("explained_class")

    assert summary.loc["fear", "upper_share"] == pytest.approx(0.7)
    assert summary.loc["fear", "upper_enrichment"] == pytest.approx(1.4)
    assert summary.loc["happy", "images"] == 2


def test_summary_missing_columns_raises():
    with pytest.raises(ValueError, match="lacks columns"):
        summarise_attribution(pd.DataFrame({"mask_share": [0.5]}))
