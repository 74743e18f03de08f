"""Launch configurations of the fused adaLN kernels (reed_kernels/fused_adaln.py), timed on one GPU.

    python packages/reed-kernels/benchmarks/bench_adaln.py     # SiT-XL/2, batch 64: [64, 256, 1152]
    python packages/reed-kernels/benchmarks/bench_adaln.py --shape 64 256 1152 --reps 50

For a float32 and a bfloat16 residual stream (``x``, ``x_out``, ``dx_out`` and ``dx``; SiT's
``model.residual_dtype``), with bfloat16 branch/gate/shift/scale/h/dh and the branch's bias (the
gated, biased call every block makes twice): the forward op for each (rows per program, warps)
and the backward op for each (rows per loop step, warps, pipeline stages, programs per SM): the
GPU time of a call (``--reps`` calls in a CUDA graph, best of 5 replays) and the bytes moved per
second (each configuration passed to the ops as ``config=``). The default configuration is
marked; prints JSON.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json

import torch

from reed_kernels import fused_adaln


def graph_us(fn, reps: int, replays: int = 5) -> float:
    """GPU time (us) of one ``fn()``: ``reps`` calls recorded in a CUDA graph, best of ``replays``
    replays (an eager call's host time, longer than the kernel, would be timed otherwise)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()  # compile and warm up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    graph.replay()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        times.append((start, end))
    torch.cuda.synchronize()
    return 1000.0 * min(s.elapsed_time(e) for s, e in times) / reps


def inputs(shape, x_dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    b, n, d = shape
    small = torch.bfloat16

    def randn(*size, dtype=small):
        return torch.randn(*size, generator=g, device="cuda").to(dtype)

    x = randn(b, n, d, dtype=x_dtype)
    branch = randn(b, n, d)
    adaln = randn(b, 6 * d) * 0.5
    gate, shift, scale = adaln[:, :d], adaln[:, d : 2 * d], adaln[:, 2 * d : 3 * d]
    bias = randn(d, dtype=torch.float32)
    return x, branch, gate, shift, scale, bias


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", type=int, nargs=3, default=[64, 256, 1152], metavar=("B", "N", "D"))
    p.add_argument("--reps", type=int, default=20)
    args = p.parse_args()
    shape = tuple(args.shape)
    fwd_op = torch.ops.reed_kernels.add_norm_modulate_fwd
    bwd_op = torch.ops.reed_kernels.add_norm_modulate_bwd
    default_programs = fused_adaln.BWD_PROGRAMS_PER_SM
    results = {"device": torch.cuda.get_device_name(), "shape": shape, "reps": args.reps}
    elements = shape[0] * shape[1] * shape[2]
    for x_dtype in (torch.float32, torch.bfloat16):
        name = str(x_dtype).removeprefix("torch.")
        x, branch, gate, shift, scale, bias = inputs(shape, x_dtype)
        x_bytes = x.element_size()
        base_fwd = fused_adaln._fwd_config(shape[2], x_bytes)
        forward = []
        for rows, warps in itertools.product((1, 2, 4), (1, 2, 4, 8)):
            args_fwd = (x, branch, gate, shift, scale, 1e-6, torch.bfloat16, bias, [rows, warps])
            us = graph_us(functools.partial(fwd_op, *args_fwd), args.reps)
            moved = elements * (2 * x_bytes + 2 + 2)  # x, x_out; branch; h
            forward.append(
                {
                    "rows": rows,
                    "warps": warps,
                    "us": round(us, 1),
                    "TB_per_s": round(moved / us / 1e6, 2),
                    "default": (rows, warps) == base_fwd[1:],
                }
            )
        x_out, _, mean, rstd = fwd_op(x, branch, gate, shift, scale, 1e-6, torch.bfloat16, bias)
        dx_out = torch.randn_like(x_out)
        dh = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
        base_bwd = fused_adaln._bwd_config(shape[2], x_bytes)
        backward = []
        for rows, warps, stages, programs in itertools.product((1, 2), (4, 8), (2, 3, 4), (2, 4)):
            config = [rows, warps, stages, programs]
            args_bwd = (dx_out, dh, x_out, mean, rstd, branch, gate, scale, True, torch.bfloat16, bias, True)
            args_bwd += (True, config)
            us = graph_us(functools.partial(bwd_op, *args_bwd), args.reps)
            moved = elements * (3 * x_bytes + 2 + 2 + 2)  # dx_out, x_out, dx; dh, branch, dbranch
            backward.append(
                {
                    "rows": rows,
                    "warps": warps,
                    "stages": stages,
                    "programs_per_sm": programs,
                    "us": round(us, 1),
                    "TB_per_s": round(moved / us / 1e6, 2),
                    "default": (rows, warps, stages) == base_bwd[1:] and programs == default_programs,
                }
            )
        results[name] = {
            "forward": sorted(forward, key=lambda r: r["us"]),
            "backward": sorted(backward, key=lambda r: r["us"])[:12] + [r for r in backward if r["default"]],
        }
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
