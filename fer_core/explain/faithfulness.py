"""Faithfulness scores: does removing what a map calls important change the model's answer?

Two families, both for any (H, W) map, whether from a CAM method or LIME:

- Deletion and insertion curves (Petsiuk et al., RISE, BMVC 2018): pixels are removed
  (deletion, replaced by the mean colour) or revealed (insertion, starting from a blurred
  copy) in order of decreasing relevance, and the class probability is tracked. A faithful
  map gives a low deletion AUC and a high insertion AUC.
- ROAD (Rong et al., ICML 2022, through pytorch_grad_cam.metrics.road): pixels are
  imputed from their neighbours instead of blanked, which avoids rewarding maps for
  creating out-of-distribution edges. For each of several percentiles, the combined
  score takes the probability drop when the least relevant pixels are removed minus the
  drop when the most relevant are removed. It averages these values, and higher is more
  faithful.

Ties in a map (flat CAM regions, LIME superpixels) are broken at random with a fixed seed,
so pixels are not removed in row order.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pytorch_grad_cam.metrics.road import ROADCombined
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
from torch import nn
from torch.nn import functional
from torchvision.transforms.functional import gaussian_blur

from fer_core.explain.common import (
    check_label,
    model_device,
    predict_probabilities,
    preserved_state,
)

logger = logging.getLogger(__name__)

DEFAULT_CURVE_STEPS = 20
# Four percentiles instead of ROAD's default nine, because each percentile costs two sparse
# linear solves per image.
DEFAULT_ROAD_PERCENTILES = (20, 40, 60, 80)
# Gaussian blur of the insertion baseline, as a fraction of the image side.
INSERTION_BLUR_FRACTION = 0.05


@dataclass(frozen=True)
class FaithfulnessScores:
    """Faithfulness of one map: deletion AUC (lower is better), insertion AUC and ROAD (higher is better)."""

    deletion_auc: float
    insertion_auc: float
    road_combined: float


def deletion_insertion(model: nn.Module, images: torch.Tensor, heatmaps: np.ndarray, labels: Sequence[int],
                       steps: int = DEFAULT_CURVE_STEPS, batch_size: int = 32,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return per-image deletion and insertion curves, each (B, steps + 1) class probabilities.

    Step k has removed (deletion) or revealed (insertion) k / steps of the pixels. Use
    `curve_auc` to turn a curve into its area under the curve.
    """
    heatmaps = _check_inputs(images, heatmaps, labels)
    if steps < 1:
        raise ValueError(f"steps must be at least 1, received {steps}")
    rng = np.random.default_rng(seed)
    blurred = _blur(images)

    deletion, insertion = [], []
    with preserved_state(model):
        model.eval()
        for index, label in enumerate(labels):
            order = _relevance_order(heatmaps[index], rng)
            image = images[index].detach().cpu()
            removed = _progressive(image, torch.zeros_like(image), order, steps)
            revealed = _progressive(blurred[index], image, order, steps)
            deletion.append(_class_probabilities(model, removed, label, batch_size))
            insertion.append(_class_probabilities(model, revealed, label, batch_size))
    return np.stack(deletion), np.stack(insertion)


def curve_auc(curves: np.ndarray) -> np.ndarray:
    """Return the area under (B, steps + 1) curves sampled evenly on [0, 1]."""
    curves = np.atleast_2d(curves)
    return np.trapezoid(curves, dx=1.0 / (curves.shape[1] - 1), axis=1)


