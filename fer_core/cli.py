"""The `fer-studio` command line: a thin wrapper over the engine.

Every subcommand parses its options into the engine's settings dataclasses and calls one
function of `fer_core`; all argparse code lives in this module.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from fer_core.constants import Backbone, MaskType, Protocol

logger = logging.getLogger(__name__)


class CommandError(Exception):
    """A user mistake that ends the command with a message and exit code 2."""


# ---------------------------------------------------------------------------------------------
# Data sets


def _add_dataset_options(parser: argparse.ArgumentParser) -> None:
    from fer_core.datasets import DatasetKind

    group = parser.add_argument_group("data set (a registered name, or a kind and a folder)")
    group.add_argument("--dataset", default=None,
                       help="name of a data set listed by 'fer-studio datasets' (default: london)")
    group.add_argument("--kind", choices=[k.value for k in DatasetKind], default=None,
                       help="layout of the folder given with --root")
    group.add_argument("--root", type=Path, default=None, help="folder (or fer2013.csv file) of the data set")
    group.add_argument("--subject-pattern", default=None,
                       help="for --kind folder: regular expression with a named group 'subject' "
                            "matched against each file name, e.g. '^(?P<subject>[A-Z]+)_'")
    group.add_argument("--manifest", type=Path, default=None,
                       help="for --kind folder: CSV with columns path (relative to --root) and subject")
    group.add_argument("--label-map", action="append", default=None, metavar="NAME=EMOTION",
                       help="map an emotion folder name or expression code to an emotion, e.g. contempt=disgust; "
                            "repeat it for several names")


def _parse_label_map(values: Sequence[str] | None) -> dict[str, str] | None:
    """Turn NAME=EMOTION strings into a label map; the engine checks the emotions."""
    if not values:
        return None
    label_map = {}
    for value in values:
        name, separator, emotion = value.partition("=")
        if not separator or not name.strip() or not emotion.strip():
            raise CommandError(f"--label-map {value!r} is not NAME=EMOTION, for example contempt=disgust")
        label_map[name.strip()] = emotion.strip()
    return label_map


def _resolve_dataset_spec(args: argparse.Namespace):
    from fer_core.datasets import DatasetKind, DatasetSpec, available_datasets, default_london_root
    from fer_core.paths import artifacts_root

    if args.root is not None or args.kind is not None:
        if args.root is None or args.kind is None:
            raise CommandError("--kind and --root go together: give both, or use --dataset NAME")
        return DatasetSpec(kind=DatasetKind(args.kind), root=args.root.expanduser().resolve(),
                           name=args.dataset, subject_pattern=args.subject_pattern, manifest=args.manifest,
                           label_map=_parse_label_map(args.label_map))
    if args.label_map:
        raise CommandError("--label-map applies to a folder given with --kind and --root; a registered data set "
                           "keeps the label map it was added with")

    name = args.dataset or "london"
    specs = {spec.name: spec for spec in available_datasets(artifacts_root())}
    if name in specs:
        return specs[name]
    if name == "london":
        raise CommandError(
            "the London faces were not found. Run 'fer-studio fetch-london' on a machine with internet, "
            "or set FER_STUDIO_LONDON_DIR to a local copy"
            + (f" (looked in {default_london_root()})" if default_london_root() else "")
        )
    known = ", ".join(sorted(specs)) or "none"
    raise CommandError(f"unknown data set {name!r}; registered data sets: {known}. "
                       "Use --kind and --root for an unregistered folder")


def _command_datasets(args: argparse.Namespace) -> int:
    from fer_core.datasets import DatasetError, available_datasets, load_dataset
    from fer_core.paths import artifacts_root

    specs = available_datasets(artifacts_root())
    if not specs:
        print("No data sets found. Set FER_STUDIO_LONDON_DIR to a copy of the London faces, run "
              "'fer-studio fetch-london', or add a data set with 'fer-studio add-dataset'.")
        return 0
    for spec in specs:
        try:
            table = load_dataset(spec, check_images=False)
        except DatasetError as error:
            print(f"{spec.name}\t{spec.kind.value}\t{spec.root}\tunreadable: {error}")
            continue
        labels = ", ".join(f"{label} {count}" for label, count in table.counts_by_label().items())
        subjects = table.frame["subject"].nunique() if table.has_subjects else "no subject ids"
        print(f"{spec.name}\t{spec.kind.value}\t{len(table.frame)} images\t{subjects} subjects\t{labels}\t{spec.root}")
    return 0


def _command_add_dataset(args: argparse.Namespace) -> int:
    from fer_core.datasets import load_dataset, register_dataset
    from fer_core.paths import artifacts_root

    if args.dataset is None:
        raise CommandError("give the new data set a name with --dataset NAME")
    spec = _resolve_dataset_spec(args)
    table = load_dataset(spec)
    register_dataset(spec, artifacts_root())
    print(f"Registered {spec.name}: {len(table.frame)} images, {len(table.issues)} files skipped")
    for issue in table.issues[:20]:
        print(f"  skipped {issue.path}: {issue.reason}")
    return 0


def _command_fetch_london(args: argparse.Namespace) -> int:
    from fer_core.datasets import fetch_london

    from fer_core.paths import artifacts_root

    target = args.target if args.target is not None else artifacts_root() / "data" / "london_faces"
    folder = fetch_london(target.expanduser().resolve())
    print(f"London faces ready in {folder}. Credit: DeBruine & Jones (2017), Face Research Lab London Set, "
          "CC BY 4.0. Set FER_STUDIO_LONDON_DIR to that folder if it is not the default location.")
    return 0


# ---------------------------------------------------------------------------------------------
# Preparation and preview


def _mask_types(values: Sequence[str]) -> tuple[MaskType, ...]:
    return tuple(MaskType(value) for value in values)


def _command_prepare(args: argparse.Namespace) -> int:
    from fer_core.datasets import load_dataset
    from fer_core.prepare import PrepareSettings, prepare_dataset

    table = load_dataset(_resolve_dataset_spec(args))
    settings = PrepareSettings(mask_types=_mask_types(args.masks), coverage=args.coverage,
                               crop_size=args.crop_size, margin=args.margin, seed=args.seed,
                               selection=args.selection, workers=args.workers)

    def report_progress(done: int, total: int) -> None:
        if done == total or done % 10 == 0 or total < 50:
            print(f"\r{done}/{total} photographs", end="" if done < total else "\n", file=sys.stderr)

    prepared = prepare_dataset(table, settings, progress=report_progress)
    faces = len(prepared.faces)
    print(f"Prepared {len(prepared.manifest)} crops from {faces} faces of {len(table.frame)} photographs "
          f"in {prepared.folder}")
    if len(prepared.report):
        print(f"{len(prepared.report)} files were skipped or flagged; see {prepared.folder / 'report.csv'}:")
        for row in prepared.report.head(10).itertuples():
            print(f"  {row.stage}: {row.path}: {row.reason}")
    return 0


def _command_preview(args: argparse.Namespace) -> int:
    import numpy as np

    from fer_core.faces import FaceAnalyzer, draw_detection
    from fer_core.images import read_image, write_image_atomic
    from fer_core.masks import MaskStyle
    from fer_core.prepare import preview_masks

    from fer_core.paths import artifacts_root

    out = args.out.expanduser() if args.out is not None else artifacts_root() / "preview"
    if out.exists() and not out.is_dir():
        raise CommandError(f"--out {out} is a file; give a folder for the output PNGs")

    loaded = read_image(args.image)
    style = MaskStyle(coverage=args.coverage, seed=args.seed)
    detection, masked = preview_masks(loaded.rgb, FaceAnalyzer(), style, greyscale=loaded.greyscale)

    out.mkdir(parents=True, exist_ok=True)
    stem = args.image.name.rsplit(".", 1)[0]
    write_image_atomic(out / f"{stem}_landmarks.png", draw_detection(loaded.rgb, detection))
    for mask_type, face in masked.items():
        write_image_atomic(out / f"{stem}_{mask_type.value}.png", face.image)
    sheet = np.concatenate([loaded.rgb] + [face.image for face in masked.values()], axis=1)
    write_image_atomic(out / f"{stem}_all.png", sheet)
    print(f"Face found with probability {detection.probability:.3f} ({detection.face_count} in the image); "
          f"wrote {len(masked) + 2} images to {out}")
    return 0


# ---------------------------------------------------------------------------------------------
# Training, evaluation and results


def _train_settings_from_args(args: argparse.Namespace):
    from fer_core.training import TrainSettings

    if args.prepared is None:
        raise CommandError("give the prepared set with --prepared FOLDER (see 'fer-studio prepare'), "
                           "or an existing run with --run-dir")
    return TrainSettings(
        prepared_dir=args.prepared.expanduser().resolve(),
        backbone=Backbone(args.backbone),
        protocol=Protocol(args.protocol),
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        train_mask_types=_mask_types(args.train_masks),
        include_unmasked=not args.no_unmasked,
        pretrained=not args.from_scratch,
        weights_dir=args.weights_dir,
        folds=args.folds,
        pi_scheme=args.pi_scheme,
        max_folds=args.max_folds,
        input_size=args.input_size,
        optimizer=args.optimizer,
    )


def _command_train(args: argparse.Namespace) -> int:
    from fer_core.paths import jobs_root, runs_root
    from fer_core.runs import create_run
    from fer_core.training import TrainSettings, train

    if args.run_dir is not None:
        run_dir = args.run_dir.expanduser().resolve()
        settings_path = run_dir / "settings.json"
        if not settings_path.is_file():
            raise CommandError(f"{run_dir} has no settings.json; it is not a run folder")
        try:
            settings = TrainSettings.from_dict(json.loads(settings_path.read_text(encoding="utf-8")))
        except (ValueError, TypeError, AttributeError) as error:
            raise CommandError(f"{settings_path} is unreadable ({error}); fix it, or start a new run with "
                               "--prepared") from error
    else:
        settings = _train_settings_from_args(args)
        run_dir = create_run(runs_root(), settings)
        print(f"Run folder: {run_dir}")

    if args.background:
        from fer_core.jobs import JobSpec, get_runner
        from fer_core.models import pick_device

        spec = JobSpec(kind="train", argv=("fer_core.cli", "train", "--run-dir", str(run_dir)),
                       run_dir=run_dir, label=run_dir.name, needs_gpu=pick_device(settings.device).type == "cuda")
        job_id = get_runner(jobs_root()).submit(spec)
        print(f"Submitted job {job_id}; follow it with 'fer-studio show {run_dir.name}' or in the dashboard")
        return 0

    result = train(settings, run_dir)
    completed = len(result["folds_completed"])
    if result["status"] != "succeeded":
        total = result["folds_total"] if result["folds_total"] is not None else "?"
        print(f"Run {run_dir.name} ended as {result['status']} after {completed} of {total} folds; "
              f"continue it with 'fer-studio train --run-dir {run_dir}'")
        return 1
    print(f"Finished {run_dir.name}: accuracy {result['accuracy']:.4f} over {completed} folds")
    print(f"See the results with 'fer-studio show {run_dir.name}'")
    return 0


# A folder holding any of these is a run folder, even when one of them is damaged or missing.
RUN_FOLDER_FILES = ("settings.json", "status.json", "predictions.csv", "metrics.json")


def _find_run(name: str) -> Path:
    from fer_core.paths import runs_root

    if not name.strip():
        raise CommandError("give a run id or run folder; list runs with 'fer-studio runs'")
    for candidate in (Path(name).expanduser(), runs_root() / name):
        if candidate.is_dir() and any((candidate / file).exists() for file in RUN_FOLDER_FILES):
            return candidate.resolve()
    for candidate in (Path(name).expanduser(), runs_root() / name):
        if candidate.is_dir():
            raise CommandError(f"{candidate} is not a run folder: it has none of {', '.join(RUN_FOLDER_FILES)}")
    raise CommandError(f"run {name!r} not found as a folder or under {runs_root()}; list runs with 'fer-studio runs'")


def _command_evaluate(args: argparse.Namespace) -> int:
    from fer_core.evaluation import evaluate_run

    run_dir = _find_run(args.run)
    metrics = evaluate_run(run_dir)
    print(f"{run_dir.name}: accuracy {metrics['accuracy']:.4f}; metrics written to {run_dir / 'metrics.json'}")
    return 0


def _command_show(args: argparse.Namespace) -> int:
    from fer_core.evaluation import format_report

    from fer_core.runs import read_status

    run_dir = _find_run(args.run)
    try:
        status = read_status(run_dir)
    except (FileNotFoundError, ValueError) as error:
        logger.warning("reading the status of %s failed: %s", run_dir, error)
        status = {}
    state = status.get("state", "unknown")
    if not (run_dir / "metrics.json").is_file():
        reason = f": {status['error']}" if status.get("error") else ""
        raise CommandError(f"run {run_dir.name} has no results yet; it is {state}{reason}")
    if state != "succeeded":
        print(f"Run state: {state}" + (f" ({status['error']})" if status.get("error") else ""))
    print(format_report(run_dir))
    return 0


def _command_runs(args: argparse.Namespace) -> int:
    import pandas as pd

    from fer_core.paths import runs_root
    from fer_core.runs import list_runs

    table = list_runs(runs_root())
    if table.empty:
        print("No runs yet. Start one with 'fer-studio train'.")
        return 0
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.to_string(index=False))
    return 0


# ---------------------------------------------------------------------------------------------
# Parser


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every subcommand."""
    from fer_core.faces import FaceSelection

    parser = argparse.ArgumentParser(
        prog="fer-studio",
        description="Masked FER Studio: synthetic face masks, fine-tuning and leakage-free evaluation.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress messages")
    commands = parser.add_subparsers(dest="command", required=True)

    listing = commands.add_parser("datasets", help="list the available data sets with their counts")
    listing.set_defaults(handler=_command_datasets)

    adding = commands.add_parser("add-dataset", help="register a data set folder under a name")
    _add_dataset_options(adding)
    adding.set_defaults(handler=_command_add_dataset)

    fetching = commands.add_parser("fetch-london", help="download the London faces (needs internet)")
    fetching.add_argument("--target", type=Path, default=None,
                          help="folder to download into (default: data/london_faces in the artifacts folder, "
                               "where the product looks for it)")
    fetching.set_defaults(handler=_command_fetch_london)

    preparing = commands.add_parser("prepare", help="detect, mask and crop every face of a data set (cached)")
    _add_dataset_options(preparing)
    preparing.add_argument("--masks", nargs="+", choices=[m.value for m in MaskType],
                           default=[m.value for m in MaskType],
                           help="mask types to produce; 'none' is the unmasked copy (default: all five)")
    preparing.add_argument("--coverage", type=float, default=0.6,
                           help="how far up the nose the mask reaches: 0 = just above the nose tip, "
                                "1 = up to the eyes (default: 0.6)")
    preparing.add_argument("--crop-size", type=int, default=256, help="side of the square face crop in pixels (default: 256)")
    preparing.add_argument("--margin", type=float, default=0.15,
                           help="border around the detected face as a fraction of its size (default: 0.15)")
    preparing.add_argument("--seed", type=int, default=0, help="seed for mask colours and patterns (default: 0)")
    preparing.add_argument("--selection", choices=[s.value for s in FaceSelection], default="largest",
                           help="which face to keep when a photograph has several (default: largest)")
    preparing.add_argument("--workers", type=int, default=2, help="worker processes (default: 2)")
    preparing.set_defaults(handler=_command_prepare)

    previewing = commands.add_parser("preview", help="draw the four mask types on one photograph")
    previewing.add_argument("image", type=Path, help="photograph to mask")
    previewing.add_argument("--out", type=Path, default=None,
                            help="folder for the output PNGs (default: preview in the artifacts folder)")
    previewing.add_argument("--coverage", type=float, default=0.6, help="mask coverage from 0 to 1 (default: 0.6)")
    previewing.add_argument("--seed", type=int, default=0, help="seed for colours and patterns (default: 0)")
    previewing.set_defaults(handler=_command_preview)

    training = commands.add_parser("train", help="fine-tune a backbone on a prepared set and evaluate it")
    training.add_argument("--run-dir", type=Path, default=None,
                          help="continue an existing run folder (resumes from its checkpoints)")
    training.add_argument("--prepared", type=Path, default=None, help="prepared set folder from 'fer-studio prepare'")
    training.add_argument("--backbone", choices=[b.value for b in Backbone], default=Backbone.SQUEEZENET.value,
                          help="network to fine-tune (default: squeezenet1_1)")
    training.add_argument("--protocol", choices=[p.value for p in Protocol], default=Protocol.PD.value,
                          help="pd: split by photograph; pi: split by person; leaky: split after "
                               "augmentation, only to show the inflation (default: pd)")
    training.add_argument("--epochs", type=int, default=None, help="epochs per fold (default: 25 for pd, 60 for pi)")
    training.add_argument("--learning-rate", type=float, default=0.001, help="SGD learning rate (default: 0.001)")
    training.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd",
                          help="sgd: SGD with momentum 0.9, the paper's setting; adam: often needed when "
                               "training from scratch (default: sgd)")
    training.add_argument("--batch-size", type=int, default=32, help="images per batch (default: 32)")
    training.add_argument("--seed", type=int, default=0, help="random seed for splits, weights and order (default: 0)")
    training.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    training.add_argument("--train-masks", nargs="+", choices=[m.value for m in MaskType.drawn()],
                          default=[m.value for m in MaskType.drawn()],
                          help="masked copies used for training (default: all four); the test side keeps every type")
    training.add_argument("--no-unmasked", action="store_true", help="leave the unmasked copies out of training")
    training.add_argument("--from-scratch", action="store_true",
                          help="start from random weights instead of pretrained ones")
    training.add_argument("--weights-dir", type=Path, default=None,
                          help="folder holding pretrained checkpoint files (searched before the torch cache)")
    training.add_argument("--folds", type=int, default=5,
                          help="folds for pd, leaky and pi with --pi-scheme kfold; 1 = a single hold-out (default: 5)")
    training.add_argument("--pi-scheme", choices=["loso", "kfold"], default="loso",
                          help="pi: leave one subject out, or k folds grouped by subject (default: loso)")
    training.add_argument("--max-folds", type=int, default=None, help="run only the first N folds (default: all)")
    training.add_argument("--input-size", type=int, default=None,
                          help="override the backbone's input size in pixels (default: 224, or 160 for VGGFace2)")
    training.add_argument("--background", action="store_true", help="run as a background job and return at once")
    training.set_defaults(handler=_command_train)

    evaluating = commands.add_parser("evaluate", help="recompute a run's metrics from its predictions")
    evaluating.add_argument("run", help="run id or run folder")
    evaluating.set_defaults(handler=_command_evaluate)

    showing = commands.add_parser("show", help="print a run's results: accuracy, per-class metrics, confusion matrix")
    showing.add_argument("run", help="run id or run folder")
    showing.set_defaults(handler=_command_show)

    runs = commands.add_parser("runs", help="list all runs with their status and accuracy")
    runs.set_defaults(handler=_command_runs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except CommandError as error:
        print(f"fer-studio: error: {error}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as error:
        # The engine raises these with the file or value and the fix in the message.
        print(f"fer-studio: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        # A full disk, a read-only folder or a file where a folder belongs: the message names the path.
        # Errors that the engine raised with its own advice carry no errno and get no hint.
        logger.debug("command failed", exc_info=True)
        hint = " Check that the folder exists, is writable and has free space." if error.errno is not None else ""
        print(f"fer-studio: error: {str(error).rstrip('.')}.{hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
