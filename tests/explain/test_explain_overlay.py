"""Overlays for the dashboard: blended heatmaps and mask outlines."""

from __future__ import annotations

import numpy as np
import pytest

from fer_core.explain.overlay import draw_polygon, overlay_heatmap

RECTANGLE = [[64, 128], [191, 128], [191, 250], [64, 250]]


def test_overlay_shape_and_dtype(faces):
    result = overlay_heatmap(faces[0], np.random.default_rng(0).random((7, 7)))
    assert result.shape == (256, 256, 3)
    assert result.dtype == np.uint8


def test_overlay_alpha_zero_keeps_image(faces):
    result = overlay_heatmap(faces[0], np.ones((64, 64)), alpha=0.0)
    assert np.array_equal(result, faces[0])


def test_overlay_greyscale_image(faces):
    grey = faces[0][..., 0]
    assert overlay_heatmap(grey, np.ones((64, 64))).shape == (256, 256, 3)


def test_overlay_signed_colours(faces):
    weights = np.zeros((256, 256))
    weights[:128] = 1.0
    weights[128:] = -1.0
    result = overlay_heatmap(np.full((256, 256, 3), 128, np.uint8), weights, alpha=0.8).astype(int)
    assert result[10, 10, 0] > result[10, 10, 2]
    assert result[200, 10, 2] > result[200, 10, 0]


def test_overlay_signed_zero_keeps_pixel():
    weights = np.zeros((8, 8))
    weights[0, 0] = -1.0
    image = np.full((8, 8, 3), 90, np.uint8)
    assert np.array_equal(overlay_heatmap(image, weights)[7, 7], [90, 90, 90])


def test_overlay_bad_alpha_raises(faces):
    with pytest.raises(ValueError, match="alpha"):
        overlay_heatmap(faces[0], np.ones((8, 8)), alpha=1.5)


def test_polygon_drawn_on_outline(faces):
    result = draw_polygon(faces[0], RECTANGLE, colour=(0, 255, 0)).astype(int)
    # The outline is antialiased, so its pixels are close to the colour rather than equal.
    assert result[128, 128, 1] - result[128, 128, 0] > 150


def test_polygon_leaves_input_unchanged(faces):
    before = faces[0].copy()
    draw_polygon(faces[0], RECTANGLE)
    assert np.array_equal(faces[0], before)


def test_polygon_scaled_to_image(faces):
    small = np.asarray(faces[0][::4, ::4])
    result = draw_polygon(small, RECTANGLE, colour=(0, 255, 0), source_shape=(256, 256)).astype(int)
    assert result[32, 32, 1] - result[32, 32, 0] > 150


def test_polygon_empty_returns_copy(faces):
    assert np.array_equal(draw_polygon(faces[0], "[]"), faces[0])
