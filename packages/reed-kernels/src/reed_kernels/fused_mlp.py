"""SiT's MLP ``fc2(gelu_tanh(fc1(x)))`` with the GELU in cuBLASLt's matmul epilogues, each way.

For rows ``x [M, D]`` (leading dims flattened), ``W1 [F, D]``, ``b1 [F]``, ``W2 [D, F]``, ``b2 [D]``:

Forward (``mlp_gelu``; ``reed_kernels::mlp_gelu_fwd``):

    pre = x W1^T + b1,   act = gelu_tanh(pre)      one GEMM, epilogue GELU_AUX_BIAS (pre: aux output)
    y   = act W2^T + b2                            addmm

    gelu_tanh(p) = 0.5 p (1 + tanh(k (p + c p^3))),     k = sqrt(2/pi), c = 0.044715

Backward from ``dy [M, D]`` (``reed_kernels::mlp_gelu_bwd``; saved: ``x``, ``pre``, ``act``, as the
unfused MLP keeps too):

    dW2  = dy^T act,    db2 = sum over rows of dy
    dpre = (dy W2) * gelu_tanh'(pre)             one GEMM, epilogue DGELU
    db1  = sum over rows of dpre                 a gemv, dpre^T 1
    dx   = dpre W1,     dW1 = dpre^T x

    gelu_tanh'(p) = 0.5 (1 + t) + 0.5 p (1 - t^2) k (1 + 3 c p^2),   t = tanh(k (p + c p^3))

Traffic: the unfused MLP writes ``pre`` from fc1's GEMM, reads it back in the GELU kernel and writes
``act``; its backward writes ``dact = dy W2``, reads it and ``pre`` in the GELU backward to write
``dpre``, and reads ``dpre`` again for ``db1`` (unless that sum is fused into the GELU backward).
Here the forward GEMM writes ``act`` and ``pre`` from its epilogue, and the backward GEMM reads
``pre`` and writes ``dpre`` from its epilogue: no elementwise pass and no ``dact`` at all; ``db1``
is one more read of ``dpre`` (cuBLASLt's DGELU_BGRAD epilogue, which would sum it in the GEMM, is a
slow separate kernel on an H100: see ``cublaslt.matmul_dgelu_bgrad``). For
SiT-XL/2 (``M`` = 64 x 256 = 16384, ``F`` = 4608, bfloat16: 151 MB per ``[M, F]`` tensor) that is
453 -> 302 MB forward and 755 (604 with a fused bias sum) -> 453 MB in the GELU part of the backward.

Measured (H100, cuBLAS 13.1, ``benchmarks/bench_mlp.py --profile``, bfloat16 autocast, x [64, 256, 1152]):
GPU kernel time of one forward + backward 1.88 ms with the op under ``torch.compile`` against
2.03 ms for the compiled unfused MLP and 1.96 ms with a Triton bias + GELU kernel (bfloat16 weights;
float32 weights: 1.93 / 2.08 / 2.06 ms, grad-accumulate adds of the profiled run included; ``db1``
by ``dpre.sum(0)`` there, the gemv takes 10 us less). The fused forward GEMM
takes 284 us where the bias GEMM and the GELU took about 230 + 106 us; the DGELU GEMM about 280 us
where the GEMM, the GELU backward and the bias sum took about 230 + 144 + 52 us. Per SiT-XL/2 step
(28 blocks) that is about 4 ms less kernel time than the compiled MLP. The wall time of one
isolated MLP step, synchronised after each (so each variant's host time before its first kernel
counts), shows no clear gain: bfloat16 / float32 weights, the op 2.05 / 2.23 ms eager and
2.11 / 2.41 ms compiled, the unfused MLP 2.08 / 2.14 eager and 2.12 / 2.27 compiled, the Triton
bias + GELU kernel 2.05 / 2.13 ms (run-to-run noise about 0.05 ms).

On CUDA with bfloat16/float16 tensors and ``D``, ``F`` multiples of 8, the two GEMMs with epilogues
run through ``cublaslt.py`` (ctypes: PyTorch does not expose these epilogues). With a row count that
is a multiple of 8, so do the other four, autotuned (``cublaslt.matmul``): fc2's bias in its forward
GEMM's epilogue, and fc2's bias gradient in the dW2 GEMM's epilogue (BGRADB), in place of a separate
reduction; MLP kernel time 1.71 ms compiled, against 1.79 ms with ``torch.mm``/``addmm`` for those
four (same H100, one process). fc1's bias gradient is a gemv (``dpre^T 1``): in the dW1 GEMM's
BGRADB epilogue, which cuBLASLt runs as a separate reduction kernel of about 81 us at SiT-XL/2 shapes,
the step was 0.4 ms longer (590.2 against 592.4 images/s, one H100, docs/results/image.md). fc2's
bias may be left to the caller (``b2=None``). Anywhere else (CPU,
float32/float64, odd widths) the same ops run ``linear_gelu_aux_reference`` and
``matmul_dgelu_bgrad_reference`` (plain PyTorch, float32 arithmetic or float64). Both are
``torch.library.custom_op``s tied with ``register_autograd``: ``torch.compile(fullgraph=True)``
keeps each as one opaque call. Custom ops are not autocast, so ``mlp_gelu`` casts ``x``, the
weights and the biases to the autocast dtype itself when autocast is on for ``x``'s device (as
``F.linear`` would); gradients flow back through those casts to float32 parameters.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.library import custom_op, register_autograd, register_fake

from reed_kernels import cublaslt

__all__ = [
    "cublaslt_path_available",
    "linear_gelu_aux_reference",
    "matmul_dgelu_bgrad_reference",
    "mlp_gelu",
]

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_KAPPA = 0.044715


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float32, or float64 where an input is float64."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def linear_gelu_aux_reference(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(gelu_tanh(x W^T + b), x W^T + b)`` in plain PyTorch, float32 arithmetic (or float64).

    What ``cublaslt.linear_gelu_aux`` computes: the GELU of the unrounded ``pre``; both outputs in
    ``x``'s dtype.
    """
    dtype = _compute_dtype(x, weight, bias)
    pre = F.linear(x.to(dtype), weight.to(dtype), bias.to(dtype))
    inner = _SQRT_2_OVER_PI * (pre + _KAPPA * pre * pre * pre)
    out = 0.5 * pre * (1.0 + torch.tanh(inner))
    return out.to(x.dtype), pre.to(x.dtype)


