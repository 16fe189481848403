"""Backbone registry: builders, input sizes, normalisation, Grad-CAM layers and weight loading.

Every backbone is registered once in `BACKBONES` with the facts that training, evaluation and
explanation need. Pretrained weights come from a user-given folder or the usual torch cache and
are downloaded only when the machine is online. Offline with no file, `WeightsNotFoundError`
names the file, the folders searched and the URL to fetch it from.
"""

from __future__ import annotations

import logging
import os
import pickle
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from fer_core.constants import FACENET_MEAN, FACENET_STD, IMAGENET_MEAN, IMAGENET_STD, Backbone

logger = logging.getLogger(__name__)

VGGFACE2_URL = "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180402-114759-vggface2.pt"
# ImageNet checkpoints classify 1000 classes.
IMAGENET_CLASSES = 1000
# VGGFace2 has 8631 identities; the pretrained checkpoint's logits layer has that many outputs.
VGGFACE2_CLASSES = 8631


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights are not on disk and could not be downloaded."""


@dataclass(frozen=True)
class BackboneSpec:
    """Facts about one backbone: how to build it and how to feed and explain it."""

    backbone: Backbone
    display_name: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    gradcam_layer: str
    weights_url: str
    build: Callable[[int], nn.Module]
    replace_head: Callable[[nn.Module, int], None]
    # Smallest input side in pixels that the network accepts, measured with torch 2.14 and
    # rounded up: AlexNet fails below 63 px, InceptionResnetV1 below 75 px.
    min_input_size: int = 32

    @property
    def weights_file(self) -> str:
        """Return the checkpoint's file name, as the torch cache stores it."""
        return self.weights_url.rsplit("/", 1)[-1]


def _replace_alexnet_head(model: nn.Module, num_classes: int) -> None:
    model.classifier[6] = nn.Linear(model.classifier[6].in_features, num_classes)


def _replace_squeezenet_head(model: nn.Module, num_classes: int) -> None:
    model.classifier[1] = nn.Conv2d(model.classifier[1].in_channels, num_classes, kernel_size=1)
    model.num_classes = num_classes
    _drop_squeezenet_logit_relu(model)


def _drop_squeezenet_logit_relu(model: nn.Module) -> None:
    """Remove the ReLU that torchvision's SqueezeNet applies to its class scores.

    Clamped at zero, the scores of a new head can all reach 0, where the gradient vanishes
    and training stays at chance: seen training from scratch on the London faces, where the
    loss stayed at ln 2 for every epoch. The ReLU has no weights, so pretrained checkpoints
    still load, and Grad-CAM gets signed class scores to follow.
    """
    model.classifier[2] = nn.Identity()


def _build_squeezenet(num_classes: int) -> nn.Module:
    model = torchvision.models.squeezenet1_1(weights=None, num_classes=num_classes)
    _drop_squeezenet_logit_relu(model)
    return model


def _replace_resnet_head(model: nn.Module, num_classes: int) -> None:
    model.fc = nn.Linear(model.fc.in_features, num_classes)


def _replace_facenet_head(model: nn.Module, num_classes: int) -> None:
    model.logits = nn.Linear(model.logits.in_features, num_classes)
    model.num_classes = num_classes


def _build_inception_resnet(num_classes: int) -> nn.Module:
    from facenet_pytorch import InceptionResnetV1

    # pretrained=None: facenet-pytorch would otherwise download inside the constructor;
    # weights are loaded by `load_pretrained` instead, which works offline.
    return InceptionResnetV1(pretrained=None, classify=True, num_classes=num_classes)


# Default Grad-CAM layers. Each is the last convolutional stage that still has a spatial map
# fine enough to tell the eyes from the mouth on a face crop:
# - AlexNet "features.10": the last convolution (13x13 at 224 px); the pooling after it halves
#   the map to 6x6.
# - SqueezeNet "features.12": the last Fire module (13x13), the last layer before the classifier.
# - ResNet50 "layer4": the last residual stage (7x7), the usual choice.
# - InceptionResnetV1 "repeat_2": the Block17 stack (8x8 at 160 px). The later block8 is only
#   3x3 at 160 px, too coarse to separate the upper face from the mask region.
BACKBONES: dict[Backbone, BackboneSpec] = {
    Backbone.ALEXNET: BackboneSpec(
        backbone=Backbone.ALEXNET,
        display_name="AlexNet",
        input_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        gradcam_layer="features.10",
        weights_url=torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url,
        build=lambda num_classes: torchvision.models.alexnet(weights=None, num_classes=num_classes),
        replace_head=_replace_alexnet_head,
        min_input_size=64,
    ),
    Backbone.SQUEEZENET: BackboneSpec(
        backbone=Backbone.SQUEEZENET,
        display_name="SqueezeNet 1.1",
        input_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        gradcam_layer="features.12",
        weights_url=torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1.url,
        build=_build_squeezenet,
        replace_head=_replace_squeezenet_head,
    ),
    Backbone.RESNET50: BackboneSpec(
        backbone=Backbone.RESNET50,
        display_name="ResNet50",
        input_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        gradcam_layer="layer4",
        weights_url=torchvision.models.ResNet50_Weights.IMAGENET1K_V2.url,
        build=lambda num_classes: torchvision.models.resnet50(weights=None, num_classes=num_classes),
        replace_head=_replace_resnet_head,
    ),
    Backbone.VGGFACE2: BackboneSpec(
        backbone=Backbone.VGGFACE2,
        display_name="InceptionResnetV1 (VGGFace2)",
        input_size=160,
        mean=FACENET_MEAN,
        std=FACENET_STD,
        gradcam_layer="repeat_2",
        weights_url=VGGFACE2_URL,
        build=_build_inception_resnet,
        replace_head=_replace_facenet_head,
        min_input_size=80,
    ),
}


