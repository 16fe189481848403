"""Backbone registry: builders, heads, layers and the real pretrained-weight loader."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fer_core.constants import Backbone
from fer_core.models import (
    BACKBONES,
    VGGFACE2_CLASSES,
    WeightsNotFoundError,
    build_model,
    get_spec,
    pick_device,
    resolve_layer,
)

TINY_INPUT = {Backbone.ALEXNET: 64, Backbone.SQUEEZENET: 64, Backbone.RESNET50: 64, Backbone.VGGFACE2: 96}


@pytest.fixture()
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point torch's cache at an empty folder, as on a machine that never downloaded anything."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setenv("FER_STUDIO_OFFLINE", "1")
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(home / "hub"))
    yield home
    torch.hub.set_dir(previous)


def test_registry_covers_every_backbone():
    assert set(BACKBONES) == set(Backbone)


@pytest.mark.parametrize("backbone", list(Backbone))
def test_build_from_scratch_outputs_classes(backbone: Backbone):
    model = build_model(backbone, 3, pretrained=False).eval()
    size = TINY_INPUT[backbone]

    with torch.no_grad():
        output = model(torch.zeros(2, 3, size, size))

    assert output.shape == (2, 3)


@pytest.mark.parametrize("backbone", list(Backbone))
def test_default_gradcam_layer_exists(backbone: Backbone):
    model = build_model(backbone, 2, pretrained=False)

    layer = resolve_layer(model, get_spec(backbone).gradcam_layer)

    assert isinstance(layer, torch.nn.Module)


def test_unknown_layer_lists_top_level_layers():
    model = build_model(Backbone.SQUEEZENET, 2, pretrained=False)

    with pytest.raises(ValueError, match="features"):
        resolve_layer(model, "no_such_layer")


def test_unknown_backbone_names_choices():
    with pytest.raises(ValueError, match="resnet50"):
        get_spec("vgg16")


def test_single_class_rejected():
    with pytest.raises(ValueError, match="at least 2"):
        build_model(Backbone.SQUEEZENET, 1, pretrained=False)


@pytest.mark.parametrize("backbone", [Backbone.SQUEEZENET, Backbone.VGGFACE2])
def test_pretrained_loads_cached_state_dict(backbone: Backbone, torch_home: Path):
    spec = get_spec(backbone)
    original_classes = VGGFACE2_CLASSES if backbone is Backbone.VGGFACE2 else 1000
    reference = spec.build(original_classes)
    # torchvision caches under $TORCH_HOME/hub/checkpoints, facenet-pytorch under $TORCH_HOME/checkpoints.
    cache = torch_home / ("checkpoints" if backbone is Backbone.VGGFACE2 else "hub/checkpoints")
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / spec.weights_file)

    model = build_model(backbone, 2, pretrained=True)

    first_name, first_tensor = next(iter(reference.state_dict().items()))
    assert torch.equal(model.state_dict()[first_name], first_tensor)


def test_pretrained_head_is_replaced(torch_home: Path):
    spec = get_spec(Backbone.SQUEEZENET)
    cache = torch_home / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(spec.build(1000).state_dict(), cache / spec.weights_file)

    model = build_model(Backbone.SQUEEZENET, 4, pretrained=True).eval()

    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 4)


def test_weights_dir_searched_first(torch_home: Path, tmp_path: Path):
    spec = get_spec(Backbone.SQUEEZENET)
    weights_dir = tmp_path / "my_weights"
    weights_dir.mkdir()
    reference = spec.build(1000)
    torch.save(reference.state_dict(), weights_dir / spec.weights_file)

    model = build_model(Backbone.SQUEEZENET, 2, pretrained=True, weights_dir=weights_dir)

    assert torch.equal(model.features[0].weight, reference.features[0].weight)


def test_missing_weights_error_says_file_folder_and_url(torch_home: Path):
    spec = get_spec(Backbone.RESNET50)

    with pytest.raises(WeightsNotFoundError) as raised:
        build_model(Backbone.RESNET50, 2, pretrained=True)

    message = str(raised.value)
    assert spec.weights_file in message
    assert str(torch_home / "hub" / "checkpoints") in message
    assert spec.weights_url in message


def test_corrupt_weights_file_reported(torch_home: Path):
    spec = get_spec(Backbone.SQUEEZENET)
    cache = torch_home / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / spec.weights_file).write_bytes(b"not a checkpoint")

    with pytest.raises(WeightsNotFoundError, match="not a readable checkpoint"):
        build_model(Backbone.SQUEEZENET, 2, pretrained=True)


def test_mismatched_weights_file_reported(torch_home: Path):
    spec = get_spec(Backbone.SQUEEZENET)
    cache = torch_home / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save({"unrelated.weight": torch.zeros(1)}, cache / spec.weights_file)

    with pytest.raises(WeightsNotFoundError, match="does not match"):
        build_model(Backbone.SQUEEZENET, 2, pretrained=True)


def test_cuda_request_without_gpu_rejected():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")

    with pytest.raises(ValueError, match="CUDA is not available"):
        pick_device("cuda")


def test_auto_device_is_usable():
    device = pick_device("auto")

    assert torch.zeros(1, device=device).device.type == device.type


def test_squeezenet_scores_can_be_negative():
    model = build_model(Backbone.SQUEEZENET, 2, pretrained=False)

    assert not any(isinstance(layer, torch.nn.ReLU) for layer in model.classifier)


@pytest.mark.parametrize("backbone", list(Backbone))
def test_min_input_size_runs(backbone: Backbone):
    model = build_model(backbone, 2, pretrained=False).eval()
    size = get_spec(backbone).min_input_size

    with torch.no_grad():
        assert model(torch.zeros(2, 3, size, size)).shape == (2, 2)


def test_malformed_device_rejected():
    with pytest.raises(ValueError, match="cuda:x"):
        pick_device("cuda:x")
