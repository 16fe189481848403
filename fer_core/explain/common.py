"""Pieces that every explainer shares: input preprocessing, model state, class scores."""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from collections.abc import Iterator
from typing import Protocol

import numpy as np
import torch
import torchvision
from torch import nn

from fer_core.training import build_transform

logger = logging.getLogger(__name__)


class Normalisation(Protocol):
    """Anything that states a model's input size and normalisation.

    `models.BackboneSpec` and `runs.TrainedModel` both qualify.
    """

    @property
    def input_size(self) -> int: ...

    @property
    def mean(self) -> tuple[float, float, float]: ...

    @property
    def std(self) -> tuple[float, float, float]: ...


def as_rgb_batch(images: np.ndarray) -> np.ndarray:
    """Return uint8 images as an (N, H, W, 3) array; accept (H, W), (H, W, 3) or (N, H, W[, 3])."""
    array = np.asarray(images)
    if array.dtype != np.uint8:
        raise ValueError(f"expected uint8 images with values 0-255, received dtype {array.dtype}")

    if array.ndim == 2:
        array = array[None, :, :, None]
    elif array.ndim == 3 and array.shape[-1] in (1, 3):
        array = array[None]
    elif array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3):
        raise ValueError(
            f"expected an image of shape (H, W) or (H, W, 3), or a batch of them, received {np.shape(images)}"
        )

    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return array


def to_input_tensor(images: np.ndarray, norm: Normalisation, device: torch.device | str = "cpu") -> torch.Tensor:
    """Turn uint8 RGB or greyscale images into a normalised (N, 3, S, S) float tensor.

    Uses the training pipeline without augmentation (`training.build_transform`), which
    resizes uint8 pixels with antialiasing and then normalises, so explanations see exactly
    the pixels the model was trained and tested on.
    """
    # np.array copies, so read-only arrays (such as views of PIL images) are fine.
    batch = torch.from_numpy(np.array(as_rgb_batch(images))).permute(0, 3, 1, 2)
    transform = build_transform(int(norm.input_size), tuple(norm.mean), tuple(norm.std), augment=False)
    return transform(batch).to(device)


def model_device(model: nn.Module) -> torch.device:
    """Return the device of the model's first parameter, or the CPU for a model without any."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


_MODEL_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_MODEL_LOCKS_GUARD = threading.Lock()


def _model_lock(model: nn.Module) -> threading.RLock:
    with _MODEL_LOCKS_GUARD:
        lock = _MODEL_LOCKS.get(model)
        if lock is None:
            lock = _MODEL_LOCKS[model] = threading.RLock()
        return lock


@contextlib.contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Hold the model's lock and restore its train/eval flags, requires_grad flags and grads on exit.

    pytorch-grad-cam puts the model in eval mode and clears its gradients, and the
    explainers switch gradients off on parameters. Callers get their model back unchanged.
    The per-model lock serialises explanations of one model shared between threads (such as
    dashboard sessions), so one call never restores flags while another is still running.
    """
    with _model_lock(model):
        training = [(module, module.training) for module in model.modules()]
        parameters = [(parameter, parameter.requires_grad, parameter.grad) for parameter in model.parameters()]
        try:
            yield
        finally:
            for module, flag in training:
                module.training = flag
            for parameter, requires_grad, grad in parameters:
                parameter.requires_grad_(requires_grad)
                parameter.grad = grad


def freeze_for_explanation(model: nn.Module) -> None:
    """Switch the model to eval mode and turn parameter gradients off.

    Use inside `preserved_state`. Gradients then flow only to the input and the activations,
    so frozen backbones work and explaining never writes into parameter .grad fields.
    """
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)


class _PreReluSqueezeNet(nn.Module):
    """SqueezeNet that returns its class scores before the classifier's final ReLU."""

    def __init__(self, model: torchvision.models.SqueezeNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.model.features(x)
        class_maps = self.model.classifier[1](self.model.classifier[0](features))
        return class_maps.mean(dim=(2, 3))


def class_score_model(model: nn.Module) -> nn.Module:
    """Return a module whose outputs are the class scores that gradient explainers should follow.

    torchvision's SqueezeNet ends in Conv2d, ReLU and average pooling. A class whose score map
    is negative everywhere gets logit 0 and zero gradient, so its Grad-CAM map would be all
    zero. For SqueezeNet this returns a view with the same parameters and layer objects that
    averages the class maps before that ReLU. Any other model is returned unchanged.
    """
    if isinstance(model, torchvision.models.SqueezeNet) and isinstance(model.classifier[2], nn.ReLU):
        return _PreReluSqueezeNet(model)
    return model


def predict_probabilities(model: nn.Module, inputs: torch.Tensor, batch_size: int) -> np.ndarray:
    """Return softmax probabilities (N, classes) for normalised inputs, in batches, without autograd."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, received {batch_size}")
    device = model_device(model)
    chunks = []
    with torch.inference_mode():
        for start in range(0, inputs.shape[0], batch_size):
            logits = model(inputs[start:start + batch_size].to(device))
            chunks.append(torch.softmax(logits.float(), dim=1).cpu())
    return torch.cat(chunks).numpy()


def as_class_index(label: int) -> int:
    """Return the label as int, or raise ValueError when it is not a non-negative integer."""
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or label < 0:
        raise ValueError(f"labels must be class indices (non-negative int), received {label!r}")
    return int(label)


def check_label(label: int, num_classes: int) -> int:
    """Return the label as int, or raise ValueError when it is not a class index of the model."""
    label = as_class_index(label)
    if label >= num_classes:
        raise ValueError(f"label {label} is out of range for a model with {num_classes} classes "
                         f"(valid: 0 to {num_classes - 1})")
    return int(label)
