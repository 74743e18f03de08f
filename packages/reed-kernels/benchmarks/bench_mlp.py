"""Forward + backward time of SiT's MLP ``fc2(gelu_tanh(fc1(x)))`` for each fusion (one GPU).

    python packages/reed-kernels/benchmarks/bench_mlp.py      # SiT-XL/2, batch 64: x [64, 256, 1152]
    python packages/reed-kernels/benchmarks/bench_mlp.py --profile     # and each variant's GPU kernels
    python packages/reed-kernels/benchmarks/bench_mlp.py --variants compiled,fused_mlp --param-dtypes bfloat16

Variants (all under bfloat16 autocast, as training runs them):

    eager               the plain MLP
    compiled            the plain MLP under torch.compile (inductor fuses bias + GELU itself)
    fused_mlp           ``fused_mlp.mlp_gelu`` (cuBLASLt GELU epilogues, autotuned GEMMs), eager
    fused_mlp_compiled  the same under torch.compile (the op stays opaque)

(Measured and deleted: a Triton bias + GELU kernel, torch's GEMMs for the four plain GEMMs, the
DGELU_BGRAD epilogue or ``dpre.sum(0)`` for fc1's bias gradient; fused_mlp.py's docstring.)

For each parameter dtype (float32 weights cast by autocast, or bfloat16 weights): the median ms of
one forward + backward over ``--iters`` steps after ``--warmup`` (CUDA events around each step,
synchronised after it: the host time before the first kernel counts too, which penalises the
compiled variants' guards and wrappers; ``--profile`` adds the GPU kernel time alone), the max abs
difference of the output and of every gradient (x, fc1/fc2 weight and bias) from the eager plain
Mlp, and from a float64 MLP (scaled by the float64 value's max abs: a precision yardstick).
Also: cuBLASLt's version, whether its GELU is the tanh form (exact inputs in the negative tail),
and whether its heuristic has algorithms for a float32 bias. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from reed_kernels import cublaslt
from reed_kernels.fused_mlp import mlp_gelu

VARIANTS = ("eager", "compiled", "fused_mlp", "fused_mlp_compiled")
GRAD_NAMES = ("y", "dx", "dw1", "db1", "dw2", "db2")


class Mlp(torch.nn.Module):
    """SiT's MLP ``fc2(gelu_tanh(fc1(x)))`` in plain PyTorch."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = torch.nn.Linear(dim, hidden)
        self.act = torch.nn.GELU(approximate="tanh")
        self.fc2 = torch.nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class FusedMlp(Mlp):
    """The same parameters through ``mlp_gelu``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mlp_gelu(x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias)


def build(variant: str, dim: int, hidden: int, param_dtype: torch.dtype, state: dict) -> torch.nn.Module:
    cublaslt._plans.clear()  # each variant autotunes its own plans
    mlp = (FusedMlp if variant.startswith("fused_mlp") else Mlp)(dim, hidden)
    mlp.load_state_dict(state)
    mlp = mlp.to("cuda", param_dtype)
    if variant in ("compiled", "fused_mlp_compiled"):
        return torch.compile(mlp, fullgraph=True)
    return mlp


def params_of(mlp: torch.nn.Module) -> list[torch.nn.Parameter]:
    mlp = getattr(mlp, "_orig_mod", mlp)
    return [mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias]


def step(mlp: torch.nn.Module, x: torch.Tensor, dy: torch.Tensor, autocast: bool = True) -> torch.Tensor:
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        y = mlp(x)
    y.backward(dy.to(y.dtype))
    return y


def outputs(mlp, x, dy, autocast: bool = True) -> list[torch.Tensor]:
    """``[y, dx, dw1, db1, dw2, db2]``."""
    x = x.detach().clone().requires_grad_()
    for p in params_of(mlp):
        p.grad = None
    y = step(mlp, x, dy, autocast)
    return [y.detach(), x.grad] + [p.grad for p in params_of(mlp)]


def time_variant(mlp, x, dy, iters: int, warmup: int) -> float:
    """Median ms of forward + backward (CUDA events around each step)."""
    x = x.detach().clone().requires_grad_()
    params = params_of(mlp)
    for _ in range(warmup):
        x.grad = None
        for p in params:
            p.grad = None
        step(mlp, x, dy)
    times = []
    for _ in range(iters):
        x.grad = None
        for p in params:
            p.grad = None
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step(mlp, x, dy)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def kernel_profile(mlp, x, dy, steps: int = 5) -> list[list]:
    """GPU kernels of ``steps`` forward + backward steps: ``[name, us per step, calls per step]``."""
    from torch.profiler import ProfilerActivity, profile

    x = x.detach().clone().requires_grad_()
    params = params_of(mlp)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            x.grad = None  # as timed: fresh gradients, no accumulation kernels
            for p in params:
                p.grad = None
            step(mlp, x, dy)
        torch.cuda.synchronize()
    kernels = sorted(
        (e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA),
        key=lambda e: -e.self_device_time_total,
    )
    return [
        [e.key[:160], round(e.self_device_time_total / steps, 1), e.count / steps]
        for e in kernels
        if e.self_device_time_total > 0
    ]


def probes() -> dict:
    """cuBLASLt facts this binding relies on, measured."""
    out: dict = {"cublaslt_version": cublaslt.library_version()}
    # GELU form: exactly representable pre-activations in [-4.5, -2.5] (tanh and erf forms differ 3-66%)
    M, K, N = 512, 16, 64
    g = torch.Generator().manual_seed(0)
    x = (torch.randint(-72, -39, (M, K), generator=g) / 16).to("cuda", torch.bfloat16)
    w = F.one_hot(torch.arange(N) % K, K).to("cuda", torch.bfloat16)
    act, pre = cublaslt.linear_gelu_aux(x, w, torch.zeros(N, device="cuda", dtype=torch.bfloat16))
    p = pre.double().requires_grad_()
    forms = {"tanh": F.gelu(p, approximate="tanh"), "erf": F.gelu(p)}
    dpre, _ = cublaslt.matmul_dgelu_bgrad(
        torch.ones(M, K, device="cuda", dtype=torch.bfloat16), w.t().contiguous(), pre
    )
    for name, value in forms.items():
        (slope,) = torch.autograd.grad(value.sum(), p)
        out[f"gelu_tail_max_rel_err_vs_{name}"] = ((act.double() - value) / value).abs().max().item()
        out[f"dgelu_tail_max_rel_err_vs_{name}"] = ((dpre.double() - slope) / slope).abs().max().item()
    # float32 bias / bias gradient with bfloat16 matrices
    xb, wb = torch.randn(256, 64, device="cuda").bfloat16(), torch.randn(128, 64, device="cuda").bfloat16()
    b = torch.randn(128, device="cuda")
    try:
        act32, _ = cublaslt.linear_gelu_aux(xb, wb, b)
        act16, _ = cublaslt.linear_gelu_aux(xb, wb, b.bfloat16())
        out["float32_bias"] = f"ok (max |diff| vs bf16 bias {(act32 - act16).abs().max().item():.3g})"
    except RuntimeError as err:
        out["float32_bias"] = f"unsupported: {err}"
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--dim", type=int, default=1152)
    p.add_argument("--hidden", type=int, default=4608)
    p.add_argument("--iters", type=int, default=50, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first (compilation)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated from {VARIANTS}")
    p.add_argument("--param-dtypes", default="float32,bfloat16", help="comma-separated: float32, bfloat16")
    p.add_argument("--profile", action="store_true", help="also list each variant's GPU kernels")
    p.add_argument("--out", type=Path, help="also write the JSON here, after every variant")
    args = p.parse_args()
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variants {sorted(unknown)}; choose from {VARIANTS}")
    if not torch.cuda.is_available():
        p.error("needs a CUDA device")

    torch.manual_seed(0)
    base = Mlp(args.dim, args.hidden)
    torch.nn.init.normal_(base.fc1.bias, std=0.5)
    torch.nn.init.normal_(base.fc2.bias, std=0.5)
    state = base.state_dict()
    x = torch.randn(args.batch, args.tokens, args.dim, device="cuda")
    dy = torch.randn(args.batch, args.tokens, args.dim, device="cuda")
    exact = outputs(
        build("eager", args.dim, args.hidden, torch.float64, state), x.double(), dy.double(), False
    )
    scale = [t.abs().max().item() for t in exact]

    result: dict = {
        "shape": {"x": [args.batch, args.tokens, args.dim], "hidden": args.hidden},
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "iters": args.iters,
        "autotune_candidates": cublaslt.AUTOTUNE_CANDIDATES,
    }
    try:
        result["cublaslt"] = probes()
    except Exception as err:  # the timings still come
        result["cublaslt"] = {"error": f"{type(err).__name__}: {err}"}

    def emit() -> None:
        text = json.dumps(result, indent=1)
        if args.out is not None:
            args.out.write_text(text)

    for dtype_name in args.param_dtypes.split(","):
        param_dtype = getattr(torch, dtype_name)
        rows: dict = {}
        result[f"{dtype_name}_weights"] = rows
        plain = outputs(build("eager", args.dim, args.hidden, param_dtype, state), x, dy)
        for variant in variants:
            torch._dynamo.reset()
            try:
                mlp = build(variant, args.dim, args.hidden, param_dtype, state)
                got = outputs(mlp, x, dy)
                row = {"fwd_bwd_ms": round(time_variant(mlp, x, dy, args.iters, args.warmup), 4)}
                row["max_abs_diff_vs_eager"] = {
                    n: float(f"{(a.float() - b.float()).abs().max().item():.4g}")
                    for n, a, b in zip(GRAD_NAMES, got, plain)
                }
                row["max_abs_err_vs_float64_scaled"] = {
                    n: float(f"{(a.double() - e).abs().max().item() / s:.3g}")
                    for n, a, e, s in zip(GRAD_NAMES, got, exact, scale)
                }
                if args.profile:
                    kernels = kernel_profile(mlp, x, dy)
                    row["gpu_kernel_ms_per_step"] = round(sum(k[1] for k in kernels) / 1000, 4)
                    row["kernels_us_per_step"] = kernels
            except Exception as err:
                row = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
            rows[variant] = row
            emit()
        if "compiled" in rows and "fwd_bwd_ms" in rows["compiled"]:
            for row in rows.values():
                if "fwd_bwd_ms" in row:
                    row["speedup_vs_compiled"] = round(rows["compiled"]["fwd_bwd_ms"] / row["fwd_bwd_ms"], 3)
    flops = 3 * 2 * 2 * math.prod([args.batch, args.tokens, args.dim]) * args.hidden  # 2 GEMMs, fwd + 2 bwd
    result["gemm_tflop_per_step"] = round(flops / 1e12, 3)
    emit()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
