"""The trainer's batched augmentation vs kornia's, on the same work: is a library made for it faster?

Ours (eikd_edge.distill.step.augment): random crop (pad-crop at <= 64 px, random-resized-crop above), flip,
brightness/contrast jitter, all on whole batches. Kornia (optional, `pip install kornia`): the same three steps as
an AugmentationSequential. Both take a uint8 NCHW batch and return float images; the two are timed interleaved,
median of `--repeats` rounds, on the chosen device.

    python -m benchmarks.augment_compare [--device cpu|cuda] [--repeats 30] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from eikd_edge.config import AugmentConfig
from eikd_edge.distill.step import augment

CASES = ((32, 256), (224, 64))  # (side, batch)


def _ours(side: int) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    config = AugmentConfig(flip=True, jitter=0.1)
    return lambda batch, generator: augment(batch, config, generator)


def _kornia(side: int) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    import kornia.augmentation as K

    crop = (
        K.RandomCrop((side, side), padding=2, padding_mode="constant")
        if side <= 64
        else K.RandomResizedCrop((side, side), scale=(0.35, 1.0))
    )
    pipeline = K.AugmentationSequential(
        crop, K.RandomHorizontalFlip(), K.ColorJitter(brightness=0.1, contrast=0.1, p=1.0)
    )
    return lambda batch, generator: pipeline(batch.float() / 255) * 255


def _time(fn: Callable[[torch.Tensor, torch.Generator], torch.Tensor], batch: torch.Tensor, device: str) -> float:
    generator = torch.Generator(device=device).manual_seed(0)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn(batch, generator)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        import kornia
    except ImportError:
        raise SystemExit("kornia is not installed: pip install kornia") from None
    print(f"device {args.device}, {args.threads} thread(s), kornia {kornia.__version__}, torch {torch.__version__}")
    print("| input | batch | ours (ms) | kornia (ms) | kornia / ours |")
    print("|---|---:|---:|---:|---:|")
    for side, size in CASES:
        batch = torch.randint(0, 256, (size, 3, side, side), dtype=torch.uint8, device=args.device)
        ours, theirs = _ours(side), _kornia(side)
        for fn in (ours, theirs):  # warm-up
            _time(fn, batch, args.device)
        times: dict[str, list[float]] = {"ours": [], "kornia": []}
        for _ in range(args.repeats):
            times["ours"].append(_time(ours, batch, args.device))
            times["kornia"].append(_time(theirs, batch, args.device))
        a, b = (statistics.median(times[k]) * 1000 for k in ("ours", "kornia"))
        print(f"| {side}×{side} | {size} | {a:.2f} | {b:.2f} | {b / a:.2f} |")


if __name__ == "__main__":
    main()
