"""Tests for fine-tuning: data pipeline, settings, end-to-end runs, resume, cancel and weights."""

from __future__ import annotations

import functools
import json
import os
import signal
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from fer_core import runs
from fer_core.constants import AUGMENT_ROTATION_DEGREES, AUGMENT_TRANSLATION_PIXELS, Backbone, MaskType, Protocol
from fer_core.models import WeightsNotFoundError, build_model, get_spec
from fer_core.training import (
    ManifestDataset,
    TrainSettings,
    build_transform,
    read_events,
    train,
)

EXPRESSIONS = (("neutral", "03", "neutral"), ("smiling", "08", "happy"))
# Flat colours standing in for the four masks: the lower half of the crop is painted over.
FAKE_MASK_COLOURS = {MaskType.SURGICAL: (120, 170, 220), MaskType.CLOTH: (40, 40, 40),
                     MaskType.N95: (235, 235, 235), MaskType.KN95: (200, 200, 190)}


@functools.lru_cache(maxsize=512)
def _london_crop(london_root: Path, folder: str, face_id: str, number: str, size: int) -> Image.Image:
    with Image.open(london_root / folder / f"{face_id}_{number}.jpg") as photo:
        return photo.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)


def write_prepared_set(root: Path, london_root: Path, subjects: int = 12, size: int = 64,
                       mask_types: Sequence[MaskType] = tuple(MaskType), with_subjects: bool = True,
                       greyscale: bool = False) -> Path:
    """Write a small prepared set of real London faces with fake masks on the lower half.

    Each identity gives a neutral and a smiling photograph; each photograph gets one crop
    per mask type. The manifest carries age, gender and ethnicity like the London loader's.
    """
    info = pd.read_csv(london_root / "london_info.csv", dtype={"face_id": str})
    rows = []
    for _, person in info.head(subjects).iterrows():
        face_id = person["face_id"]
        for folder, number, label in EXPRESSIONS:
            crop = _london_crop(london_root, folder, face_id, number, size)
            if greyscale:
                crop = crop.convert("L")
            for mask_type in mask_types:
                image, polygon = _fake_mask(crop, mask_type)
                relative = f"images/{mask_type.value}/{folder}__{face_id}_{number}.png"
                (root / relative).parent.mkdir(parents=True, exist_ok=True)
                image.save(root / relative)
                rows.append({"image": relative, "source_id": f"{folder}/{face_id}_{number}",
                             "subject": face_id if with_subjects else "", "label": label,
                             "mask_type": mask_type.value, "polygon": json.dumps(polygon),
                             "greyscale": greyscale, "age": person["face_age"],
                             "gender": person["face_gender"], "ethnicity": person["face_eth"]})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    (root / "settings.json").write_text(json.dumps({"dataset": "london-test", "has_subjects": with_subjects}))
    return root


