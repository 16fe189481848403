"""Helpers for the explanation tests: tiny input sizes, seeded random-init models, face batches."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fer_core.constants import Backbone
from fer_core.explain.common import to_input_tensor
from fer_core.models import build_model, get_spec

# InceptionResnetV1 needs 96 px: at 64 px its later blocks shrink below their kernels.
TINY_INPUT = {Backbone.ALEXNET: 64, Backbone.SQUEEZENET: 64, Backbone.RESNET50: 64, Backbone.VGGFACE2: 96}


@dataclass(frozen=True)
class TinyNorm:
    """A backbone's normalisation at a test-sized input."""

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def tiny_norm(backbone: Backbone) -> TinyNorm:
    """Return the backbone's mean and std with the tiny test input size."""
    spec = get_spec(backbone)
    return TinyNorm(TINY_INPUT[backbone], spec.mean, spec.std)


def tiny_model(backbone: Backbone, num_classes: int = 2, seed: int = 0) -> nn.Module:
    """Build a random-init backbone with a fixed seed, in eval mode."""
    torch.manual_seed(seed)
    return build_model(backbone, num_classes, pretrained=False).eval()


def face_batch(faces: list[np.ndarray], backbone: Backbone) -> torch.Tensor:
    """Return the faces as a normalised batch at the backbone's tiny input size."""
    return torch.cat([to_input_tensor(face, tiny_norm(backbone)) for face in faces])
