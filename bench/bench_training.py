"""Measure training throughput: images per second through forward, backward and an SGD step.

Each backbone is built from scratch with a 7-class head and trained at its real input size
(224 px, 160 px for InceptionResnetV1) on random input tensors, so the number is the
network's cost alone. With `--prepared FOLDER` the batches come from a prepared set through
the training data pipeline (PNG decoding, resizing, augmentation) instead. The clock covers
`--batches` batches after `--warmup` untimed ones; on CUDA it runs with mixed precision as
training does, and synchronises before reading the clock.

    python bench/bench_training.py [--device cpu|cuda] [--batch-size 16] [--batches 3]
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from fer_core.constants import Backbone, Emotion
from fer_core.models import build_model, describe_device, get_spec, pick_device
from fer_core.splits import read_manifest
from fer_core.training import SGD_MOMENTUM, ManifestDataset, class_names


def random_batches(batch_size: int, input_size: int, classes: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    while True:
        yield (torch.randn(batch_size, 3, input_size, input_size, generator=generator),
               torch.randint(0, classes, (batch_size,), generator=generator))


def prepared_batches(prepared: Path, backbone: Backbone, batch_size: int,
                     workers: int) -> tuple[Iterator[tuple[torch.Tensor, torch.Tensor]], int]:
    manifest = read_manifest(prepared)
    classes = class_names(manifest)
    spec = get_spec(backbone)
    dataset = ManifestDataset(prepared, manifest["image"].astype(str).tolist(),
                              [classes.index(label) for label in manifest["label"].astype(str)],
                              spec.input_size, spec.mean, spec.std, augment=True)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers)

    def forever() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield from loader

    return forever(), len(classes)


def measure(backbone: Backbone, device: torch.device, batch_size: int, batches: int, warmup: int,
            prepared: Path | None, workers: int) -> dict:
    spec = get_spec(backbone)
    if prepared is None:
        classes = len(Emotion)
        source = random_batches(batch_size, spec.input_size, classes)
    else:
        source, classes = prepared_batches(prepared, backbone, batch_size, workers)

    model = build_model(backbone, classes, pretrained=False).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=SGD_MOMENTUM)
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)

    def step() -> None:
        inputs, targets = next(source)
        inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            loss = nn.functional.cross_entropy(model(inputs), targets)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)

    started = time.perf_counter()
    for _ in range(batches):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    return {"backbone": spec.display_name, "input": spec.input_size, "seconds": seconds,
            "images_per_second": batches * batch_size / seconds, "ms_per_batch": 1000 * seconds / batches}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per batch (default: 16)")
    parser.add_argument("--batches", type=int, default=3, help="timed batches per backbone (default: 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches before the clock (default: 1)")
    parser.add_argument("--backbones", nargs="+", choices=[b.value for b in Backbone],
                        default=[b.value for b in Backbone], help="backbones to measure (default: all)")
    parser.add_argument("--prepared", type=Path, default=None,
                        help="prepared set folder to read batches from (default: random tensors)")
    parser.add_argument("--workers", type=int, default=0, help="data loader workers with --prepared (default: 0)")
    args = parser.parse_args()

    device = pick_device(args.device)
    results = [measure(Backbone(name), device, args.batch_size, args.batches, args.warmup, args.prepared,
                       args.workers) for name in args.backbones]

    source = f"prepared set {args.prepared}" if args.prepared else "random tensors"
    print(f"Training throughput on {describe_device(device)}, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}; batch {args.batch_size}, {args.batches} timed batches after "
          f"{args.warmup} warm-up, inputs from {source}")
    print()
    print("| backbone | input (px) | images/s | ms per batch |")
    print("| --- | ---: | ---: | ---: |")
    for row in results:
        print(f"| {row['backbone']} | {row['input']} | {row['images_per_second']:.1f} | {row['ms_per_batch']:.0f} |")


if __name__ == "__main__":
    main()