def get_spec(backbone: Backbone | str) -> BackboneSpec:
    """Return the registered spec of a backbone, given as enum or its string value."""
    try:
        return BACKBONES[Backbone(backbone)]
    except ValueError:
        known = ", ".join(b.value for b in Backbone)
        raise ValueError(f"unknown backbone {backbone!r}; expected one of: {known}") from None


def torch_cache_dirs() -> list[Path]:
    """Return the folders where torchvision and facenet-pytorch cache checkpoints."""
    hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
    # facenet-pytorch caches under $TORCH_HOME/checkpoints, one level above torch.hub's folder.
    facenet_dir = Path(torch.hub.get_dir()).parent / "checkpoints"
    return [hub_dir, facenet_dir]


def find_weights_file(spec: BackboneSpec, weights_dir: Path | None = None) -> Path | None:
    """Return the first existing checkpoint file for the backbone, or None."""
    folders = ([Path(weights_dir)] if weights_dir is not None else []) + torch_cache_dirs()
    for folder in folders:
        candidate = folder / spec.weights_file
        if candidate.is_file():
            return candidate
    return None


def _download_weights(spec: BackboneSpec) -> Path:
    target = torch_cache_dirs()[0] / spec.weights_file
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("downloading %s weights from %s to %s", spec.display_name, spec.weights_url, target)
    try:
        # download_url_to_file writes to a temporary file and moves it into place.
        torch.hub.download_url_to_file(spec.weights_url, str(target), progress=False)
    except (urllib.error.URLError, OSError, TimeoutError) as error:
        raise _missing_weights_error(spec, reason=f"download failed ({error})") from error
    return target


def _missing_weights_error(spec: BackboneSpec, reason: str) -> WeightsNotFoundError:
    folders = ", ".join(str(folder) for folder in torch_cache_dirs())
    return WeightsNotFoundError(
        f"pretrained weights for {spec.display_name} are missing: {reason}. "
        f"Download {spec.weights_url} and save it as {spec.weights_file} in {torch_cache_dirs()[0]} "
        f"(searched: {folders}, and the weights folder if one was given), "
        "or choose training from scratch."
    )


def load_pretrained(model: nn.Module, spec: BackboneSpec, weights_dir: Path | None = None,
                    download: bool | None = None) -> Path:
    """Load the backbone's pretrained state dict into `model` and return the file used.

    The model must still have its original head (1000 ImageNet classes, or VGGFace2's 8631
    identities). Downloads only when `download` is true; None means "unless
    FER_STUDIO_OFFLINE=1 is set".
    """
    path = find_weights_file(spec, weights_dir)
    if path is None:
        if download is None:
            download = os.environ.get("FER_STUDIO_OFFLINE", "0") != "1"
        if not download:
            raise _missing_weights_error(spec, reason="no file found and downloads are off")
        path = _download_weights(spec)

    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as error:
        raise WeightsNotFoundError(
            f"{path} is not a readable checkpoint ({error}); delete it and download "
            f"{spec.weights_url} again"
        ) from error

    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        raise WeightsNotFoundError(
            f"{path} does not match the {spec.display_name} architecture ({error}); "
            f"replace it with the file from {spec.weights_url}"
        ) from error
    logger.info("loaded %s weights from %s", spec.display_name, path)
    return path


def build_model(backbone: Backbone | str, num_classes: int, *, pretrained: bool,
                weights_dir: Path | None = None, download: bool | None = None) -> nn.Module:
    """Build a backbone with a new `num_classes` head, from pretrained weights or from scratch.

    Training from scratch is an explicit choice (`pretrained=False`): when pretrained weights
    are requested but missing, `WeightsNotFoundError` is raised rather than falling back.

    >>> model = build_model("squeezenet1_1", 2, pretrained=False)
    >>> model(torch.zeros(1, 3, 64, 64)).shape
    torch.Size([1, 2])
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    spec = get_spec(backbone)

    if not pretrained:
        logger.info("building %s from scratch with %d classes", spec.display_name, num_classes)
        return spec.build(num_classes)

    original_classes = VGGFACE2_CLASSES if spec.backbone is Backbone.VGGFACE2 else IMAGENET_CLASSES
    model = spec.build(original_classes)
    load_pretrained(model, spec, weights_dir=weights_dir, download=download)
    spec.replace_head(model, num_classes)
    return model


def resolve_layer(model: nn.Module, dotted_name: str) -> nn.Module:
    """Return the submodule at a dotted path such as "layer4" or "features.10"."""
    try:
        return model.get_submodule(dotted_name)
    except AttributeError:
        names = [name for name, _ in model.named_children()]
        raise ValueError(
            f"layer {dotted_name!r} not found in {type(model).__name__}; top-level layers: {names}"
        ) from None


def pick_device(requested: str = "auto") -> torch.device:
    """Return the torch device for "auto", "cpu", "cuda" or "cuda:N".

    "auto" takes the first GPU when CUDA is available. Asking for CUDA on a machine without it
    raises ValueError rather than silently running on the CPU.
    """
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ValueError(f"invalid device {requested!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} requested but CUDA is not available here; use 'cpu' or 'auto'")
    return device


def describe_device(device: torch.device) -> str:
    """Return a readable name such as "NVIDIA H200" or "CPU (2 threads)"."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"
