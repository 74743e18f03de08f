"""Time of bringing one batch of encoder tokens to the SiT grid: ``resample_tokens`` (one matrix
product over token positions) against ``F.interpolate`` on the ``[B, D, h_e, w_e]`` grid.

    python tools/bench_resample.py                       # CUDA: EfficientNet-Lite0 head tokens
    python tools/bench_resample.py --device cpu --batch 64

Default shape: the Fashion-MNIST presets' target, 256 images x 8x8 tokens x 1280 dims (float32)
-> the 16x16 grid of SiT/2 on 32x32 images. Prints milliseconds per call of each and the largest
difference between them.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from reed_image.targets.vision import resample_tokens


def interpolate_grid(z: torch.Tensor, side: int, grid: int) -> torch.Tensor:
    """The reference: bilinear upsampling of the token grid as an image with ``D`` channels."""
    B, _, D = z.shape
    f = z.transpose(1, 2).reshape(B, D, side, side)
    f = F.interpolate(f, size=(grid, grid), mode="bilinear", align_corners=False)
    return f.flatten(2).transpose(1, 2)


def time_ms(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up (and the cached matrix)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 1000.0 * (time.perf_counter() - t0) / repeats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--side", type=int, default=8, help="encoder grid side")
    p.add_argument("--grid", type=int, default=16, help="SiT grid side")
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--device", default="cuda")
    args = p.parse_args()
    device = torch.device(args.device)
    z = torch.randn(args.batch, args.side * args.side, args.dim, device=device)
    matrix = time_ms(lambda: resample_tokens(z, args.grid), args.repeats, device)
    reference = time_ms(lambda: interpolate_grid(z, args.side, args.grid), args.repeats, device)
    diff = (resample_tokens(z, args.grid) - interpolate_grid(z, args.side, args.grid)).abs().max().item()
    cpu = f"cpu ({torch.get_num_threads()} threads)"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    print(
        json.dumps(
            {
                "device": name,
                "shape": [args.batch, args.side * args.side, args.dim],
                "grid": args.grid,
                "resample_tokens_ms": round(matrix, 3),
                "interpolate_ms": round(reference, 3),
                "max_abs_diff": diff,
            }
        )
    )


if __name__ == "__main__":
    main()
