"""Faithfulness scores on a model whose evidence is known: it reads only the upper half."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fer_core.explain.faithfulness import (
    curve_auc,
    deletion_insertion,
    faithfulness_scores,
    resize_map,
    road_combined,
)

SIZE = 32


class UpperHalfEnergy(nn.Module):
    """Two-class model whose class-0 logit grows with the pixel energy of the image's upper half.

    Blanking, blurring or smoothly imputing upper-half pixels lowers that energy, so a map that
    ranks the upper half first is the faithful one.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        energy = x[:, :, : x.shape[2] // 2].pow(2).mean(dim=(1, 2, 3))
        return torch.stack([6.0 * (energy - 0.5), torch.zeros_like(energy)], dim=1)


@pytest.fixture()
def images() -> torch.Tensor:
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


def _maps(upper_first: bool) -> np.ndarray:
    rows = np.linspace(1.0, 0.0, SIZE) if upper_first else np.linspace(0.0, 1.0, SIZE)
    return np.repeat(np.tile(rows[:, None], (1, SIZE))[None], 2, axis=0).astype(np.float32)


def test_deletion_curve_shape(images):
    deletion, insertion = deletion_insertion(UpperHalfEnergy(), images, _maps(True), [0, 0], steps=10)
    assert deletion.shape == (2, 11)
    assert insertion.shape == (2, 11)


def test_deletion_curve_starts_at_model_probability(images):
    model = UpperHalfEnergy()
    expected = torch.softmax(model(images), dim=1)[:, 0].numpy()
    deletion, _ = deletion_insertion(model, images, _maps(True), [0, 0], steps=10)
    np.testing.assert_allclose(deletion[:, 0], expected, atol=1e-6)


def test_deletion_faithful_map_lower(images):
    model = UpperHalfEnergy()
    faithful, _ = deletion_insertion(model, images, _maps(True), [0, 0])
    unfaithful, _ = deletion_insertion(model, images, _maps(False), [0, 0])
    assert (curve_auc(faithful) < curve_auc(unfaithful)).all()


def test_insertion_faithful_map_higher(images):
    model = UpperHalfEnergy()
    _, faithful = deletion_insertion(model, images, _maps(True), [0, 0])
    _, unfaithful = deletion_insertion(model, images, _maps(False), [0, 0])
    assert (curve_auc(faithful) > curve_auc(unfaithful)).all()


def test_road_faithful_map_higher(images):
    model = UpperHalfEnergy()
    faithful = road_combined(model, images, _maps(True), [0, 0])
    unfaithful = road_combined(model, images, _maps(False), [0, 0])
    assert (faithful > unfaithful).all()


def test_road_same_seed_identical(images):
    model = UpperHalfEnergy()
    first = road_combined(model, images, _maps(True), [0, 0], seed=3)
    second = road_combined(model, images, _maps(True), [0, 0], seed=3)
    assert np.array_equal(first, second)


def test_scores_one_per_image(images):
    scores = faithfulness_scores(UpperHalfEnergy(), images, _maps(True), [0, 1], steps=5, percentiles=(50,))
    assert len(scores) == 2
    assert all(np.isfinite([s.deletion_auc, s.insertion_auc, s.road_combined]).all() for s in scores)


def test_curve_auc_constant_one():
    assert curve_auc(np.ones((1, 11)))[0] == pytest.approx(1.0)


def test_map_shape_mismatch_raises(images):
    with pytest.raises(ValueError, match="resize_map"):
        deletion_insertion(UpperHalfEnergy(), images, np.zeros((2, 16, 16)), [0, 0])


def test_label_count_mismatch_raises(images):
    with pytest.raises(ValueError, match="2 images but 1 labels"):
        road_combined(UpperHalfEnergy(), images, _maps(True), [0])


def test_resize_map_shape():
    assert resize_map(np.ones((7, 7)), (32, 32)).shape == (32, 32)