def matmul_dgelu_bgrad_reference(
    dout: torch.Tensor, weight: torch.Tensor, pre: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dpre, dbias)``: ``dpre = (dout W) * gelu_tanh'(pre)``, ``dbias`` its column sums.

    Plain PyTorch, float32 arithmetic (or float64); ``dbias`` is summed from the unrounded ``dpre``
    (as cuBLASLt's DGELU_BGRAD epilogue does). Both in ``pre``'s dtype.
    """
    dtype = _compute_dtype(dout, weight, pre)
    p = pre.to(dtype)
    t = torch.tanh(_SQRT_2_OVER_PI * (p + _KAPPA * p * p * p))
    slope = 0.5 * (1.0 + t) + 0.5 * p * (1.0 - t * t) * _SQRT_2_OVER_PI * (1.0 + 3.0 * _KAPPA * p * p)
    dpre = (dout.to(dtype) @ weight.to(dtype)) * slope
    return dpre.to(pre.dtype), dpre.sum(dim=0).to(pre.dtype)


def cublaslt_path_available(x: torch.Tensor, w1: torch.Tensor) -> bool:
    """Whether ``mlp_gelu`` runs its epilogue GEMMs through cuBLASLt for these tensors."""
    return (
        x.is_cuda
        and x.dtype in (torch.bfloat16, torch.float16)
        and x.shape[-1] % 8 == 0
        and w1.shape[0] % 8 == 0
        and cublaslt.available()
    )


def _check(x, w1, b1, w2, b2) -> None:
    D, hidden = x.shape[-1], w1.shape[0]
    shapes = (tuple(w1.shape), tuple(b1.shape), tuple(w2.shape), (D,) if b2 is None else tuple(b2.shape))
    if x.dim() < 1 or shapes != ((hidden, D), (hidden,), (D, hidden), (D,)):
        raise ValueError(
            f"mlp_gelu: expected x [..., D], w1 [F, D], b1 [F], w2 [D, F], b2 [D], got x "
            f"{tuple(x.shape)}, w1 {shapes[0]}, b1 {shapes[1]}, w2 {shapes[2]}, b2 {shapes[3]}"
        )
    tensors = [t for t in (x, w1, b1, w2, b2) if t is not None]
    if len({t.dtype for t in tensors}) != 1:
        raise ValueError(
            "mlp_gelu: x, weights and biases must share a dtype (or run under autocast), got "
            f"{[str(t.dtype) for t in tensors]}"
        )


@custom_op("reed_kernels::mlp_gelu_fwd", mutates_args=())
def _mlp_gelu_fwd(
    x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(y, pre, act)`` for rows ``x [M, D]``; all in ``x``'s dtype. ``b2`` None: no fc2 bias."""
    with torch.autocast(x.device.type, enabled=False):  # the references' float32 stays float32
        if cublaslt_path_available(x, w1):
            act, pre = cublaslt.linear_gelu_aux(x, w1, b1)
        else:
            act, pre = linear_gelu_aux_reference(x, w1, b1)
        if cublaslt_path_available(x, w1):
            y, _ = cublaslt.matmul(act, w2.t(), bias=b2)
        else:
            y = act @ w2.t() if b2 is None else torch.addmm(b2, act, w2.t())
    return y, pre, act


@register_fake("reed_kernels::mlp_gelu_fwd")
def _mlp_gelu_fwd_fake(x, w1, b1, w2, b2):
    M, hidden, D = x.shape[0], w1.shape[0], w2.shape[0]
    return x.new_empty((M, D)), x.new_empty((M, hidden)), x.new_empty((M, hidden))


@custom_op("reed_kernels::mlp_gelu_bwd", mutates_args=())
def _mlp_gelu_bwd(
    dy: torch.Tensor,
    x: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    pre: torch.Tensor,
    act: torch.Tensor,
    need_db2: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dx, dw1, db1, dw2, db2)`` from ``dy [M, D]``; each in its input's dtype (``db2`` empty
    unless ``need_db2``)."""
    dy = dy.contiguous()
    with torch.autocast(dy.device.type, enabled=False):
        if cublaslt_path_available(x, w1) and x.shape[0] % 8 == 0:
            # (rows are the reduction of the weight-gradient GEMMs: a leading dimension there)
            # every GEMM autotuned; db2 in the dW2 GEMM's epilogue, db1 by a gemv
            dw2, db2 = cublaslt.matmul(dy.t(), act, sum_a=need_db2)
            dpre, db1 = cublaslt.matmul_dgelu_bgrad(dy, w2, pre)
            dw1, _ = cublaslt.matmul(dpre.t(), x)
            dx, _ = cublaslt.matmul(dpre, w1)
            return dx, dw1, db1, dw2, db2 if need_db2 else dy.new_empty(0)
        dw2 = dy.t() @ act
        if need_db2:
            db2 = dy.sum(dim=0, dtype=torch.promote_types(dy.dtype, torch.float32)).to(dy.dtype)
        else:
            db2 = dy.new_empty(0)
        if cublaslt_path_available(x, w1):
            dpre, db1 = cublaslt.matmul_dgelu_bgrad(dy, w2, pre)
        else:
            dpre, db1 = matmul_dgelu_bgrad_reference(dy, w2, pre)
        dx = dpre @ w1
        dw1 = dpre.t() @ x
    return dx, dw1, db1, dw2, db2


@register_fake("reed_kernels::mlp_gelu_bwd")
def _mlp_gelu_bwd_fake(dy, x, w1, w2, pre, act, need_db2=True):
    return (
        x.new_empty(x.shape),
        w1.new_empty(w1.shape),
        w1.new_empty((w1.shape[0],)),
        w2.new_empty(w2.shape),
        w2.new_empty((w2.shape[0],) if need_db2 else (0,)),
    )


def _setup_context(ctx, inputs, output) -> None:
    x, w1, _, w2, b2 = inputs
    _, pre, act = output
    ctx.save_for_backward(x, w1, w2, pre, act)
    ctx.has_b2 = b2 is not None
    ctx.set_materialize_grads(False)  # no zero [M, F] gradients for pre and act, which nothing uses


def _backward(ctx, dy, _dpre, _dact):
    # pre and act are outputs only for the backward: the Python wrapper returns y alone
    x, w1, w2, pre, act = ctx.saved_tensors
    dx, dw1, db1, dw2, db2 = torch.ops.reed_kernels.mlp_gelu_bwd(dy, x, w1, w2, pre, act, ctx.has_b2)
    return dx, dw1, db1, dw2, (db2 if ctx.has_b2 else None)


register_autograd("reed_kernels::mlp_gelu_fwd", _backward, setup_context=_setup_context)


def _autocast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """What autocast does to a ``F.linear`` argument: floating tensors other than float64 cast."""
    return t.to(dtype) if t.is_floating_point() and t.dtype != torch.float64 else t


def mlp_gelu(
    x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor | None
) -> torch.Tensor:
    """``fc2(gelu_tanh(fc1(x)))`` = ``F.linear(gelu_tanh(F.linear(x, w1, b1)), w2, b2)``, fused.

    ``x [..., D]``, ``w1 [F, D]``, ``b1 [F]``, ``w2 [D, F]``, ``b2 [D]`` (or None: fc2 without
    its bias, which the caller adds, e.g. in the fused adaLN kernel); returns ``[..., D]``.
    Under autocast (for ``x``'s device) every argument is cast to the autocast dtype first.
    """
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
        x, w1, b1, w2 = (_autocast(t, dtype) for t in (x, w1, b1, w2))
        b2 = None if b2 is None else _autocast(b2, dtype)
    _check(x, w1, b1, w2, b2)
    rows = x.reshape(-1, x.shape[-1])
    y, _, _ = torch.ops.reed_kernels.mlp_gelu_fwd(rows, w1, b1, w2, b2)
    return y.view(*x.shape[:-1], y.shape[-1])
