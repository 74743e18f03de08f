"""Fused MLP (cuBLASLt GELU epilogues): the op against the unfused MLP, the primitives against
their plain-PyTorch references, and cuBLASLt's GELU against both GELU forms.

On the CPU the op runs the references: its value and every gradient are checked against the
unfused MLP (float64, float32, bfloat16 autocast), with ``opcheck`` and ``torch.compile``.
The CUDA tests (skipped without a GPU) check each cuBLASLt primitive against its reference in
bfloat16, cuBLASLt's GELU on exactly representable inputs in the negative tail (where the tanh and
erf forms differ by 3-66%), and the op under autocast, ``torch.compile`` and CUDA-graph capture.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from reed_kernels import cublaslt
from reed_kernels.fused_mlp import (
    linear_gelu_aux_reference,
    matmul_dgelu_bgrad_reference,
    mlp_gelu,
)

BF16_ULP = 2.0**-7


class Mlp(torch.nn.Module):
    """A transformer MLP ``fc2(gelu_tanh(fc1(x)))`` (SiT's), in plain PyTorch."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = torch.nn.Linear(dim, hidden)
        self.act = torch.nn.GELU(approximate="tanh")
        self.fc2 = torch.nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class FusedMlp(Mlp):
    """The same parameters through ``mlp_gelu``; ``fc2_bias=False`` leaves fc2's bias out."""

    def forward(self, x: torch.Tensor, fc2_bias: bool = True) -> torch.Tensor:
        b2 = self.fc2.bias if fc2_bias else None
        return mlp_gelu(x, self.fc1.weight, self.fc1.bias, self.fc2.weight, b2)


def make_mlps(dim: int, hidden: int, dtype=torch.float32, device="cpu", seed=0) -> tuple[Mlp, FusedMlp]:
    """The unfused ``Mlp`` and a ``FusedMlp`` with the same weights (fc1 bias spread 0.5, so
    pre-activations reach both GELU tails)."""
    torch.manual_seed(seed)
    plain = Mlp(dim, hidden).to(device, dtype)
    torch.nn.init.normal_(plain.fc1.bias, std=0.5)
    torch.nn.init.normal_(plain.fc2.bias, std=0.5)
    fused = FusedMlp(dim, hidden).to(device, dtype)
    fused.load_state_dict(plain.state_dict())
    return plain, fused


def value_and_grads(mlp: Mlp, x: torch.Tensor, dy: torch.Tensor, autocast_dtype=None, fn=None):
    """``(y, dx, dfc1.weight, dfc1.bias, dfc2.weight, dfc2.bias)`` for the upstream gradient ``dy``."""
    x = x.detach().clone().requires_grad_()
    params = [mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias]
    with torch.autocast(
        x.device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None
    ):
        y = (mlp if fn is None else fn)(x)
    grads = torch.autograd.grad(y, [x, *params], dy.to(y.dtype))
    return (y, *grads)


NAMES = ("y", "dx", "dw1", "db1", "dw2", "db2")


def assert_all_close(got, want, **kwargs):
    for name, g, w in zip(NAMES, got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape, name
        torch.testing.assert_close(g, w, msg=name, **kwargs)


def scaled_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """``max |got - want| / max |want|``."""
    return ((got.double() - want.double()).abs().max() / want.double().abs().max()).item()


# ---------------------------------------------------------------- references (CPU)


def test_references_match_autograd_of_torch_gelu():
    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(s, generator=g, dtype=torch.float64) for s in ((9, 8), (24, 8), (24,)))
    out, pre = linear_gelu_aux_reference(x, w, b)
    torch.testing.assert_close(pre, F.linear(x, w, b))
    torch.testing.assert_close(out, F.gelu(pre, approximate="tanh"))

    dout, w2 = torch.randn(9, 16, generator=g, dtype=torch.float64), torch.randn(16, 24, generator=g).double()
    pre = (pre * 2).requires_grad_()  # both tails
    (grad,) = torch.autograd.grad(F.gelu(pre, approximate="tanh"), pre, dout @ w2)
    dpre, dbias = matmul_dgelu_bgrad_reference(dout, w2, pre.detach())
    torch.testing.assert_close(dpre, grad)
    torch.testing.assert_close(dbias, grad.sum(dim=0))


def test_references_compute_in_float32_for_bfloat16():
    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(s, generator=g).bfloat16() for s in ((64, 8), (16, 8), (16,)))
    out, pre = linear_gelu_aux_reference(x, w, b)
    pre32 = F.linear(x.float(), w.float(), b.float())
    assert out.dtype == pre.dtype == torch.bfloat16
    torch.testing.assert_close(pre, pre32.bfloat16(), rtol=0, atol=0)  # rounded once, from float32
    # the GELU of the unrounded pre (differences: only float32 rounding, at tiny values)
    torch.testing.assert_close(out, F.gelu(pre32, approximate="tanh").bfloat16(), rtol=0, atol=1e-6)
    assert not torch.equal(out, F.gelu(pre.float(), approximate="tanh").bfloat16())


