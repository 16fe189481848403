"""Measure preparation throughput: source photographs per second through detect, mask, crop, write.

The workload mirrors JAFFE: 256x256 greyscale TIFF faces named like `KA.AN1.39.tiff`, made
from the London faces. Each photograph yields the unmasked crop and the four masked crops.
The clock covers the whole `prepare_dataset` call, worker start-up included, on a fresh cache.

    python bench/bench_prepare.py [--images 204] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from PIL import Image

from fer_core.datasets import DatasetKind, DatasetSpec, default_london_root, load_dataset
from fer_core.prepare import PrepareSettings, prepare_dataset

JAFFE_CODES = ("AN", "DI", "FE", "HA", "NE", "SA", "SU")
JAFFE_SUBJECTS = ("KA", "KL", "KM", "KR", "MK", "NA", "NM", "TM", "UY", "YM")


def make_jaffe_like_set(folder: Path, count: int) -> None:
    """Write `count` 256x256 greyscale TIFFs with JAFFE-style names from the London faces."""
    london = default_london_root()
    if london is None:
        raise SystemExit("the London faces were not found; set FER_STUDIO_LONDON_DIR")
    sources = sorted((london / "neutral").glob("*.jpg")) + sorted((london / "smiling").glob("*.jpg"))
    for index in range(count):
        source = sources[index % len(sources)]
        # NOTE: beyond 204 images the photographs repeat, and the loader drops exact duplicates.
        subject = JAFFE_SUBJECTS[index % len(JAFFE_SUBJECTS)]
        code = JAFFE_CODES[index % len(JAFFE_CODES)]
        grey = Image.open(source).convert("L").resize((256, 256), Image.LANCZOS)
        grey.save(folder / f"{subject}.{code}{index % 3 + 1}.{index}.tiff")


def stage_cpu_times(folder: Path, count: int = 40) -> dict[str, float]:
    """Return CPU milliseconds per photograph for each stage, measured in this process on one thread.

    CPU time does not grow when other processes share the cores, so it shows what an idle
    machine would reach: two workers on two cores prepare about 2000 / total photographs a second.
    """
    import cv2
    import torch

    from fer_core.constants import MaskType
    from fer_core.faces import FaceAnalyzer
    from fer_core.images import read_image
    from fer_core.masks import MaskStyle, render_mask
    from fer_core.prepare import PNG_PARAMS, crop_face

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    paths = sorted(folder.glob("*.tiff"))[:count]
    analyzer = FaceAnalyzer()
    analyzer.analyze(read_image(paths[0]).rgb)
    totals = {"read": 0.0, "detect and landmarks": 0.0, "crop": 0.0, "4 masks": 0.0, "encode 5 PNGs": 0.0}

    for path in paths:
        started = time.process_time()
        loaded = read_image(path)
        read_done = time.process_time()
        detection = analyzer.analyze(loaded.rgb)
        detect_done = time.process_time()
        crop, landmarks, _ = crop_face(loaded.rgb, detection, 0.15, 256)
        crop_done = time.process_time()
        masked = [render_mask(crop, landmarks, m, MaskStyle(seed=1), greyscale=True).image for m in MaskType.drawn()]
        masks_done = time.process_time()
        for pixels in [crop, *masked]:
            cv2.imencode(".png", pixels[:, :, 0], PNG_PARAMS)
        encode_done = time.process_time()
        totals["read"] += read_done - started
        totals["detect and landmarks"] += detect_done - read_done
        totals["crop"] += crop_done - detect_done
        totals["4 masks"] += masks_done - crop_done
        totals["encode 5 PNGs"] += encode_done - masks_done
    return {stage: 1000 * seconds / len(paths) for stage, seconds in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=204, help="number of source photographs (default: 204)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default: 2)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        data_folder = Path(scratch) / "jaffe_like"
        data_folder.mkdir()
        make_jaffe_like_set(data_folder, args.images)

        started = time.perf_counter()
        table = load_dataset(DatasetSpec(kind=DatasetKind.JAFFE, root=data_folder, name="bench"))
        loaded = time.perf_counter()
        settings = PrepareSettings(workers=args.workers)
        ticks: list[tuple[float, int]] = []
        prepared = prepare_dataset(table, settings, output_root=Path(scratch) / "prepared",
                                   progress=lambda done, total: ticks.append((time.perf_counter(), done)))
        finished = time.perf_counter()
        # From the first finished chunk to the last: the rate once the workers have started.
        working = [tick for tick in ticks if tick[1] > 0]
        steady_rate = (working[-1][1] - working[0][1]) / (working[-1][0] - working[0][0])

        cached_start = time.perf_counter()
        prepare_dataset(table, settings, output_root=Path(scratch) / "prepared")
        cached_seconds = time.perf_counter() - cached_start
        stages = stage_cpu_times(data_folder)

    prepare_seconds = finished - loaded
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
          f"workers={args.workers}")
    print("| stage | photographs | crops written | seconds | photographs/s |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| load and check data set | {len(table.frame)} | - | {loaded - started:.2f} | "
          f"{len(table.frame) / (loaded - started):.1f} |")
    print(f"| prepare (detect, landmarks, 4 masks + unmasked, crop, write) | {len(table.frame)} | "
          f"{len(prepared.manifest)} | {prepare_seconds:.2f} | {len(table.frame) / prepare_seconds:.1f} |")
    print(f"| prepare, after the workers have started | - | - | - | {steady_rate:.1f} |")
    print(f"| rerun on the cache | {len(table.frame)} | 0 | {cached_seconds:.2f} | - |")
    print(f"faces found: {len(prepared.faces)} of {len(table.frame)}; report entries: {len(prepared.report)}")
    print(f"load average during the run: {os.getloadavg()[0]:.1f}")
    print()
    print("| stage (one thread) | CPU ms per photograph |")
    print("| --- | --- |")
    for stage, milliseconds in stages.items():
        print(f"| {stage} | {milliseconds:.1f} |")
    total = sum(stages.values())
    print(f"| total | {total:.1f} |")
    print(f"projected on {args.workers} idle cores: {args.workers * 1000 / total:.0f} photographs/s")


if __name__ == "__main__":
    main()
