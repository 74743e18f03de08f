"""``F.linear`` with every GEMM an autotuned cuBLASLt matmul (``cublaslt.py``), both ways.

For rows ``x [M, K]``, ``weight [N, K]`` and an optional ``bias [N]``:

    y  = x W^T + b          (epilogue BIAS)
    dx = dy W
    dW = dy^T x
    db = sum over rows of dy   (epilogue BGRADB of the dW GEMM; only when the bias needs a gradient)

Under ``torch.compile`` PyTorch runs a Linear's GEMMs through cuBLAS with its heuristic's first
algorithm; here each GEMM shape gets the fastest of the heuristic's first
``cublaslt.AUTOTUNE_CANDIDATES``, timed on its first call (as ``fused_mlp`` does for the MLP). The
fused SiT (reed-image's ``FusedSiT``) runs its attention's qkv and proj Linears and its adaLN
Linears through this: -0.3 to -0.5 ms a SiT-XL/2 step for the attention Linears (H100), and
PyTorch's cuBLAS picks a weight-gradient kernel for the adaLN Linears that is preceded by a
workspace memset (about 7 us of idle GPU a block inside the step's CUDA graph). Where the cuBLASLt
path cannot run (CPU, float32, a dimension not a multiple of 8) the same ops compute with PyTorch's
matmuls. Both directions are custom ops (``reed_kernels::cublaslt_linear_fwd/bwd``) tied with
``register_autograd``, opaque to ``torch.compile`` and recorded by CUDA-graph capture (plans are
made in the warm-up steps).
"""

from __future__ import annotations

import torch
from torch.library import custom_op, register_autograd, register_fake

from reed_kernels import cublaslt
from reed_kernels.fused_mlp import _autocast, cublaslt_path_available

__all__ = ["cublaslt_linear"]


def _cublaslt_runs(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """``fused_mlp``'s condition, and rows a multiple of 8 (a leading dimension of the dW GEMM)."""
    return cublaslt_path_available(x, weight) and x.shape[0] % 8 == 0


@custom_op("reed_kernels::cublaslt_linear_fwd", mutates_args=())
def _linear_fwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if _cublaslt_runs(x, weight):
        return cublaslt.matmul(x, weight.t(), bias=bias)[0]
    with torch.autocast(x.device.type, enabled=False):
        return x @ weight.t() if bias is None else torch.addmm(bias, x, weight.t())


@register_fake("reed_kernels::cublaslt_linear_fwd")
def _linear_fwd_fake(x, weight, bias):
    return x.new_empty((x.shape[0], weight.shape[0]))


@custom_op("reed_kernels::cublaslt_linear_bwd", mutates_args=())
def _linear_bwd(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, need_dbias: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dx, dweight, dbias)``; ``dbias`` empty unless ``need_dbias``."""
    dy = dy.contiguous()
    if _cublaslt_runs(x, weight):
        dx, _ = cublaslt.matmul(dy, weight)
        dweight, dbias = cublaslt.matmul(dy.t(), x, sum_a=need_dbias)
        return dx, dweight, dbias if need_dbias else dy.new_empty(0)
    with torch.autocast(dy.device.type, enabled=False):
        if need_dbias:
            dbias = dy.sum(0, dtype=torch.promote_types(dy.dtype, torch.float32)).to(dy.dtype)
        else:
            dbias = dy.new_empty(0)
        return dy @ weight, dy.t() @ x, dbias


@register_fake("reed_kernels::cublaslt_linear_bwd")
def _linear_bwd_fake(dy, x, weight, need_dbias):
    return (
        x.new_empty(x.shape),
        weight.new_empty(weight.shape),
        dy.new_empty((dy.shape[1],) if need_dbias else (0,)),
    )


def _setup_context(ctx, inputs, output) -> None:
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None


def _backward(ctx, dy):
    x, weight = ctx.saved_tensors
    need_dbias = ctx.has_bias and ctx.needs_input_grad[2]
    dx, dweight, dbias = torch.ops.reed_kernels.cublaslt_linear_bwd(dy, x, weight, need_dbias)
    return dx, dweight, dbias if need_dbias else None


register_autograd("reed_kernels::cublaslt_linear_fwd", _backward, setup_context=_setup_context)


def cublaslt_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for ``x [..., K]``: the module docstring's GEMMs.

    Under autocast (for ``x``'s device) the arguments are cast to the autocast dtype first, as
    ``F.linear`` would have them (``fused_mlp._autocast``: float64 stays float64).
    """
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
        x, weight = _autocast(x, dtype), _autocast(weight, dtype)
        bias = None if bias is None else _autocast(bias, dtype)
    if x.shape[-1] != weight.shape[1] or (bias is not None and bias.shape != (weight.shape[0],)):
        got_bias = None if bias is None else tuple(bias.shape)
        raise ValueError(
            f"cublaslt_linear: x [..., {weight.shape[1]}] and bias [{weight.shape[0]}] for weight "
            f"{tuple(weight.shape)}, got x {tuple(x.shape)}, bias {got_bias}"
        )
    rows = torch.ops.reed_kernels.cublaslt_linear_fwd(x.reshape(-1, x.shape[-1]), weight, bias)
    return rows.view(*x.shape[:-1], weight.shape[0])