# ---------------------------------------------------------------- the op vs the unfused Mlp (CPU)

OP_CASES = [((2, 5, 16), 64), ((7, 24), 40), ((3, 1, 8), 8)]


@pytest.mark.parametrize("shape, hidden", OP_CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_op_matches_the_unfused_mlp(shape, hidden, dtype):
    plain, fused = make_mlps(shape[-1], hidden, dtype)
    g = torch.Generator().manual_seed(1)
    x, dy = torch.randn(shape, generator=g).to(dtype) * 2, torch.randn(shape, generator=g).to(dtype)
    want = value_and_grads(plain, x, dy)
    got = value_and_grads(fused, x, dy)
    tol = {} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    assert_all_close(got, want, **tol)
    assert want[3].abs().max() > 1e-2  # the fc1 bias gradient is not trivially zero


def test_op_takes_a_non_contiguous_input():
    plain, fused = make_mlps(16, 32, torch.float64)
    x = torch.randn(5, 3, 16, dtype=torch.float64).transpose(0, 1)  # [3, 5, 16], not contiguous
    dy = torch.randn(3, 5, 16, dtype=torch.float64)
    assert_all_close(value_and_grads(fused, x, dy), value_and_grads(plain, x, dy))


@pytest.mark.parametrize("param_dtype", [torch.float32, torch.bfloat16], ids=str)
def test_op_under_bfloat16_autocast_matches_the_unfused_mlp(param_dtype):
    plain, fused = make_mlps(32, 128, param_dtype)
    g = torch.Generator().manual_seed(1)
    x, dy = torch.randn(4, 6, 32, generator=g), torch.randn(4, 6, 32, generator=g)
    want = value_and_grads(plain, x, dy, autocast_dtype=torch.bfloat16)
    got = value_and_grads(fused, x, dy, autocast_dtype=torch.bfloat16)
    assert got[0].dtype == torch.bfloat16
    for name, g_, w in zip(NAMES, got, want, strict=True):
        assert g_.dtype == w.dtype, name  # float32 parameters get float32 gradients through the casts
        assert scaled_error(g_, w) < 3e-2, name
    # and both are close to the float64 MLP: the fused one no worse than twice the unfused error
    plain64, _ = make_mlps(32, 128, torch.float64)
    plain64.load_state_dict({k: v.double() for k, v in plain.state_dict().items()})
    exact = value_and_grads(plain64, x.double(), dy.double())
    for name, g_, w, e in zip(NAMES, got, want, exact, strict=True):
        assert scaled_error(g_, e) <= 2 * scaled_error(w, e) + 4e-3, name


def test_mixed_dtypes_without_autocast_are_an_error():
    _, fused = make_mlps(16, 32)
    with pytest.raises(ValueError, match="share a dtype"):
        fused(torch.randn(2, 16, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match=r"w1 \[F, D\]"):
        mlp_gelu(torch.randn(2, 16), fused.fc1.weight, fused.fc1.bias, fused.fc1.weight, fused.fc2.bias)


def opcheck_results(device="cpu", dtype=torch.float32) -> dict[str, str]:
    results = {}
    g = torch.Generator().manual_seed(0)
    M, D, H = 12, 16, 40

    def rand(*shape):
        return torch.randn(shape, generator=g).to(device, dtype)

    x, w1, b1, w2, b2, dy = rand(M, D), rand(H, D), rand(H), rand(D, H), rand(D), rand(M, D)
    fwd_args = [t.clone().requires_grad_() for t in (x, w1, b1, w2, b2)]
    _, pre, act = torch.ops.reed_kernels.mlp_gelu_fwd(x, w1, b1, w2, b2)
    for name, op, args in (
        ("fwd", torch.ops.reed_kernels.mlp_gelu_fwd, tuple(fwd_args)),
        ("bwd", torch.ops.reed_kernels.mlp_gelu_bwd, (dy, x, w1, w2, pre, act)),
    ):
        for util, outcome in torch.library.opcheck(op, args).items():
            results[f"{name}-{util}"] = outcome
    return results


def test_opcheck():
    results = opcheck_results()
    assert results and all(outcome == "SUCCESS" for outcome in results.values()), results


def compiled_matches_eager(device: str, autocast_dtype=None) -> None:
    """``torch.compile(fullgraph=True)`` keeps both ops opaque and gives the eager op's results."""
    from torch._inductor.utils import run_and_get_code

    _, fused = make_mlps(32, 64, device=device)
    g = torch.Generator().manual_seed(2)
    x, dy = torch.randn(3, 8, 32, generator=g).to(device), torch.randn(3, 8, 32, generator=g).to(device)
    eager = value_and_grads(fused, x, dy, autocast_dtype)
    compiled_mlp = torch.compile(fused, fullgraph=True)
    got, sources = run_and_get_code(value_and_grads, fused, x, dy, autocast_dtype, compiled_mlp)
    assert_all_close(got, eager, rtol=1e-5, atol=1e-5)
    generated = "\n".join(sources)
    assert "reed_kernels.mlp_gelu_fwd" in generated and "reed_kernels.mlp_gelu_bwd" in generated


def test_torch_compile_fullgraph_on_cpu():
    torch._dynamo.reset()
    compiled_matches_eager("cpu")


# ---------------------------------------------------------------- binding checks (CPU)


def test_binding_checks_leading_dimensions_device_and_shapes():
    x, w, b = torch.randn(4, 12).bfloat16(), torch.randn(16, 12).bfloat16(), torch.randn(16).bfloat16()
    with pytest.raises(ValueError, match="K = 12 is not a multiple of 8"):
        cublaslt.linear_gelu_aux(x, w, b)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        cublaslt.linear_gelu_aux(x[:, :8], w[:, :8], b)
    with pytest.raises(ValueError, match="shapes do not agree"):
        cublaslt.linear_gelu_aux(x[:, :8], w, b)
    dout, pre = torch.randn(4, 16).bfloat16(), torch.randn(4, 12).bfloat16()
    with pytest.raises(ValueError, match="N = 12 is not a multiple of 8"):
        cublaslt.matmul_dgelu_bgrad(dout, w, pre)


# ---------------------------------------------------------------- cuBLASLt (CUDA)


def worst_error_ratio(actual: torch.Tensor, expected: torch.Tensor, rel: float, floor_rel: float) -> float:
    """``max |a - e| / (rel |e| + floor_rel max|e|)``: at most 1 passes."""
    expected = expected.double()
    bound = rel * expected.abs() + floor_rel * expected.abs().max().item() + 1e-12
    return ((actual.double() - expected).abs() / bound).max().item()


PRIMITIVE_CASES = [(64, 64, 128), (1000, 72, 136), (4096, 1152, 4608)]  # (M, K, N)


def bf16_inputs(*shapes, scale=1.0, seed=0, device="cuda"):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(s, generator=g) * scale).to(device, torch.bfloat16) for s in shapes]


