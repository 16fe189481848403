"""Explanations of expression models: Grad-CAM family, LIME, face-region attribution, faithfulness.

Modules:

- `cam`: `compute_cam` with the pytorch-grad-cam methods in `CamMethod`, `candidate_layers`;
- `lime_explainer`: `explain_lime`, repeatable LIME maps for any class;
- `attribution`: `attribution_share` on the mask, above it and elsewhere, `summarise_attribution`;
- `faithfulness`: deletion and insertion curves and ROAD for any map;
- `overlay`: `overlay_heatmap` and `draw_polygon` for the dashboard;
- `run_explanations`: single test images of a run and whole test folds, cached on disk;
  `python -m fer_core.explain <run_dir>` runs the latter as a background job.
"""

from fer_core.explain.attribution import (
    AttributionShare,
    attribution_share,
    face_regions,
    parse_polygon,
    summarise_attribution,
)
from fer_core.explain.cam import CamMethod, candidate_layers, compute_cam, default_layer
from fer_core.explain.common import Normalisation, to_input_tensor
from fer_core.explain.faithfulness import (
    FaithfulnessScores,
    curve_auc,
    deletion_insertion,
    faithfulness_scores,
    resize_map,
    road_combined,
)
from fer_core.explain.lime_explainer import LimeResult, Segmentation, explain_lime, segment_image
from fer_core.explain.overlay import draw_polygon, overlay_heatmap
from fer_core.explain.run_explanations import (
    Explanation,
    attach_polygons,
    attribution_path,
    explain_images,
    explain_run_image,
    explain_table,
    explain_test_set,
    explanations_dir,
    run_explain_job,
)
from fer_core.explain.settings import LIME_METHOD, ExplainSettings, ExplainTarget, explain_methods

__all__ = [
    "LIME_METHOD",
    "AttributionShare",
    "CamMethod",
    "ExplainSettings",
    "ExplainTarget",
    "Explanation",
    "FaithfulnessScores",
    "LimeResult",
    "Normalisation",
    "Segmentation",
    "attach_polygons",
    "attribution_path",
    "attribution_share",
    "candidate_layers",
    "compute_cam",
    "curve_auc",
    "default_layer",
    "deletion_insertion",
    "draw_polygon",
    "explain_images",
    "explain_lime",
    "explain_methods",
    "explain_run_image",
    "explain_table",
    "explain_test_set",
    "explanations_dir",
    "face_regions",
    "faithfulness_scores",
    "overlay_heatmap",
    "parse_polygon",
    "resize_map",
    "road_combined",
    "run_explain_job",
    "segment_image",
    "summarise_attribution",
    "to_input_tensor",
]
