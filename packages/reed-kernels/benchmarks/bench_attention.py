"""Forward + backward time of SiT's attention for each SDPA kernel (one GPU).

    python packages/reed-kernels/benchmarks/bench_attention.py        # SiT-XL/2, 32x32 latents, batch 64
    python packages/reed-kernels/benchmarks/bench_attention.py --heads 6 --dim 384   # SiT-S

Inputs are laid out as SiT's ``Attention`` makes them (views of one QKV projection), so the
numbers include whatever copies a kernel needs: for the SDPA kernels, autograd's stacking of the
q/k/v gradients into the QKV projection's gradient; ``fa4`` (FlashAttention-4 on the packed
``qkv``, ``reed_kernels/flash_attention.py``; needs the ``flash-attn-4`` package) writes that gradient
directly. Prints, per backend, ms and TFLOP/s (4 N^2 d per head forward, 2.5x that backward) of
one forward + backward (recorded once as a CUDA graph and replayed ``--reps`` times between two
CUDA events: GPU time alone, as a graphed training step pays it; median of 5 such groups), and
the max abs difference of the output and of the QKV gradient from a float32 reference (SDPA's
own choice measured the same as its fastest kernel, so SiT leaves it to PyTorch; ``fa4`` is
reed-image's ``model.kernels=fused-fa4``). The timed step includes the qkv Linear's bias gradient (fa4
forms it inside its backward's Triton passes, the others by a sum of the qkv gradient, as autograd
does for a Linear; ``--no-bias`` leaves it out).
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from reed_kernels.flash_attention import attention_reference, packed_attention

BACKENDS = {
    "auto": None,  # PyTorch's own choice (SiT's plain Attention)
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
    "fa4": None,
}


def attend(backend: str, qkv: torch.Tensor, heads: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    """SiT's attention of ``qkv [B, N, 3 D]`` -> ``[B, N, H, d]`` through ``backend``; with ``bias``
    (fa4) the op also forms the qkv bias gradient."""
    B, N, _ = qkv.shape
    packed = qkv.view(B, N, 3, heads, -1)
    if backend == "fa4":
        return packed_attention(packed, bias)
    q, k, v = packed.permute(2, 0, 3, 1, 4).unbind(0)
    if BACKENDS[backend] is None:
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
    with sdpa_kernel(BACKENDS[backend]):
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2)


def time_backend(backend: str, qkv: torch.Tensor, heads: int, reps: int, bias: bool) -> float:
    """Median over 5 groups of ``reps`` replays of one forward + backward recorded as a CUDA graph:
    GPU time alone (what a graphed training step pays), in ms per forward + backward. With ``bias``
    the step also forms the qkv Linear's bias gradient: fa4 in its backward, the others as autograd
    does for a Linear (a sum of the qkv gradient over tokens)."""
    grad = torch.randn(
        *qkv.shape[:2], heads, qkv.shape[-1] // (3 * heads), device=qkv.device, dtype=qkv.dtype
    )
    qkv_bias = torch.zeros(qkv.shape[-1], device=qkv.device, requires_grad=True) if bias else None
    folded = qkv_bias is not None and backend == "fa4"  # formed in its Triton pre/postprocess

    def run() -> None:
        qkv.grad = None
        attend(backend, qkv, heads, qkv_bias if folded else None).backward(grad)
        if qkv_bias is not None and not folded:
            qkv_bias.grad = qkv.grad.sum((0, 1), dtype=torch.float32)

    return graph_replay_ms(run, reps)


def graph_replay_ms(run, reps: int, calls_per_graph: int = 1) -> float:
    """GPU time of one ``run()`` in ms: ``calls_per_graph`` calls recorded as one CUDA graph
    (after 3 warm-up calls on a side stream), replayed ``reps`` times between two CUDA events;
    the median of 5 such groups."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            run()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls_per_graph):
            run()
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / (reps * calls_per_graph))
    return sorted(times)[len(times) // 2]


def errors(backend: str, qkv: torch.Tensor, heads: int) -> dict:
    """Max abs difference of the output and of the QKV gradient from a float32 reference."""
    B, N, _ = qkv.shape
    grad = torch.randn(B, N, heads, qkv.shape[-1] // (3 * heads), device=qkv.device, dtype=qkv.dtype)
    qkv.grad = None
    out = attend(backend, qkv, heads)
    out.backward(grad)
    reference_qkv = qkv.detach().float().requires_grad_(True)
    reference = attention_reference(reference_qkv.view(B, N, 3, heads, -1))[0]
    reference.backward(grad.float())
    return {
        "out_max_abs_err": (out.float() - reference).abs().max().item(),
        "dqkv_max_abs_err": (qkv.grad.float() - reference_qkv.grad).abs().max().item(),
        "dqkv_max_abs": reference_qkv.grad.abs().max().item(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--dim", type=int, default=1152)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated from {list(BACKENDS)}")
    p.add_argument("--no-bias", action="store_true", help="time attention without the qkv bias gradient")
    args = p.parse_args()
    qkv = torch.randn(
        args.batch, args.tokens, 3 * args.dim, device="cuda", dtype=torch.bfloat16, requires_grad=True
    )
    flops = 3.5 * 4 * args.batch * args.tokens**2 * args.dim  # fwd + bwd (2.5x fwd)
    results = {}
    for backend in args.backends.split(","):
        try:
            ms = time_backend(backend, qkv, args.heads, args.reps, bias=not args.no_bias)
            accuracy = errors(backend, qkv, args.heads)
        except Exception as err:  # noqa: BLE001 (a kernel that refuses the shape is a result too)
            results[backend] = {"error": str(err).splitlines()[0][:120] if str(err) else type(err).__name__}
            continue
        results[backend] = {"fwd_bwd_ms": round(ms, 3), "TFLOP_per_s": round(flops / ms / 1e9, 1), **accuracy}
    print(json.dumps({"shape": vars(args), "device": torch.cuda.get_device_name(), **results}, indent=1))


if __name__ == "__main__":
    main()
