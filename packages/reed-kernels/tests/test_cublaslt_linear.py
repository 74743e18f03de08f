"""``cublaslt_linear``: ``F.linear`` through autotuned cuBLASLt GEMMs, against ``F.linear``.

On the CPU (and for float32 or shapes cuBLASLt is not asked to run) the ops compute with PyTorch's
matmuls: value and gradients of x, weight and bias against ``F.linear`` in float64, ``opcheck`` and
``torch.compile``. On a GPU the cuBLASLt GEMMs in bfloat16 against ``F.linear`` in float32.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from reed_kernels import cublaslt
from reed_kernels.cublaslt_linear import cublaslt_linear


def inputs(rows=24, features=16, outputs=40, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, rows // 2, features, generator=g, dtype=torch.float64)
    weight = torch.randn(outputs, features, generator=g, dtype=torch.float64) / features**0.5
    bias = torch.randn(outputs, generator=g, dtype=torch.float64)
    dy = torch.randn(2, rows // 2, outputs, generator=g, dtype=torch.float64)
    return [t.to(device, dtype) for t in (x, weight, bias, dy)]


def value_and_grads(fn, x, weight, bias, dy):
    leaves = [
        t.detach().clone().requires_grad_() for t in (x, weight) + ((bias,) if bias is not None else ())
    ]
    out = fn(*leaves) if bias is not None else fn(*leaves, None)
    return (out, *torch.autograd.grad(out, leaves, dy))


@pytest.mark.parametrize("with_bias", [True, False])
def test_matches_f_linear(with_bias):
    x, weight, bias, dy = inputs()
    bias = bias if with_bias else None
    got = value_and_grads(cublaslt_linear, x, weight, bias, dy)
    want = value_and_grads(F.linear, x, weight, bias, dy)
    assert len(got) == (4 if with_bias else 3)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


def test_detached_bias_gets_no_gradient_and_opcheck():
    x, weight, bias, dy = inputs(dtype=torch.float32)
    x.requires_grad_()
    out = cublaslt_linear(x, weight, bias)  # bias and weight need no gradient here
    (dx,) = torch.autograd.grad(out, x, dy)
    torch.testing.assert_close(dx, dy @ weight)
    rows = x.detach().reshape(-1, x.shape[-1])
    torch.library.opcheck(
        torch.ops.reed_kernels.cublaslt_linear_fwd.default,
        (rows.requires_grad_(), weight.clone().requires_grad_(), bias.clone().requires_grad_()),
        raise_exception=True,
    )
    torch.library.opcheck(
        torch.ops.reed_kernels.cublaslt_linear_bwd.default,
        (dy.reshape(-1, dy.shape[-1]), rows.detach(), weight, True),
        raise_exception=True,
    )
    compiled = torch.compile(cublaslt_linear, fullgraph=True, backend="aot_eager")
    for g, w in zip(
        value_and_grads(compiled, x, weight, bias, dy),
        value_and_grads(F.linear, x, weight, bias, dy),
        strict=True,
    ):
        torch.testing.assert_close(g, w)


def test_bad_shapes_are_a_clear_error():
    x, weight, bias, _ = inputs()
    with pytest.raises(ValueError, match=r"x \[\.\.\., 16\]"):
        cublaslt_linear(x[..., :8], weight, bias)
    with pytest.raises(ValueError, match=r"bias \[40\]"):
        cublaslt_linear(x, weight, bias[:8])


@pytest.mark.gpu
@pytest.mark.skipif(
    not (torch.cuda.is_available() and cublaslt.available()), reason="needs CUDA and cuBLASLt"
)
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("shape", [(512, 1152, 3456), (256, 1152, 1152), (24, 20, 40)])
def test_cublaslt_gemms_match_f_linear_in_float32(shape, with_bias):
    rows, features, outputs = shape  # (24, 20, 40): features not a multiple of 8, PyTorch's matmuls
    x, weight, bias, dy = inputs(rows, features, outputs, dtype=torch.bfloat16, device="cuda")
    bias = bias if with_bias else None
    got = value_and_grads(cublaslt_linear, x, weight, bias, dy)
    want = value_and_grads(
        F.linear, x.float(), weight.float(), None if bias is None else bias.float(), dy.float()
    )
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.bfloat16
        torch.testing.assert_close(g.float(), w, rtol=2e-2, atol=2e-2 * w.abs().max().item())