def _fake_mask(crop: Image.Image, mask_type: MaskType) -> tuple[Image.Image, list[list[int]]]:
    if mask_type is MaskType.NONE:
        return crop, []
    size = crop.size[0]
    masked = crop.copy()
    colour = FAKE_MASK_COLOURS[mask_type]
    masked.paste(colour if crop.mode == "RGB" else colour[0], (0, size // 2, size, size))
    return masked, [[0, size // 2], [size, size // 2], [size, size], [0, size]]


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory: pytest.TempPathFactory, london_root: Path) -> Path:
    return write_prepared_set(tmp_path_factory.mktemp("prepared"), london_root)


@pytest.fixture(scope="module")
def small_prepared_dir(tmp_path_factory: pytest.TempPathFactory, london_root: Path) -> Path:
    return write_prepared_set(tmp_path_factory.mktemp("small"), london_root, subjects=4,
                              mask_types=(MaskType.NONE, MaskType.SURGICAL))


@pytest.fixture(autouse=True)
def offline_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the torch cache at an empty folder and forbid downloads."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setenv("FER_STUDIO_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    return home


def quick_settings(prepared: Path, **changes: object) -> TrainSettings:
    values = {"prepared_dir": prepared, "backbone": Backbone.SQUEEZENET, "protocol": Protocol.PD,
              "epochs": 1, "batch_size": 16, "folds": 2, "pretrained": False, "input_size": 64,
              "device": "cpu"}
    values.update(changes)
    return TrainSettings(**values)


def event_names(run_dir: Path) -> list[str]:
    return [event["event"] for event in read_events(run_dir)]


# ---------------------------------------------------------------------------------------------
# Settings and data


def test_settings_round_trip(tmp_path: Path) -> None:
    settings = quick_settings(tmp_path, train_mask_types=(MaskType.SURGICAL,), weights_dir=tmp_path)
    restored = TrainSettings.from_dict(json.loads(json.dumps(settings.to_dict())))
    assert restored == settings


def test_settings_accept_strings(tmp_path: Path) -> None:
    settings = TrainSettings(prepared_dir=str(tmp_path), backbone="resnet50", protocol="pi", pi_scheme="kfold")
    assert settings.backbone is Backbone.RESNET50
    assert settings.protocol is Protocol.PI


def test_settings_default_epochs(tmp_path: Path) -> None:
    assert TrainSettings(prepared_dir=tmp_path, protocol=Protocol.PD).resolved_epochs == 25
    assert TrainSettings(prepared_dir=tmp_path, protocol=Protocol.PI).resolved_epochs == 60


def test_settings_default_input_size(tmp_path: Path) -> None:
    assert TrainSettings(prepared_dir=tmp_path, backbone=Backbone.VGGFACE2).resolved_input_size == 160


def test_settings_reject_batch_of_one(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="batch_size must be at least 2"):
        TrainSettings(prepared_dir=tmp_path, batch_size=1)


def test_settings_reject_unknown_device(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="device must be one of"):
        TrainSettings(prepared_dir=tmp_path, device="tpu")


def test_settings_reject_unknown_backbone(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown backbone 'vgg16'"):
        TrainSettings(prepared_dir=tmp_path, backbone="vgg16")


def test_dataset_item_shape(prepared_dir: Path) -> None:
    spec = get_spec(Backbone.SQUEEZENET)
    dataset = ManifestDataset(prepared_dir, ["images/none/neutral__001_03.png"], [1], 48, spec.mean, spec.std,
                              augment=False)
    image, target = dataset[0]
    assert image.shape == (3, 48, 48)
    assert image.dtype == torch.float32
    assert target == 1


def test_dataset_normalises(prepared_dir: Path) -> None:
    spec = get_spec(Backbone.VGGFACE2)
    dataset = ManifestDataset(prepared_dir, ["images/none/neutral__001_03.png"], [0], 64, spec.mean, spec.std,
                              augment=False)
    with Image.open(prepared_dir / "images/none/neutral__001_03.png") as png:
        raw = torch.from_numpy(np.asarray(png.convert("RGB"), dtype=np.float32))
    expected = (raw[0, 0, 0] / 255 - 0.5) / (128 / 255)
    assert torch.isclose(dataset[0][0][0, 0, 0], expected, atol=1e-5)


def test_dataset_stacks_greyscale(tmp_path: Path, london_root: Path) -> None:
    folder = write_prepared_set(tmp_path / "grey", london_root, subjects=1, mask_types=(MaskType.NONE,),
                                greyscale=True)
    with Image.open(folder / "images/none/neutral__001_03.png") as png:
        assert png.mode == "L"
    dataset = ManifestDataset(folder, ["images/none/neutral__001_03.png"], [0], 32, (0.5,) * 3, (0.5,) * 3,
                              augment=False)
    image = dataset[0][0]
    assert image.shape[0] == 3
    assert torch.equal(image[0], image[1])
    assert torch.equal(image[1], image[2])


def test_dataset_names_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"not a png")
    dataset = ManifestDataset(tmp_path, ["broken.png"], [0], 32, (0.5,) * 3, (0.5,) * 3, augment=False)
    with pytest.raises(OSError, match="broken.png"):
        dataset[0]


def test_augmentation_limits() -> None:
    transform = build_transform(100, (0.5,) * 3, (0.5,) * 3, augment=True)
    affine = transform.transforms[2]
    assert list(affine.degrees) == [-AUGMENT_ROTATION_DEGREES, AUGMENT_ROTATION_DEGREES]
    assert affine.translate == pytest.approx((AUGMENT_TRANSLATION_PIXELS / 100,) * 2)


def test_augmentation_changes_image(prepared_dir: Path) -> None:
    spec = get_spec(Backbone.SQUEEZENET)
    plain = ManifestDataset(prepared_dir, ["images/none/neutral__001_03.png"], [0], 64, spec.mean, spec.std, False)
    augmented = ManifestDataset(prepared_dir, ["images/none/neutral__001_03.png"], [0], 64, spec.mean, spec.std, True)
    torch.manual_seed(1)
    assert not torch.equal(plain[0][0], augmented[0][0])


def test_read_events_skips_half_line(tmp_path: Path) -> None:
    (tmp_path / "events.jsonl").write_text('{"event": "run_start"}\n{"event": "epoch", "fo')
    assert read_events(tmp_path) == [{"event": "run_start"}]


def test_read_events_without_file(tmp_path: Path) -> None:
    assert read_events(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# End-to-end runs


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, prepared_dir: Path) -> Path:
    """Train SqueezeNet for 2 epochs on 2 PD folds; shared by the checks below."""
    run_dir = runs.create_run(tmp_path_factory.mktemp("runs"), quick_settings(prepared_dir, epochs=2))
    result = train(quick_settings(prepared_dir, epochs=2), run_dir)
    assert result["status"] == "succeeded"
    return run_dir


def test_run_predicts_every_image(finished_run: Path, prepared_dir: Path) -> None:
    predictions = runs.load_predictions(finished_run)
    manifest = pd.read_csv(prepared_dir / "manifest.csv")
    assert sorted(predictions["image"]) == sorted(manifest["image"])


def test_run_probabilities_sum_to_one(finished_run: Path) -> None:
    predictions = runs.load_predictions(finished_run)
    totals = predictions[["prob_happy", "prob_neutral"]].sum(axis=1)
    assert np.allclose(totals, 1.0, atol=1e-5)


def test_run_prediction_columns(finished_run: Path) -> None:
    columns = list(runs.load_predictions(finished_run).columns)
    assert columns == ["image", "source_id", "subject", "label", "mask_type", "fold", "predicted",
                       "prob_happy", "prob_neutral"]


def test_run_writes_files(finished_run: Path) -> None:
    for name in ("metrics.json", "folds.csv", "confusion.csv", "training.json", "checkpoints/fold-01.pt",
                 "checkpoints/fold-02.pt", "models/fold-01.pt", "models/fold-02.pt"):
        assert (finished_run / name).is_file(), name


def test_run_status_succeeded(finished_run: Path) -> None:
    status = runs.read_status(finished_run)
    assert status["state"] == "succeeded"
    assert status["epoch"] == 2
    assert status["accuracy"] is not None


def test_run_event_sequence(finished_run: Path) -> None:
    assert event_names(finished_run) == ["run_start", "fold_start", "epoch", "epoch", "fold_end",
                                         "fold_start", "epoch", "epoch", "fold_end", "run_end"]


def test_run_epoch_event_fields(finished_run: Path) -> None:
    epoch = next(event for event in read_events(finished_run) if event["event"] == "epoch")
    for key in ("fold", "epoch", "epochs", "train_loss", "train_accuracy", "test_loss", "test_accuracy",
                "images_per_second", "elapsed_seconds", "eta_seconds"):
        assert key in epoch, key
    assert epoch["eta_seconds"] > 0


def test_run_checkpoint_loads_weights_only(finished_run: Path) -> None:
    checkpoint = torch.load(finished_run / "checkpoints/fold-01.pt", weights_only=True)
    assert checkpoint["completed"] is True
    assert len(checkpoint["history"]) == 2


def test_run_again_keeps_finished_folds(finished_run: Path, prepared_dir: Path) -> None:
    before = (finished_run / "predictions.csv").read_text()
    result = train(quick_settings(prepared_dir, epochs=2), finished_run)
    assert result["status"] == "succeeded"
    assert event_names(finished_run).count("epoch") == 4
    assert (finished_run / "predictions.csv").read_text() == before


def test_run_rejects_other_settings(finished_run: Path, prepared_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"other settings \(differences: \['learning_rate'\]\)"):
        train(quick_settings(prepared_dir, epochs=2, learning_rate=0.01), finished_run)


def stop_after_epochs(run_dir: Path, count: int):
    def should_stop() -> bool:
        return event_names(run_dir).count("epoch") >= count
    return should_stop


def test_resume_matches_uninterrupted(tmp_path: Path, small_prepared_dir: Path) -> None:
    settings = quick_settings(small_prepared_dir, epochs=2, batch_size=4)
    whole = runs.create_run(tmp_path / "runs", settings)
    train(settings, whole)

    resumed = runs.create_run(tmp_path / "runs", settings)
    # Stop after fold-01 has finished and fold-02 has run one of its two epochs.
    first = train(settings, resumed, should_stop=stop_after_epochs(resumed, 3))
    assert first["status"] == "cancelled"
    assert runs.read_status(resumed)["state"] == "cancelled"
    partial_metrics = json.loads((resumed / "metrics.json").read_text())
    assert partial_metrics["folds_evaluated"] == ["fold-01"]
    second = train(settings, resumed)
    assert second["status"] == "succeeded"

    starts = [event for event in read_events(resumed) if event["event"] == "fold_start"]
    assert [(e["fold"], e["resumed_from_epoch"]) for e in starts] == [("fold-01", 0), ("fold-02", 0),
                                                                     ("fold-02", 1)]
    for fold in ("fold-01", "fold-02"):
        expected = torch.load(whole / f"models/{fold}.pt", weights_only=True)
        actual = torch.load(resumed / f"models/{fold}.pt", weights_only=True)
        for name in expected:
            assert torch.equal(expected[name], actual[name]), f"{fold} {name}"
    pd.testing.assert_frame_equal(runs.load_predictions(whole), runs.load_predictions(resumed))


def test_sigterm_cancels_run(tmp_path: Path, small_prepared_dir: Path) -> None:
    settings = quick_settings(small_prepared_dir, epochs=3, max_folds=1, batch_size=4)
    run_dir = runs.create_run(tmp_path / "runs", settings)
    sent = []

    def send_sigterm_after_first_epoch() -> bool:
        if not sent and "epoch" in event_names(run_dir):
            os.kill(os.getpid(), signal.SIGTERM)
            sent.append(True)
        return False

    result = train(settings, run_dir, should_stop=send_sigterm_after_first_epoch)
    assert result["status"] == "cancelled"
    assert event_names(run_dir).count("epoch") == 1
    assert runs.read_status(run_dir)["state"] == "cancelled"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_pi_refused_without_subjects(tmp_path: Path, london_root: Path) -> None:
    prepared = write_prepared_set(tmp_path / "nosubjects", london_root, subjects=4, mask_types=(MaskType.NONE,),
                                  with_subjects=False)
    settings = quick_settings(prepared, protocol=Protocol.PI)
    run_dir = runs.create_run(tmp_path / "runs", settings)
    with pytest.raises(ValueError, match="london-test has no subject ids"):
        train(settings, run_dir)
    assert runs.read_status(run_dir)["state"] == "failed"
    assert read_events(run_dir)[-1]["event"] == "error"


def test_pi_loso_run(tmp_path: Path, small_prepared_dir: Path) -> None:
    settings = quick_settings(small_prepared_dir, protocol=Protocol.PI, batch_size=4, max_folds=2)
    run_dir = runs.create_run(tmp_path / "runs", settings)
    train(settings, run_dir)
    predictions = runs.load_predictions(run_dir)
    assert sorted(predictions["fold"].unique()) == ["subject-001", "subject-002"]
    assert (predictions.groupby("fold")["subject"].nunique() == 1).all()


def test_leaky_run_marked(tmp_path: Path, small_prepared_dir: Path) -> None:
    settings = quick_settings(small_prepared_dir, protocol=Protocol.LEAKY, batch_size=4, max_folds=1)
    run_dir = runs.create_run(tmp_path / "runs", settings)
    train(settings, run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["leaky"] is True
    assert metrics["folds_evaluated"] == ["leaky-fold-01"]


def test_training_mask_filter_applied(tmp_path: Path, small_prepared_dir: Path) -> None:
    settings = quick_settings(small_prepared_dir, train_mask_types=(), include_unmasked=True, max_folds=1)
    run_dir = runs.create_run(tmp_path / "runs", settings)
    train(settings, run_dir)
    start = next(event for event in read_events(run_dir) if event["event"] == "fold_start")
    # 16 crops, half in training, of which the unmasked half is kept; the test side keeps both types.
    assert start["train_images"] == 4
    assert start["test_images"] == 8


def test_missing_images_left_out(tmp_path: Path, london_root: Path) -> None:
    prepared = write_prepared_set(tmp_path / "gaps", london_root, subjects=4,
                                  mask_types=(MaskType.NONE, MaskType.SURGICAL))
    (prepared / "images/surgical/neutral__001_03.png").unlink()
    settings = quick_settings(prepared, batch_size=4)
    run_dir = runs.create_run(tmp_path / "runs", settings)
    train(settings, run_dir)
    start = read_events(run_dir)[0]
    assert start["dropped_count"] == 1
    assert len(runs.load_predictions(run_dir)) == 15


@pytest.mark.parametrize(("backbone", "size"), [(Backbone.ALEXNET, 64), (Backbone.RESNET50, 64),
                                                (Backbone.VGGFACE2, 96)])
def test_backbone_trains(tmp_path: Path, small_prepared_dir: Path, backbone: Backbone, size: int) -> None:
    # 8 training images in batches of 7 leave a last batch of one, which is dropped: a batch of
    # one would break InceptionResnetV1's BatchNorm1d.
    settings = quick_settings(small_prepared_dir, backbone=backbone, input_size=size, batch_size=7, max_folds=1)
    run_dir = runs.create_run(tmp_path / "runs", settings)
    result = train(settings, run_dir)
    assert result["status"] == "succeeded"
    assert len(runs.load_predictions(run_dir)) == 8


# ---------------------------------------------------------------------------------------------
# Pretrained weights


def test_pretrained_weights_loaded(tmp_path: Path, small_prepared_dir: Path, offline_torch_home: Path) -> None:
    spec = get_spec(Backbone.SQUEEZENET)
    torch.manual_seed(7)
    original = build_model(Backbone.SQUEEZENET, 1000, pretrained=False).state_dict()
    weights_file = offline_torch_home / "hub" / "checkpoints" / spec.weights_file
    weights_file.parent.mkdir(parents=True)
    torch.save(original, weights_file)

    # A learning rate this small leaves the loaded weights unchanged to within 1e-6.
    settings = quick_settings(small_prepared_dir, pretrained=True, learning_rate=1e-9, max_folds=1, batch_size=4)
    run_dir = runs.create_run(tmp_path / "runs", settings)
    train(settings, run_dir)

    trained = torch.load(run_dir / "models/fold-01.pt", weights_only=True)
    assert torch.allclose(trained["features.0.weight"], original["features.0.weight"], atol=1e-6)
    assert read_events(run_dir)[0]["pretrained_weights"] == str(weights_file)


def test_missing_weights_named(tmp_path: Path, small_prepared_dir: Path, offline_torch_home: Path) -> None:
    spec = get_spec(Backbone.SQUEEZENET)
    settings = quick_settings(small_prepared_dir, pretrained=True)
    run_dir = runs.create_run(tmp_path / "runs", settings)
    with pytest.raises(WeightsNotFoundError) as caught:
        train(settings, run_dir)
    message = str(caught.value)
    assert spec.weights_file in message
    assert str(offline_torch_home / "hub" / "checkpoints") in message
    assert spec.weights_url in message
    assert runs.read_status(run_dir)["error"].startswith("WeightsNotFoundError")


def test_input_below_backbone_minimum_rejected(prepared_dir: Path) -> None:
    with pytest.raises(ValueError, match="at least 64 pixels for AlexNet"):
        quick_settings(prepared_dir, backbone="alexnet", input_size=48)