@pytest.mark.gpu
@pytest.mark.parametrize("M, K, N", PRIMITIVE_CASES)
def test_cuda_linear_gelu_aux_matches_its_reference(M, K, N):
    x, w, b = bf16_inputs((M, K), (N, K), (N,))
    w = w * (2.0 / math.sqrt(K))  # pre-activations of spread about 2
    out, pre = cublaslt.linear_gelu_aux(x, w, b)
    out_ref, pre_ref = linear_gelu_aux_reference(x, w, b)
    assert out.dtype == pre.dtype == torch.bfloat16 and out.shape == pre.shape == (M, N)
    assert worst_error_ratio(pre, pre_ref, BF16_ULP, 1e-3) <= 1.0
    assert worst_error_ratio(out, out_ref, BF16_ULP, 1e-3) <= 1.0
    # a float32 bias (the parameter's dtype) where cuBLASLt has an algorithm for it
    try:
        out32, pre32 = cublaslt.linear_gelu_aux(x, w, b.float())
    except RuntimeError as err:
        pytest.skip(f"no float32-bias algorithm: {err}")
    assert worst_error_ratio(pre32, pre_ref, BF16_ULP, 1e-3) <= 1.0


@pytest.mark.gpu
@pytest.mark.parametrize("M, N2, N", [(64, 128, 64), (1000, 136, 72), (4096, 1152, 4608)])
def test_cuda_matmul_dgelu_bgrad_matches_its_reference(M, N2, N):
    dout, w, pre = bf16_inputs((M, N2), (N2, N), (M, N))
    w, pre = w * (1.0 / math.sqrt(N2)), pre * 2
    dpre, dbias = cublaslt.matmul_dgelu_bgrad(dout, w, pre)
    dpre_ref, dbias_ref = matmul_dgelu_bgrad_reference(dout, w, pre)
    assert dpre.dtype == dbias.dtype == torch.bfloat16 and dpre.shape == (M, N) and dbias.shape == (N,)
    assert worst_error_ratio(dpre, dpre_ref, BF16_ULP, 1e-3) <= 1.0
    _, dbias_exact = matmul_dgelu_bgrad_reference(dout.double(), w.double(), pre.double())
    assert worst_error_ratio(dbias, dbias_exact, 2 * BF16_ULP, 1e-2) <= 1.0