def road_combined(model: nn.Module, images: torch.Tensor, heatmaps: np.ndarray, labels: Sequence[int],
                  percentiles: Sequence[int] = DEFAULT_ROAD_PERCENTILES, seed: int = 0) -> np.ndarray:
    """Return the ROAD combined score per image, on the softmax probability of each label.

    ROAD's imputer adds random noise, which is seeded, so the same inputs give the same scores.
    """
    heatmaps = _check_inputs(images, heatmaps, labels)
    device = model_device(model)
    targets = [ClassifierOutputSoftmaxTarget(label) for label in labels]
    metric = ROADCombined(percentiles=list(percentiles))

    with preserved_state(model), torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        model.eval()
        torch.manual_seed(seed)
        # grad-cam 1.5.7's ROAD passes torch tensors through np.float32, which NumPy 2 flags.
        warnings.filterwarnings("ignore", message="__array_wrap__ must accept context", category=DeprecationWarning)
        scores = metric(images.detach().to(device), heatmaps.astype(np.float32), targets, model)
    return np.asarray(scores, dtype=np.float64).reshape(-1)


def faithfulness_scores(model: nn.Module, images: torch.Tensor, heatmaps: np.ndarray, labels: Sequence[int],
                        steps: int = DEFAULT_CURVE_STEPS, percentiles: Sequence[int] = DEFAULT_ROAD_PERCENTILES,
                        batch_size: int = 32, seed: int = 0) -> list[FaithfulnessScores]:
    """Return deletion AUC, insertion AUC and ROAD for each image's map."""
    deletion, insertion = deletion_insertion(model, images, heatmaps, labels, steps, batch_size, seed)
    road = road_combined(model, images, heatmaps, labels, percentiles, seed)
    return [
        FaithfulnessScores(float(d), float(i), float(r))
        for d, i, r in zip(curve_auc(deletion), curve_auc(insertion), road)
    ]


def resize_map(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an (h, w) map to (H, W) with bilinear interpolation, keeping float values."""
    tensor = torch.from_numpy(np.asarray(heatmap, dtype=np.float32))[None, None]
    if tuple(tensor.shape[-2:]) == tuple(size):
        return tensor[0, 0].numpy().copy()
    return functional.interpolate(tensor, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def _check_inputs(images: torch.Tensor, heatmaps: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    if images.ndim != 4:
        raise ValueError(f"images must have shape (B, 3, H, W), received {tuple(images.shape)}")
    heatmaps = np.asarray(heatmaps, dtype=np.float32)
    expected = (images.shape[0], images.shape[2], images.shape[3])
    if heatmaps.shape != expected:
        raise ValueError(f"heatmaps must have shape {expected} to match the images, received {heatmaps.shape}; "
                         "resize them with resize_map")
    if len(labels) != images.shape[0]:
        raise ValueError(f"expected one label per image: {images.shape[0]} images but {len(labels)} labels")
    return heatmaps


def _relevance_order(heatmap: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    flat = heatmap.reshape(-1)
    tie_breaker = rng.random(flat.size)
    # lexsort sorts by the last key first: decreasing relevance, then the random tie breaker.
    return np.lexsort((tie_breaker, -flat))


def _progressive(start: torch.Tensor, end: torch.Tensor, order: np.ndarray, steps: int) -> torch.Tensor:
    channels, height, width = start.shape
    pixels = height * width
    rank = torch.empty(pixels, dtype=torch.long)
    rank[torch.from_numpy(order)] = torch.arange(pixels)

    frames = []
    for step in range(steps + 1):
        changed = (rank < round(pixels * step / steps)).view(1, height, width)
        frames.append(torch.where(changed, end, start))
    return torch.stack(frames)


def _blur(images: torch.Tensor) -> torch.Tensor:
    side = images.shape[-1]
    sigma = max(1.0, INSERTION_BLUR_FRACTION * side)
    kernel = int(2 * round(3 * sigma) + 1)
    return gaussian_blur(images.detach().cpu(), kernel_size=[kernel, kernel], sigma=[sigma, sigma])


def _class_probabilities(model: nn.Module, frames: torch.Tensor, label: int, batch_size: int) -> np.ndarray:
    probabilities = predict_probabilities(model, frames, batch_size)
    label = check_label(label, probabilities.shape[1])
    return probabilities[:, label]
