"""Forward + backward time of SiT's attention for each SDPA kernel (one GPU).

    python tools/bench_attention.py                       # SiT-XL/2 on 32x32 latents, batch 64
    python tools/bench_attention.py --heads 6 --dim 384   # SiT-S

Inputs are laid out as SiT's ``Attention`` makes them (views of one QKV projection), so the
numbers include whatever copies a kernel needs. Prints ms and TFLOP/s (4 N^2 d per head forward,
2.5x that backward) per backend; pick one with ``model.attention=<backend>``.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}


def time_backend(backend: SDPBackend, qkv: torch.Tensor, heads: int, reps: int) -> float:
    """Median ms of forward + backward."""
    B, N, _ = qkv.shape
    head_dim = qkv.shape[-1] // (3 * heads)

    def run() -> None:
        q, k, v = qkv.reshape(B, N, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        with sdpa_kernel(backend):
            out = F.scaled_dot_product_attention(q, k, v)
        out.backward(grad)

    grad = torch.randn(B, heads, N, head_dim, device=qkv.device, dtype=qkv.dtype)
    for _ in range(3):
        run()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--dim", type=int, default=1152)
    p.add_argument("--reps", type=int, default=20)
    args = p.parse_args()
    qkv = torch.randn(
        args.batch, args.tokens, 3 * args.dim, device="cuda", dtype=torch.bfloat16, requires_grad=True
    )
    flops = 3.5 * 4 * args.batch * args.tokens**2 * args.dim  # fwd + bwd (2.5x fwd)
    results = {}
    for name, backend in BACKENDS.items():
        try:
            ms = time_backend(backend, qkv, args.heads, args.reps)
        except RuntimeError as err:
            results[name] = {"error": str(err).splitlines()[0][:120]}
            continue
        results[name] = {"fwd_bwd_ms": round(ms, 3), "TFLOP_per_s": round(flops / ms / 1e9, 1)}
    print(json.dumps({"shape": vars(args), "device": torch.cuda.get_device_name(), **results}, indent=1))


if __name__ == "__main__":
    main()
