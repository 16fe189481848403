"""Measure explanation latency: Grad-CAM and LIME for one 224 px London face, per backbone.

Each workload runs once to warm up, LIME with 50 samples. Then it runs `--repeats` times
(`--lime-repeats` for LIME), and the table reports the median and the fastest run. Models are
random-init with 7 classes: the weights do not change the cost. Torch uses `--threads` CPU
threads; LIME also runs on the GPU when CUDA is available.

    python bench/bench_explain.py [--threads 2] [--repeats 5] [--lime-repeats 3] [--samples 1000] [--skip-lime]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from fer_core.constants import Backbone
from fer_core.datasets import default_london_root
from fer_core.explain import CamMethod, compute_cam, default_layer, explain_lime, to_input_tensor
from fer_core.models import build_model, describe_device, get_spec

SIDE = 224
CLASSES = 7
LIME_WARM_UP_SAMPLES = 50


def load_face() -> np.ndarray:
    """Return the first London face resized to 224 x 224 RGB."""
    london = default_london_root()
    if london is None:
        raise SystemExit("the London faces were not found; set FER_STUDIO_LONDON_DIR")
    with Image.open(london / "neutral" / "001_03.jpg") as image:
        return np.asarray(image.convert("RGB").resize((SIDE, SIDE), Image.BILINEAR))


def time_runs(work: Callable[[], object], repeats: int) -> list[float]:
    """Return the wall-clock seconds of `repeats` calls."""
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    return seconds


def bench_gradcam(backbone: Backbone, face: np.ndarray, repeats: int) -> list[float]:
    """Time Grad-CAM on one face at the default layer, after one warm-up call, on the CPU."""
    model = build_model(backbone, CLASSES, pretrained=False).eval()
    image = to_input_tensor(face, get_spec(backbone))
    layer = default_layer(backbone)

    def work() -> np.ndarray:
        return compute_cam(model, image, [0], CamMethod.GRADCAM, layer)

    work()
    return time_runs(work, repeats)


def bench_lime(backbone: Backbone, face: np.ndarray, samples: int, repeats: int, device: torch.device) -> list[float]:
    """Time LIME with `samples` perturbations on one face, after a short warm-up."""
    model = build_model(backbone, CLASSES, pretrained=False).eval().to(device)
    spec = get_spec(backbone)
    explain_lime(model, spec, face, 0, samples=LIME_WARM_UP_SAMPLES)
    return time_runs(lambda: explain_lime(model, spec, face, 0, samples=samples), repeats)


def row(workload: str, backbone: Backbone, device: str, seconds: list[float]) -> str:
    """Format one markdown table row."""
    return (f"| {workload} | {get_spec(backbone).display_name} | {device} | {len(seconds)} | "
            f"{statistics.median(seconds):.3f} | {min(seconds):.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed Grad-CAM runs per backbone (default: 5)")
    parser.add_argument("--lime-repeats", type=int, default=3,
                        help="timed LIME runs per backbone and device (default: 3)")
    parser.add_argument("--samples", type=int, default=1000, help="LIME samples per explanation (default: 1000)")
    parser.add_argument("--skip-lime", action="store_true", help="measure Grad-CAM only")
    parser.add_argument("--backbones", nargs="+", default=[Backbone.RESNET50.value, Backbone.SQUEEZENET.value],
                        choices=[backbone.value for backbone in Backbone], help="backbones to measure")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    face = load_face()
    backbones = [Backbone(value) for value in args.backbones]
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])

    rows = []
    for backbone in backbones:
        rows.append(row("Grad-CAM, 1 face", backbone, "cpu", bench_gradcam(backbone, face, args.repeats)))
        for device in [] if args.skip_lime else devices:
            seconds = bench_lime(backbone, face, args.samples, args.lime_repeats, device)
            rows.append(row(f"LIME, {args.samples} samples, 1 face", backbone, describe_device(device), seconds))

    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
          f"torch {torch.__version__}, {args.threads} torch threads, input {SIDE} x {SIDE}, "
          f"load average after the runs: {load}")
    print("| workload | backbone | device | runs | median s | fastest s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for line in rows:
        print(line)


if __name__ == "__main__":
    main()
