"""Settings of a run-level explanation: which method, layer, class target and LIME parameters."""

from __future__ import annotations

import enum
import logging
import re
from dataclasses import dataclass

from fer_core.constants import Backbone
from fer_core.explain.cam import DEFAULT_CAM_BATCH_SIZE, CamMethod, default_layer
from fer_core.explain.lime_explainer import (
    DEFAULT_LIME_SAMPLES,
    DEFAULT_SEGMENT_COUNT,
    MIN_LIME_SAMPLES,
    Segmentation,
)

logger = logging.getLogger(__name__)

LIME_METHOD = "lime"
_UNSAFE_FILE_CHARACTERS = re.compile(r"[^A-Za-z0-9_.+-]")


class ExplainTarget(str, enum.Enum):
    """Class to explain for each test image: its true label or the model's prediction."""

    TRUE = "true"
    PREDICTED = "predicted"


def explain_methods() -> list[str]:
    """Return every method name that `ExplainSettings.method` accepts, CAM methods first."""
    return [method.value for method in CamMethod] + [LIME_METHOD]


def parse_method(value: CamMethod | str) -> CamMethod | str:
    """Return a CamMethod, or LIME_METHOD for "lime"; raise ValueError for anything else."""
    if value == LIME_METHOD:
        return LIME_METHOD
    try:
        return CamMethod(value)
    except ValueError:
        raise ValueError(f"unknown explanation method {value!r}; expected one of: "
                         f"{', '.join(explain_methods())}") from None


@dataclass(frozen=True)
class ExplainSettings:
    """Options of a run-level explanation.

    `layer` None means the backbone's default Grad-CAM layer, and LIME ignores it. `samples`,
    `segmentation` and `n_segments` apply to LIME only. `seed` seeds LIME, the tie breaking of
    the faithfulness curves and ROAD's imputation noise. `batch_size` is the number of images
    per CAM forward pass, or of perturbed copies per LIME forward pass. `fold` is a fold name
    of the run, and None explains every fold. `faithfulness` adds deletion, insertion and ROAD
    scores, which cost about 60 forward passes and 8 sparse linear solves per image.
    """

    method: CamMethod | str = CamMethod.GRADCAM
    layer: str | None = None
    target: ExplainTarget | str = ExplainTarget.PREDICTED
    fold: str | None = None
    samples: int = DEFAULT_LIME_SAMPLES
    segmentation: Segmentation | str = Segmentation.SLIC
    n_segments: int = DEFAULT_SEGMENT_COUNT
    seed: int = 0
    batch_size: int = DEFAULT_CAM_BATCH_SIZE
    faithfulness: bool = False
    device: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", parse_method(self.method))
        object.__setattr__(self, "target", ExplainTarget(self.target))
        object.__setattr__(self, "segmentation", Segmentation(self.segmentation))
        if self.samples < MIN_LIME_SAMPLES:
            raise ValueError(f"samples must be at least {MIN_LIME_SAMPLES}, received {self.samples}")
        if self.n_segments < 2:
            raise ValueError(f"n_segments must be at least 2, received {self.n_segments}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, received {self.batch_size}")
        if self.layer is not None and not self.layer.strip():
            raise ValueError("layer must be a dotted module name such as 'layer4', or None for the default")

    @property
    def is_lime(self) -> bool:
        """Return True when the method is LIME rather than a CAM method."""
        return self.method == LIME_METHOD

    @property
    def method_name(self) -> str:
        """Return the method as plain text, such as "gradcam" or "lime"."""
        return self.method.value if isinstance(self.method, CamMethod) else str(self.method)

    def layer_for(self, backbone: Backbone | str) -> str | None:
        """Return the CAM target layer for a backbone, or None for LIME."""
        if self.is_lime:
            return None
        return self.layer or default_layer(backbone)

    def method_parts(self, backbone: Backbone | str) -> dict[str, object]:
        """Return the settings that determine one image's map, for cache keys."""
        if self.is_lime:
            return {"method": LIME_METHOD, "samples": self.samples, "segmentation": self.segmentation.value,
                    "n_segments": self.n_segments, "seed": self.seed}
        return {"method": self.method_name, "layer": self.layer_for(backbone)}

    def slug(self) -> str:
        """Return a short file-name-safe description, such as "gradcam-layer4-predicted-all"."""
        if self.is_lime:
            parts = [LIME_METHOD, f"{self.segmentation.value}{self.n_segments}", f"{self.samples}samples",
                     f"seed{self.seed}"]
        else:
            parts = [self.method_name.replace("+", "plus"), self.layer or "default"]
        parts.append(self.target.value)
        parts.append("all" if self.fold is None else f"fold_{self.fold}")
        return _UNSAFE_FILE_CHARACTERS.sub("_", "-".join(parts))
