"""Class activation maps: every backbone and method, per-image targets, state and hook hygiene."""

from __future__ import annotations

import gc
import os
import threading

import numpy as np
import pytest
import torch
from explain_support import TINY_INPUT, face_batch, tiny_model
from torch import nn

from fer_core.constants import Backbone
from fer_core.explain.cam import CamMethod, candidate_layers, compute_cam, default_layer

# ScoreCAM runs one forward pass per channel of the layer: 2048 (ResNet50) or 896
# (InceptionResnetV1) per image take minutes on 2 CPU cores.
SLOW_SCORECAM = {Backbone.RESNET50, Backbone.VGGFACE2}
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _cases() -> list:
    cases = []
    for backbone in Backbone:
        for method in CamMethod:
            marks = [pytest.mark.slow] if method is CamMethod.SCORECAM and backbone in SLOW_SCORECAM else []
            cases.append(pytest.param(backbone, method, marks=marks, id=f"{backbone.value}-{method.value}"))
    return cases


@pytest.fixture(scope="module")
def models() -> dict[Backbone, nn.Module]:
    return {backbone: tiny_model(backbone) for backbone in Backbone}


def _predicted(model: nn.Module, images: torch.Tensor) -> list[int]:
    with torch.no_grad():
        return model(images).argmax(dim=1).tolist()


def _hook_count(model: nn.Module) -> int:
    return sum(len(module._forward_hooks) + len(module._backward_hooks) + len(module._forward_pre_hooks)
               for module in model.modules())


def _rss_bytes() -> int:
    with open("/proc/self/statm") as stream:
        return int(stream.read().split()[1]) * PAGE_SIZE


@pytest.mark.parametrize(("backbone", "method"), _cases())
def test_cam_every_backbone_and_method(models, faces, backbone, method):
    model = models[backbone]
    images = face_batch(faces, backbone)
    size = TINY_INPUT[backbone]

    maps = compute_cam(model, images, _predicted(model, images), method, default_layer(backbone), batch_size=4)

    assert maps.shape == (4, size, size)
    assert np.isfinite(maps).all()
    assert [index for index, heatmap in enumerate(maps) if not heatmap.any()] == []
    assert maps.min() >= 0.0
    assert maps.max() <= 1.0


@pytest.mark.parametrize(("backbone", "layer"), [(Backbone.RESNET50, "conv1"), (Backbone.VGGFACE2, "conv2d_1a")])
def test_scorecam_early_layer_fast(models, faces, backbone, layer):
    # An early layer has 32 to 64 channels, so ScoreCAM covers these backbones in seconds.
    model = models[backbone]
    images = face_batch(faces, backbone)

    maps = compute_cam(model, images, _predicted(model, images), CamMethod.SCORECAM, layer, batch_size=4)

    assert maps.shape == (4, TINY_INPUT[backbone], TINY_INPUT[backbone])
    assert all(heatmap.any() for heatmap in maps)


def test_cam_wrong_target_count_raises(models, faces):
    images = face_batch(faces, Backbone.ALEXNET)
    with pytest.raises(ValueError, match="4 images but 3 labels"):
        compute_cam(models[Backbone.ALEXNET], images, [0, 1, 0], CamMethod.GRADCAM, "features.10")


@pytest.mark.parametrize("method", [CamMethod.GRADCAM, CamMethod.EIGENCAM])
def test_cam_label_out_of_range_raises(models, faces, method):
    images = face_batch(faces[:1], Backbone.ALEXNET)
    with pytest.raises(ValueError, match="out of range"):
        compute_cam(models[Backbone.ALEXNET], images, [2], method, "features.10")


def test_cam_unknown_layer_raises(models, faces):
    images = face_batch(faces[:1], Backbone.ALEXNET)
    with pytest.raises(ValueError, match="not found"):
        compute_cam(models[Backbone.ALEXNET], images, [0], CamMethod.GRADCAM, "features.99")


def test_cam_batch_matches_single_images(models, faces):
    model = models[Backbone.RESNET50]
    images = face_batch(faces, Backbone.RESNET50)
    labels = [0, 1, 1, 0]

    batched = compute_cam(model, images, labels, CamMethod.GRADCAM, "layer4", batch_size=4)
    single = np.concatenate([
        compute_cam(model, images[index:index + 1], [label], CamMethod.GRADCAM, "layer4")
        for index, label in enumerate(labels)
    ])

    np.testing.assert_allclose(batched, single, atol=1e-4)


def test_cam_each_image_gets_its_label(models, faces):
    model = models[Backbone.RESNET50]
    images = face_batch(faces[:1], Backbone.RESNET50).repeat(2, 1, 1, 1)

    maps = compute_cam(model, images, [0, 1], CamMethod.HIRESCAM, "layer4")

    assert not np.allclose(maps[0], maps[1])


def test_cam_restores_train_mode(faces):
    model = tiny_model(Backbone.RESNET50).train()
    images = face_batch(faces[:2], Backbone.RESNET50)

    compute_cam(model, images, [0, 1], CamMethod.GRADCAM, "layer4")

    assert all(module.training for module in model.modules())