def every_candidate(monkeypatch, call) -> list:
    """``call()`` once with each autotuning candidate of its (one) plan forced, fresh plans each
    time; returns ``[(workspace_limit, result), ...]``."""
    pool, chosen, results = [], [0], []

    def pick(candidates, launch):
        pool[:] = candidates
        return candidates[chosen[0]]

    monkeypatch.setattr(cublaslt, "_fastest_in_graph", pick)
    while True:
        cublaslt._plans.clear()
        results.append(call())
        if chosen[0] + 1 >= len(pool):
            break
        chosen[0] += 1
    cublaslt._plans.clear()
    assert len(pool) == len(results)
    return [(plan.workspace_limit, result) for plan, result in zip(pool, results)]


@pytest.mark.gpu
@pytest.mark.parametrize("epilogue", ["gelu_aux", "dgelu", "bias", "sum_a", "none"])
def test_cuda_every_autotuning_candidate_is_right(epilogue, monkeypatch):
    """Each algorithm the graph autotuner may pick, with a workspace and without one (launched
    without one: other kernels), matches the reference: a wrong launch setting of one of them
    would otherwise surface only in processes where it happens to win."""
    M, K, N = 1000, 136, 72
    x, w, b, dy = bf16_inputs((M, K), (N, K), (N,), (M, N))
    w = w * (2.0 / math.sqrt(K))
    if epilogue == "gelu_aux":
        want = linear_gelu_aux_reference(x, w, b)
        results = every_candidate(monkeypatch, lambda: cublaslt.linear_gelu_aux(x, w, b))
    elif epilogue == "dgelu":
        want = matmul_dgelu_bgrad_reference(x, w.t().contiguous(), dy)
        results = every_candidate(monkeypatch, lambda: cublaslt.matmul_dgelu_bgrad(x, w.t().contiguous(), dy))
    else:
        a = x.t() if epilogue == "sum_a" else x  # sum_a: the weight-gradient layout
        b_ = dy if epilogue == "sum_a" else w.t()
        bias = b if epilogue == "bias" else None
        exact = a.double() @ b_.double() + (bias.double() if bias is not None else 0.0)
        want = (exact, a.double().sum(1) if epilogue == "sum_a" else None)
        results = every_candidate(
            monkeypatch, lambda: cublaslt.matmul(a, b_, bias=bias, sum_a=epilogue == "sum_a")
        )
    # both queries answered: with the workspace and without one
    assert {limit for limit, _ in results} == {0, cublaslt.WORKSPACE_BYTES}
    for limit, got in results:
        for g, w_ in zip(got, want, strict=True):
            if w_ is not None:
                assert worst_error_ratio(g, w_, 2 * BF16_ULP, 1e-2) <= 1.0, (epilogue, limit)


