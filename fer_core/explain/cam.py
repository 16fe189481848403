"""Class activation maps from the Grad-CAM family (pytorch-grad-cam), one target per image.

`compute_cam` wraps pytorch-grad-cam 1.5 and guards against its pitfalls:

- every image gets its own class target, because the library silently explains only the
  first image when the target list is shorter;
- hooks are released after each batch;
- the model's train/eval flags, requires_grad flags and gradients come back unchanged;
- frozen backbones work, because gradients flow to the input instead of the parameters.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from fer_core.constants import Backbone
from fer_core.explain.common import (
    as_class_index,
    check_label,
    class_score_model,
    freeze_for_explanation,
    model_device,
    preserved_state,
)
from fer_core.models import get_spec, resolve_layer

logger = logging.getLogger(__name__)

DEFAULT_CAM_BATCH_SIZE = 16
# ScoreCAM scores one masked copy of the image per channel; it forwards them in batches of this size.
SCORECAM_BATCH_SIZE = 64


class CamMethod(str, enum.Enum):
    """Class activation map method.

    GRADCAM weights channels by their mean gradient; GRADCAM_PLUSPLUS uses higher-order
    gradient terms; HIRESCAM multiplies gradients and activations element-wise, so its map
    follows the class score exactly; LAYERCAM weights each position by its positive gradient.
    SCORECAM needs no gradients but runs one forward pass per channel of the layer (2048 for
    ResNet50's layer4), so it is slow on a CPU. EIGENCAM is the first principal component of
    the activations and ignores the class, so every label gets the same map. The component's
    sign is arbitrary, so an EigenCAM map may highlight the complement of the salient region.
    """

    GRADCAM = "gradcam"
    GRADCAM_PLUSPLUS = "gradcam++"
    HIRESCAM = "hirescam"
    LAYERCAM = "layercam"
    SCORECAM = "scorecam"
    EIGENCAM = "eigencam"

    @property
    def uses_gradients(self) -> bool:
        """Return True when the method back-propagates the class score."""
        return self not in (CamMethod.SCORECAM, CamMethod.EIGENCAM)

    @property
    def class_specific(self) -> bool:
        """Return True when the map depends on the explained class."""
        return self is not CamMethod.EIGENCAM


_CAM_CLASSES: dict[CamMethod, type[BaseCAM]] = {
    CamMethod.GRADCAM: GradCAM,
    CamMethod.GRADCAM_PLUSPLUS: GradCAMPlusPlus,
    CamMethod.HIRESCAM: HiResCAM,
    CamMethod.LAYERCAM: LayerCAM,
    CamMethod.SCORECAM: ScoreCAM,
    CamMethod.EIGENCAM: EigenCAM,
}


class _ClassTarget(ClassifierOutputTarget):
    """Class-score target that rejects an out-of-range class with a clear message.

    pytorch-grad-cam's context manager swallows IndexError, so an invalid class must
    surface as ValueError instead.
    """

    def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
        check_label(self.category, model_output.shape[-1])
        return super().__call__(model_output)


def default_layer(backbone: Backbone | str) -> str:
    """Return the registry's default Grad-CAM layer of a backbone, as a dotted module name."""
    return get_spec(backbone).gradcam_layer


def compute_cam(model: nn.Module, images: torch.Tensor, labels: Sequence[int], method: CamMethod | str,
                layer: str, batch_size: int = DEFAULT_CAM_BATCH_SIZE) -> np.ndarray:
    """Compute one class activation map per image, scaled to [0, 1] per image.

    `images` are normalised (B, 3, H, W) model inputs, `labels` contains one class index per
    image, and `layer` is the dotted name of the target module (see `default_layer` and
    `candidate_layers`). Returns a float32 array (B, H, W). `batch_size` is the number of
    images per forward pass. A map is all zero only when no position of the layer supports
    the class, and a warning is logged then.

    >>> model = build_model("resnet50", 2, pretrained=False)  # doctest: +SKIP
    >>> compute_cam(model, torch.zeros(2, 3, 64, 64), [0, 1], "gradcam", "layer4").shape  # doctest: +SKIP
    (2, 64, 64)
    """
    method = CamMethod(method)
    _check_images(images)
    labels = _check_label_count(labels, images.shape[0])
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, received {batch_size}")
    target_layer = resolve_layer(model, layer)
    device = model_device(model)

    maps = []
    with preserved_state(model):
        freeze_for_explanation(model)
        scorer = class_score_model(model)
        for start in range(0, len(labels), batch_size):
            chunk = images[start:start + batch_size].detach().to(device)
            if method.uses_gradients:
                chunk = chunk.clone().requires_grad_(True)
            maps.append(_cam_batch(scorer, target_layer, method, chunk, labels[start:start + batch_size]))

    result = np.clip(np.concatenate(maps), 0.0, 1.0).astype(np.float32)
    _warn_about_empty_maps(result, labels, method, layer)
    return result


def _cam_batch(scorer: nn.Module, target_layer: nn.Module, method: CamMethod, chunk: torch.Tensor,
               labels: list[int]) -> np.ndarray:
    targets = [_ClassTarget(label) for label in labels]

    # The context manager removes the forward hooks even when the call raises.
    with _CAM_CLASSES[method](model=scorer, target_layers=[target_layer]) as cam:
        cam.batch_size = SCORECAM_BATCH_SIZE
        maps = cam(input_tensor=chunk, targets=targets)
        num_classes = cam.outputs.shape[-1]
        cam.outputs = None

    # EigenCAM never calls its targets, so check the labels against the model here too.
    for label in labels:
        check_label(label, num_classes)

    if not np.isfinite(maps).all():
        logger.warning("%s produced non-finite values for labels %s; they are set to 0", method.value, labels)
        maps = np.nan_to_num(maps, nan=0.0, posinf=0.0, neginf=0.0)
    return maps


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor of shape (B, 3, H, W), received {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W), received {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError("images is an empty batch; pass at least one image")
    if not torch.is_floating_point(images):
        raise ValueError(f"images must be normalised float tensors, received dtype {images.dtype}")


def _check_label_count(labels: Sequence[int], batch: int) -> list[int]:
    labels = list(labels)
    if len(labels) != batch:
        raise ValueError(f"expected one label per image: {batch} images but {len(labels)} labels")
    return [as_class_index(label) for label in labels]


def _warn_about_empty_maps(maps: np.ndarray, labels: list[int], method: CamMethod, layer: str) -> None:
    empty = [index for index, heatmap in enumerate(maps) if not heatmap.any()]
    if empty:
        logger.warning(
            "%s maps at layer %s are all zero for %d of %d images (indices %s, labels %s): "
            "no position of that layer raises the class score; try another layer or method",
            method.value, layer, len(empty), len(maps), empty[:10], [labels[index] for index in empty[:10]],
        )


def candidate_layers(model: nn.Module, input_size: int = 224) -> list[str]:
    """List the dotted names of layers that can serve as Grad-CAM targets, in model order.

    A candidate is a convolution, or a block that contains one, whose output on an
    `input_size` input is a 4-D map larger than 1x1. One forward pass without gradients
    finds them; the model's state is left unchanged.
    """
    spatial: set[str] = set()
    with preserved_state(model), torch.no_grad():
        handles = [
            module.register_forward_hook(_spatial_recorder(name, spatial))
            for name, module in model.named_modules()
            if name and _contains_conv(module)
        ]
        try:
            model.eval()
            model(torch.zeros(1, 3, input_size, input_size, device=model_device(model)))
        finally:
            for handle in handles:
                handle.remove()

    return [name for name, _ in model.named_modules() if name in spatial]


def _contains_conv(module: nn.Module) -> bool:
    return any(isinstance(child, nn.Conv2d) for child in module.modules())


def _spatial_recorder(name: str, found: set[str]) -> Callable[[nn.Module, tuple, object], None]:
    def record(module: nn.Module, inputs: tuple, output: object) -> None:
        if isinstance(output, torch.Tensor) and output.ndim == 4 and output.shape[-1] * output.shape[-2] > 1:
            found.add(name)

    return record
