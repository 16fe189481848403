"""LIME: repeatable with a seed, any class, greyscale input, progress, segmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from explain_support import tiny_model, tiny_norm
from PIL import Image

from fer_core.constants import Backbone
from fer_core.explain.common import to_input_tensor
from fer_core.explain.lime_explainer import Segmentation, explain_lime, segment_image

SAMPLES = 60
SEGMENTS = 30
NORM = tiny_norm(Backbone.SQUEEZENET)


@pytest.fixture(scope="module")
def model():
    return tiny_model(Backbone.SQUEEZENET)


@pytest.fixture(scope="module")
def face(faces) -> np.ndarray:
    return np.asarray(Image.fromarray(faces[0]).resize((64, 64), Image.BILINEAR))


def _explain(model, face, label=0, seed=0, **options):
    return explain_lime(model, NORM, face, label, samples=SAMPLES, n_segments=SEGMENTS, seed=seed,
                        batch_size=32, **options)


def test_lime_same_seed_identical(model, face):
    first = _explain(model, face, seed=7)
    second = _explain(model, face, seed=7)
    assert np.array_equal(first.weights, second.weights)
    assert np.array_equal(first.segments, second.segments)


def test_lime_other_seed_differs(model, face):
    first = _explain(model, face, seed=7)
    other = _explain(model, face, seed=8)
    assert not np.array_equal(first.weights, other.weights)


def test_lime_weights_shape_and_sign(model, face):
    result = _explain(model, face)
    assert result.weights.shape == face.shape[:2]
    assert np.isfinite(result.weights).all()
    assert np.abs(result.weights).max() > 0


def test_lime_explains_least_likely_class(face):
    seven_classes = tiny_model(Backbone.SQUEEZENET, num_classes=7)
    with torch.no_grad():
        probabilities = torch.softmax(seven_classes(to_input_tensor(face, NORM)), dim=1)[0]
    least = int(probabilities.argmin())

    result = _explain(seven_classes, face, label=least)

    assert result.label == least
    assert np.abs(result.weights).max() > 0


def test_lime_probabilities_match_model(model, face):
    with torch.no_grad():
        expected = torch.softmax(model(to_input_tensor(face, NORM)), dim=1)[0].numpy()
    result = _explain(model, face)
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-5)


def test_lime_greyscale_input(model, face):
    grey = np.rint(face.mean(axis=2)).astype(np.uint8)
    result = _explain(model, grey)
    assert result.weights.shape == grey.shape
    assert np.abs(result.weights).max() > 0


def test_lime_progress_reaches_total(model, face):
    calls = []
    _explain(model, face, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (SAMPLES, SAMPLES)
    assert len(calls) == 2


def test_lime_label_out_of_range_raises(model, face):
    with pytest.raises(ValueError, match="out of range"):
        _explain(model, face, label=2)


def test_lime_too_few_samples_raises(model, face):
    with pytest.raises(ValueError, match="samples"):
        explain_lime(model, NORM, face, 0, samples=3)


def test_lime_restores_train_mode(face):
    model = tiny_model(Backbone.SQUEEZENET).train()
    _explain(model, face)
    assert model.training


def test_lime_float_image_raises(model, face):
    with pytest.raises(ValueError, match="uint8"):
        _explain(model, face.astype(np.float32))


def test_slic_segment_count(faces):
    segments = segment_image(faces[0], Segmentation.SLIC, n_segments=80)
    assert 40 <= segments.max() + 1 <= 120


def test_segments_sequential(faces):
    segments = segment_image(faces[0], Segmentation.SLIC, n_segments=80)
    assert np.array_equal(np.unique(segments), np.arange(segments.max() + 1))


def test_quickshift_enough_segments(faces):
    segments = segment_image(faces[0], Segmentation.QUICKSHIFT)
    assert segments.max() + 1 >= 30