def test_cam_restores_requires_grad(faces):
    model = tiny_model(Backbone.ALEXNET)
    for parameter in model.features.parameters():
        parameter.requires_grad_(False)
    before = [parameter.requires_grad for parameter in model.parameters()]

    compute_cam(model, face_batch(faces[:2], Backbone.ALEXNET), [0, 1], CamMethod.GRADCAM, "features.10")

    assert [parameter.requires_grad for parameter in model.parameters()] == before


def test_cam_keeps_parameter_gradients(faces):
    model = tiny_model(Backbone.ALEXNET)
    weight = model.classifier[6].weight
    weight.grad = torch.ones_like(weight)

    compute_cam(model, face_batch(faces[:2], Backbone.ALEXNET), [0, 1], CamMethod.GRADCAM, "features.10")

    assert torch.equal(weight.grad, torch.ones_like(weight))


@pytest.mark.parametrize("method", [CamMethod.GRADCAM, CamMethod.LAYERCAM, CamMethod.GRADCAM_PLUSPLUS])
def test_cam_frozen_backbone_maps(faces, method):
    model = tiny_model(Backbone.RESNET50)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    images = face_batch(faces[:2], Backbone.RESNET50)

    maps = compute_cam(model, images, _predicted(model, images), method, "layer4")

    assert all(heatmap.any() for heatmap in maps)


def test_cam_squeezenet_dead_class_nonzero(faces):
    model = tiny_model(Backbone.SQUEEZENET)
    # The registry drops torchvision's ReLU on the class scores. Put it back, as in a
    # SqueezeNet built elsewhere, to check that the explainer reads the scores before it.
    model.classifier[2] = torch.nn.ReLU(inplace=True)
    with torch.no_grad():
        # Class 1's score map is then negative everywhere, so the final ReLU outputs 0.
        model.classifier[1].bias[1] = -1000.0
    images = face_batch(faces, Backbone.SQUEEZENET)
    with torch.no_grad():
        assert (model(images)[:, 1] == 0).all()

    maps = compute_cam(model, images, [1, 1, 1, 1], CamMethod.GRADCAM, default_layer(Backbone.SQUEEZENET))

    assert all(heatmap.any() for heatmap in maps)


def test_cam_leaves_no_hooks(models, faces):
    model = models[Backbone.ALEXNET]
    before = _hook_count(model)

    compute_cam(model, face_batch(faces, Backbone.ALEXNET), [0, 1, 0, 1], CamMethod.GRADCAM, "features.10")

    assert _hook_count(model) == before


def test_cam_leaves_no_hooks_after_error(models, faces):
    model = models[Backbone.ALEXNET]
    before = _hook_count(model)

    with pytest.raises(ValueError):
        compute_cam(model, face_batch(faces[:1], Backbone.ALEXNET), [5], CamMethod.GRADCAM, "features.10")

    assert _hook_count(model) == before


def test_cam_loop_memory_bounded(faces):
    model = tiny_model(Backbone.SQUEEZENET)
    image = face_batch(faces[:1], Backbone.SQUEEZENET)
    for _ in range(20):
        compute_cam(model, image, [0], CamMethod.GRADCAM, "features.12")
    gc.collect()
    start = _rss_bytes()

    for index in range(200):
        compute_cam(model, image, [index % 2], CamMethod.GRADCAM, "features.12")
    gc.collect()

    assert _rss_bytes() - start < 20 * 2**20
    assert _hook_count(model) == 0


def test_cam_threads_share_model(faces):
    model = tiny_model(Backbone.SQUEEZENET).train()
    images = face_batch(faces, Backbone.SQUEEZENET)
    expected = compute_cam(model, images, [0, 1, 0, 1], CamMethod.GRADCAM, "features.12")
    results = []

    def explain() -> None:
        for _ in range(3):
            results.append(compute_cam(model, images, [0, 1, 0, 1], CamMethod.GRADCAM, "features.12"))

    threads = [threading.Thread(target=explain) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(results) == 9
    assert all(np.allclose(result, expected, atol=1e-5) for result in results)
    assert all(module.training for module in model.modules())
    assert all(parameter.requires_grad for parameter in model.parameters())


def test_candidate_layers_include_default():
    for backbone in Backbone:
        model = tiny_model(backbone)
        assert default_layer(backbone) in candidate_layers(model, TINY_INPUT[backbone]), backbone.value


def test_candidate_layers_skip_pooled_head():
    layers = candidate_layers(tiny_model(Backbone.SQUEEZENET), 64)
    assert "classifier" not in layers


def test_candidate_layers_model_order():
    layers = candidate_layers(tiny_model(Backbone.RESNET50), 64)
    assert layers.index("layer1") < layers.index("layer4")


def test_candidate_layers_restore_train_mode():
    model = tiny_model(Backbone.ALEXNET).train()
    candidate_layers(model, 64)
    assert model.training
