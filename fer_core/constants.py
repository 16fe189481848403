"""Fixed choices and numbers shared by every part of the engine.

Landmark indices follow dlib's 68-point model (the iBUG 300-W layout).
"""

from __future__ import annotations

import enum


class MaskType(str, enum.Enum):
    """Synthetic mask drawn on a face; NONE marks the unmasked copy."""

    NONE = "none"
    SURGICAL = "surgical"
    CLOTH = "cloth"
    N95 = "n95"
    KN95 = "kn95"

    @classmethod
    def drawn(cls) -> tuple["MaskType", ...]:
        """Return the four mask types that the renderer draws."""
        return (cls.SURGICAL, cls.CLOTH, cls.N95, cls.KN95)


class Backbone(str, enum.Enum):
    """Network fine-tuned for expression recognition."""

    ALEXNET = "alexnet"
    SQUEEZENET = "squeezenet1_1"
    RESNET50 = "resnet50"
    VGGFACE2 = "inception_resnet_v1_vggface2"


class Protocol(str, enum.Enum):
    """Evaluation protocol.

    PD splits by source photograph, PI by person, and LEAKY splits single images after
    augmentation, so masked copies of one photograph land on both sides. LEAKY exists
    only to show how much that inflates accuracy.
    """

    PD = "pd"
    PI = "pi"
    LEAKY = "leaky"


class LifecycleState(str, enum.Enum):
    """State of a background job and of the run it trains; both go through the same life cycle.

    INTERRUPTED marks work whose process died while it was running.
    """

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    @property
    def is_final(self) -> bool:
        """True when the work has ended and its state no longer changes."""
        return self not in (LifecycleState.QUEUED, LifecycleState.RUNNING)


class Emotion(str, enum.Enum):
    """Canonical emotion labels; every data set loader maps its own codes to these."""

    ANGRY = "angry"
    DISGUST = "disgust"
    FEAR = "fear"
    HAPPY = "happy"
    NEUTRAL = "neutral"
    SAD = "sad"
    SURPRISE = "surprise"


# dlib 68-point landmark index ranges (end exclusive).
JAW = range(0, 17)
RIGHT_BROW = range(17, 22)
LEFT_BROW = range(22, 27)
NOSE_BRIDGE = range(27, 31)
NOSE_LOWER = range(31, 36)
RIGHT_EYE = range(36, 42)
LEFT_EYE = range(42, 48)
MOUTH = range(48, 68)
NOSE_TIP = 30
CHIN = 8
LANDMARK_COUNT = 68

# Input normalisation. ImageNet statistics serve the torchvision backbones; facenet-pytorch's
# fixed_image_standardization, (x * 255 - 127.5) / 128, equals mean 0.5 and std 128 / 255.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FACENET_MEAN = (0.5, 0.5, 0.5)
FACENET_STD = (128 / 255, 128 / 255, 128 / 255)

# Training defaults from Farhadipour & Taghipour (arXiv:2312.01335): learning rate 0.001,
# 25 epochs person-dependent and 60 person-independent, rotation within +-20 degrees and
# translation of up to 5 pixels.
DEFAULT_LEARNING_RATE = 0.001
DEFAULT_EPOCHS = {Protocol.PD: 25, Protocol.PI: 60, Protocol.LEAKY: 25}
AUGMENT_ROTATION_DEGREES = 20.0
AUGMENT_TRANSLATION_PIXELS = 5

# Size of the square face crop that preparation stores; loaders resize it to each
# backbone's input size.
CROP_SIZE = 256
