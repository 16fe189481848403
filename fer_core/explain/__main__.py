"""Command line of the explanation job: `python -m fer_core.explain <run_dir> [options]`.

Explains every test image of a run (or of one fold), writes the attribution table to
`<run_dir>/explanations/attribution-<settings>.csv` and appends progress events to
`<run_dir>/explanations/events.jsonl`. Exits with status 1 after an error, which is also
recorded as an event.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from fer_core.explain.lime_explainer import Segmentation
from fer_core.explain.run_explanations import run_explain_job
from fer_core.explain.settings import ExplainSettings, ExplainTarget, explain_methods

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser; defaults come from ExplainSettings."""
    defaults = ExplainSettings()
    parser = argparse.ArgumentParser(prog="python -m fer_core.explain", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="run folder with predictions.csv and trained fold weights")
    parser.add_argument("--method", choices=explain_methods(), default=defaults.method_name,
                        help=f"explanation method (default: {defaults.method_name})")
    parser.add_argument("--layer", default=None,
                        help="dotted name of the CAM target layer (default: the backbone's registered layer)")
    parser.add_argument("--target", choices=[target.value for target in ExplainTarget],
                        default=defaults.target.value, help="class to explain per image (default: predicted)")
    parser.add_argument("--fold", default=None, help="explain only this fold's test images (default: all folds)")
    parser.add_argument("--samples", type=int, default=defaults.samples,
                        help=f"LIME perturbed samples per image (default: {defaults.samples})")
    parser.add_argument("--segmentation", choices=[choice.value for choice in Segmentation],
                        default=defaults.segmentation.value, help="LIME superpixel algorithm (default: slic)")
    parser.add_argument("--segments", type=int, default=defaults.n_segments,
                        help=f"SLIC superpixel count for LIME (default: {defaults.n_segments})")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="LIME and tie-breaking seed (default: 0)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size,
                        help=f"images per CAM forward pass, or samples per LIME forward pass "
                             f"(default: {defaults.batch_size})")
    parser.add_argument("--faithfulness", action="store_true",
                        help="also score deletion, insertion and ROAD per image (slower)")
    parser.add_argument("--device", default=defaults.device, help="auto, cpu, cuda or cuda:N (default: auto)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run the explanation job and return the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        settings = ExplainSettings(
            method=args.method, layer=args.layer, target=args.target, fold=args.fold, samples=args.samples,
            segmentation=args.segmentation, n_segments=args.segments, seed=args.seed,
            batch_size=args.batch_size, faithfulness=args.faithfulness, device=args.device,
        )
        path = run_explain_job(args.run_dir, settings)
    except (OSError, ValueError, RuntimeError) as error:
        logger.error("explanation job failed for %s: %s", args.run_dir, error)
        return 1
    logger.info("attribution table written to %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
