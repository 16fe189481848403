"""LIME explanations of face crops (lime.lime_image), repeatable and for any class.

LIME switches superpixels off at random, queries the model for class probabilities on each
perturbed copy and fits a weighted linear model. Each superpixel's coefficient is its signed
contribution to the explained class. Two traps of lime 0.2 are handled here:
`random_seed` only seeds the segmentation, so every call builds a fresh explainer with
`random_state=seed`. Asking for a label outside `top_labels` raises KeyError, so the label
is passed explicitly with `top_labels=None`.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from lime.lime_image import LimeImageExplainer
from skimage.segmentation import quickshift, slic
from torch import nn

from fer_core.explain.common import (
    Normalisation,
    as_rgb_batch,
    check_label,
    model_device,
    predict_probabilities,
    preserved_state,
    to_input_tensor,
)

logger = logging.getLogger(__name__)

DEFAULT_LIME_SAMPLES = 1000
DEFAULT_LIME_BATCH_SIZE = 64
# About 70 SLIC superpixels on a 224 px face crop: small enough to separate an eye from a brow.
DEFAULT_SEGMENT_COUNT = 80
# LIME's kernel width for the cosine distance between a perturbation and the original image.
LIME_KERNEL_WIDTH = 0.25
MIN_LIME_SAMPLES = 10

ProgressCallback = Callable[[int, int], None]


class Segmentation(str, enum.Enum):
    """Superpixel algorithm that defines LIME's features.

    SLIC gives a chosen number of compact superpixels. QUICKSHIFT uses kernel size 3 and
    maximum distance 50 (about 50 superpixels on a 224 px face); LIME's own default (kernel 4,
    distance 200) gives only about 20 on such small crops.
    """

    SLIC = "slic"
    QUICKSHIFT = "quickshift"


@dataclass(frozen=True)
class LimeResult:
    """A LIME explanation of one image for one class.

    `weights` is the (H, W) map of each pixel's superpixel coefficient, positive where the
    superpixel supports the class. `segments` contains the (H, W) superpixel labels 0..n-1 and
    `probabilities` the model's class probabilities on the unperturbed image. `score` is the
    R^2 of LIME's local linear fit on its weighted samples, so low values mean that the linear
    surrogate explains the model poorly.
    """

    label: int
    weights: np.ndarray
    segments: np.ndarray
    probabilities: np.ndarray
    score: float
    intercept: float


def segment_image(image_rgb: np.ndarray, segmentation: Segmentation | str = Segmentation.SLIC,
                  n_segments: int = DEFAULT_SEGMENT_COUNT, seed: int = 0) -> np.ndarray:
    """Return superpixel labels (H, W) numbered 0..n-1 for a uint8 RGB or greyscale image."""
    segmentation = Segmentation(segmentation)
    rgb = as_rgb_batch(image_rgb)[0]

    if segmentation is Segmentation.SLIC:
        if n_segments < 2:
            raise ValueError(f"n_segments must be at least 2, received {n_segments}")
        labels = slic(rgb, n_segments=n_segments, compactness=10.0, sigma=1.0, start_label=0, channel_axis=-1)
    else:
        labels = quickshift(rgb, kernel_size=3, max_dist=50, ratio=0.2, rng=seed)

    # LIME indexes superpixels as 0..n-1, so gaps in the numbering would misplace weights.
    _, sequential = np.unique(labels, return_inverse=True)
    return sequential.reshape(labels.shape).astype(np.int32)


def explain_lime(model: nn.Module, norm: Normalisation, image_rgb: np.ndarray, label: int,
                 samples: int = DEFAULT_LIME_SAMPLES, segmentation: Segmentation | str = Segmentation.SLIC,
                 n_segments: int = DEFAULT_SEGMENT_COUNT, seed: int = 0,
                 batch_size: int = DEFAULT_LIME_BATCH_SIZE,
                 progress: ProgressCallback | None = None) -> LimeResult:
    """Explain the model's probability of class `label` on one uint8 image with LIME.

    `norm` gives the input size and normalisation (a `BackboneSpec` or a trained model
    record). The image may be RGB (H, W, 3) or greyscale (H, W). The weights come back at
    its own resolution because the classifier resizes each perturbed copy to the input size.
    `label` may be any class, not only the predicted one. The same seed gives the same
    result. `progress(done, total)` is called after every batch of `batch_size` samples.
    """
    if samples < MIN_LIME_SAMPLES:
        raise ValueError(f"samples must be at least {MIN_LIME_SAMPLES}, received {samples}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, received {batch_size}")
    rgb = as_rgb_batch(image_rgb)[0]
    segmentation = Segmentation(segmentation)

    with preserved_state(model):
        model.eval()
        device = model_device(model)
        probabilities = predict_probabilities(model, to_input_tensor(rgb, norm, device), batch_size)[0]
        label = check_label(label, probabilities.shape[0])

        classify = _classifier(model, norm, batch_size, samples, progress)
        explainer = LimeImageExplainer(kernel_width=LIME_KERNEL_WIDTH, random_state=seed)
        explanation = explainer.explain_instance(
            rgb, classify, labels=(label,), top_labels=None, num_samples=samples, batch_size=batch_size,
            segmentation_fn=lambda image: segment_image(image, segmentation, n_segments, seed),
            random_seed=seed,
        )

    segments = explanation.segments
    lookup = np.zeros(int(segments.max()) + 1, dtype=np.float32)
    for segment, weight in explanation.local_exp[label]:
        lookup[segment] = weight
    logger.debug("LIME for class %d: %d superpixels, local fit R^2 %.3f", label, lookup.size, explanation.score)

    return LimeResult(
        label=label,
        weights=lookup[segments],
        segments=segments.astype(np.int32),
        probabilities=probabilities.astype(np.float32),
        score=float(explanation.score),
        intercept=float(explanation.intercept[label]),
    )


def _classifier(model: nn.Module, norm: Normalisation, batch_size: int, total: int,
                progress: ProgressCallback | None) -> Callable[[np.ndarray], np.ndarray]:
    device = model_device(model)
    done = 0

    def classify(batch: np.ndarray) -> np.ndarray:
        nonlocal done
        inputs = to_input_tensor(np.asarray(batch, dtype=np.uint8), norm, device)
        probabilities = predict_probabilities(model, inputs, batch_size)
        done += batch.shape[0]
        if progress is not None:
            progress(min(done, total), total)
        return probabilities

    return classify