@pytest.mark.gpu
def test_cuda_graph_autotuning_runs_and_caches_one_plan():
    """The autotuner (CUDA-graph timing over both candidate pools) leaves one cached plan per call
    shape, and the call's result is right."""
    cublaslt._plans.clear()
    x, w, b = bf16_inputs((512, 64), (128, 64), (128,))
    out, pre = cublaslt.linear_gelu_aux(x, w, b)
    assert len(cublaslt._plans) == 1
    out_ref, pre_ref = linear_gelu_aux_reference(x, w, b)
    assert worst_error_ratio(out, out_ref, BF16_ULP, 1e-3) <= 1.0
    cublaslt.linear_gelu_aux(x, w, b)
    assert len(cublaslt._plans) == 1


@pytest.mark.gpu
def test_cuda_offset_views_are_aligned_or_copied():
    """Inputs starting 2 bytes (copied) and 32 bytes (a 32-byte plan) into their storage."""
    x, w, b = bf16_inputs((256 + 16, 64), (128, 64), (128,))
    want = cublaslt.linear_gelu_aux(x[16:].clone(), w, b)
    flat = x.flatten()
    for offset in (1, 16):  # elements
        view = torch.empty(flat.numel() + offset, dtype=flat.dtype, device="cuda")[offset:]
        view.copy_(flat)
        got = cublaslt.linear_gelu_aux(view.view_as(x)[16:], w, b)
        for g, w_ in zip(got, want, strict=True):  # another algorithm may round differently
            assert worst_error_ratio(g, w_, BF16_ULP, 1e-3) <= 1.0


def tail_inputs(device="cuda"):
    """Exactly representable pre-activations, half of them in [-4.5, -2.5] (the GELU's left tail,
    where the tanh and erf forms differ by 3-66%), through one-hot weights: ``pre`` is exact."""
    M, K, N = 512, 16, 64
    g = torch.Generator().manual_seed(0)
    steps = torch.randint(-72, 41, (M, K), generator=g)  # multiples of 1/16 in [-4.5, 2.5]
    x = (steps / 16).to(device, torch.bfloat16)
    w = F.one_hot(torch.arange(N) % K, K).to(device, torch.bfloat16)  # [N, K]: column n reads x[:, n % K]
    b = torch.zeros(N, device=device, dtype=torch.bfloat16)
    pre = x.double()[:, torch.arange(N) % K]
    return x, w, b, pre


def gelu_forms(pre: torch.Tensor):
    p = pre.double().requires_grad_()
    tanh_form = F.gelu(p, approximate="tanh")
    erf_form = F.gelu(p)
    (d_tanh,) = torch.autograd.grad(tanh_form.sum(), p)
    (d_erf,) = torch.autograd.grad(erf_form.sum(), p)
    return tanh_form.detach(), erf_form.detach(), d_tanh, d_erf


def max_rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected) / expected).abs().max().item()


@pytest.mark.gpu
def test_cuda_gelu_is_the_tanh_approximation():
    """cuBLASLt's GELU and its derivative: the tanh form to within one bfloat16 ulp (plus 1e-3 of
    the largest value) everywhere; in the far tail, where both are tiny, its tanh is approximate
    (measured: 3.7% relative error of values below 1.3e-2, cuBLAS 13.1) but the erf form is still
    several times further off (3-66%)."""
    x, w, b, pre_exact = tail_inputs()
    out, pre = cublaslt.linear_gelu_aux(x, w, b)
    assert torch.equal(pre.double(), pre_exact)
    tanh_form, erf_form, d_tanh, d_erf = gelu_forms(pre_exact)
    tail = pre_exact < -2.5
    assert tail.float().mean() > 0.25
    assert worst_error_ratio(out, tanh_form, BF16_ULP, 1e-3) <= 1.0
    tanh_err, erf_err = max_rel_error(out[tail], tanh_form[tail]), max_rel_error(out[tail], erf_form[tail])
    assert tanh_err < 0.06 and erf_err > 5 * tanh_err, (tanh_err, erf_err)

    # dpre = (dout W2) * gelu'(pre) with dout W2 = 1 exactly (one-hot W2 [16, 64], dout = 1)
    dout = torch.ones(x.shape[0], 16, device="cuda", dtype=torch.bfloat16)
    w2 = w.t().contiguous()  # [16, 64]: (dout W2)[m, n] = dout[m, n % 16] = 1
    dpre, dbias = cublaslt.matmul_dgelu_bgrad(dout, w2, pre)
    assert worst_error_ratio(dpre, d_tanh, BF16_ULP, 1e-3) <= 1.0
    tanh_err, erf_err = max_rel_error(dpre[tail], d_tanh[tail]), max_rel_error(dpre[tail], d_erf[tail])
    assert tanh_err < 0.06 and erf_err > 5 * tanh_err, (tanh_err, erf_err)
    assert worst_error_ratio(dbias, d_tanh.sum(dim=0), 2 * BF16_ULP, 1e-3) <= 1.0


@pytest.mark.gpu
@pytest.mark.parametrize("a_t", [False, True])
@pytest.mark.parametrize("b_t", [False, True])
@pytest.mark.parametrize("epilogue", ["none", "bias", "sum_a"])
def test_cuda_matmul_matches_float64_for_each_layout_and_epilogue(a_t, b_t, epilogue):
    M, K, N = 384, 1152, 520
    a = torch.randn(K, M, device="cuda").t() if a_t else torch.randn(M, K, device="cuda")
    b = torch.randn(N, K, device="cuda").t() if b_t else torch.randn(K, N, device="cuda")
    a, b = a.bfloat16(), (b / math.sqrt(K)).bfloat16()
    assert a.is_contiguous() != a_t and b.is_contiguous() != b_t  # transposed views, not copies
    bias = torch.randn(N, device="cuda").bfloat16() if epilogue == "bias" else None
    if epilogue == "sum_a" and not a_t:  # only the weight-gradient layout (a = dy.t()) is accepted
        with pytest.raises(ValueError, match="sum_a needs a to be the transpose"):
            cublaslt.matmul(a, b, sum_a=True)
        return
    d, a_sum = cublaslt.matmul(a, b, bias=bias, sum_a=epilogue == "sum_a")
    exact = a.double() @ b.double() + (bias.double() if bias is not None else 0.0)
    assert d.shape == (M, N) and d.dtype == torch.bfloat16
    assert worst_error_ratio(d, exact, 2 * BF16_ULP, 1e-2) <= 1.0
    if epilogue == "sum_a":
        assert a_sum.shape == (M,) and worst_error_ratio(a_sum, a.double().sum(1), 2 * BF16_ULP, 1e-1) <= 1.0
    else:
        assert a_sum is None


@pytest.mark.gpu
@pytest.mark.parametrize("rows", [256, 250], ids=["rows%8=0", "rows%8!=0"])  # all six GEMMs cuBLASLt, or 2
@pytest.mark.parametrize("param_dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_op_under_autocast_matches_the_unfused_mlp(param_dtype, rows):
    plain, fused = make_mlps(256, 1024, param_dtype, device="cuda")
    x, dy = torch.randn(2, rows // 2, 256, device="cuda"), torch.randn(2, rows // 2, 256, device="cuda")
    want = value_and_grads(plain, x, dy, autocast_dtype=torch.bfloat16)
    got = value_and_grads(fused, x, dy, autocast_dtype=torch.bfloat16)
    plain64, _ = make_mlps(256, 1024, torch.float64, device="cuda")
    plain64.load_state_dict({k: v.double() for k, v in plain.state_dict().items()})
    exact = value_and_grads(plain64, x.double(), dy.double())
    for name, g, w, e in zip(NAMES, got, want, exact, strict=True):
        assert g.dtype == w.dtype, name
        assert scaled_error(g, w) < 2e-2, name
        assert scaled_error(g, e) <= 2 * scaled_error(w, e) + 2e-3, name


@pytest.mark.gpu
def test_cuda_torch_compile_fullgraph():
    torch._dynamo.reset()
    compiled_matches_eager("cuda", autocast_dtype=torch.bfloat16)


@pytest.mark.gpu
def test_cuda_opcheck():
    results = opcheck_results("cuda", torch.bfloat16)
    assert all(outcome == "SUCCESS" for outcome in results.values()), results


@pytest.mark.gpu
def test_cuda_graph_capture_replays_the_eager_result():
    _, fused = make_mlps(256, 1024, device="cuda")
    params = list(fused.parameters())
    static_x = torch.randn(2, 64, 256, device="cuda")
    static_dy = torch.randn(2, 64, 256, device="cuda")

    def step():
        x = static_x.detach().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = fused(x)
        return (y, *torch.autograd.grad(y, [x, *params], static_dy.to(y.dtype)))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up: plans and the workspace exist before capture
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = step()

    static_x.copy_(torch.randn(2, 64, 256, device="cuda"))  # new inputs: replay must read them
    static_dy.copy_(torch.randn(2, 64, 256, device="cuda"))
    graph.replay()
    torch.cuda.synchronize()
    eager = step()
    for name, g, w in zip(NAMES, static_out, eager, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-3, atol=1e-3 * w.abs().max().item(), msg=name)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)], ids=["cpu", "cuda"])
def test_op_without_fc2_bias_leaves_it_to_the_caller(device):
    """``b2=None`` (the fused adaLN kernel adds fc2's bias): the output is the biased one minus the
    bias, every other gradient is unchanged, and no bias gradient is formed."""
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    _, fused = make_mlps(64, 256, dtype=dtype, device=device)
    x = torch.randn(4, 8, 64, device=device, dtype=dtype)
    dy = torch.randn(4, 8, 64, device=device, dtype=dtype)
    params = [fused.fc1.weight, fused.fc1.bias, fused.fc2.weight]
    with_bias = value_and_grads(fused, x, dy)
    leaf = x.detach().clone().requires_grad_()
    y = fused(leaf, fc2_bias=False)
    grads = torch.autograd.grad(y, [leaf, *params], dy)
    assert fused.fc2.bias.grad is None
    tol = {} if device == "cpu" else {"rtol": 2e-2, "atol": 2e-2}
    torch.testing.assert_close(y + fused.fc2.bias, with_bias[0], **tol)
    for got, want in zip(grads, with_bias[1:5], strict=True):
        torch.testing.assert_close(got, want, **tol)
