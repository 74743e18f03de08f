"""Fused adaLN residual/LayerNorm/modulate: reference vs the unfused chain, Triton kernels vs reference.

The reference (plain PyTorch) is checked in float64 against ``x + gate * branch`` -> ``nn.LayerNorm``
-> modulate and against the backward equations the kernels implement. The Triton kernels are
checked against a float64 oracle with float32 ``x`` and bfloat16 ``branch``/``gate``/``shift``/
``scale``/``dh``, as under autocast in training.

Without a GPU the kernels run through Triton's interpreter, which is chosen when ``triton`` is
imported with ``TRITON_INTERPRET=1``; so those checks run in one subprocess started with that
variable, and the tests read its report. Two interpreter traits shape them: it casts float32 to
bfloat16 by truncation (the GPU rounds to nearest), so bfloat16 outputs are held to one bfloat16
ulp (2^-7 relative) of the oracle; and ``wrap_triton`` refuses interpreted kernels, so the
interpreter's ``opcheck`` covers schema, autograd registration and fake tensors but not
``test_aot_dispatch_dynamic`` (tracing for ``torch.compile``), which the CUDA tests run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn

from reed_kernels.fused_adaln import (
    add_norm_modulate,
    add_norm_modulate_reference,
    triton_path_available,
)

BRANCH_MODES = ("gated", "biased", "ungated", "none")  # biased: gated, with the branch's Linear bias
# kernel cases only: "positional" is SiT's first call, x [1, N, D] (the positional embedding, a
# buffer: no gradient) + an ungated branch (the patch embedding); "positional_dx" the same with a
# gradient for x (summed over the batch)
# (B, N, D), branch mode, whether x_out gets a gradient; D not a power of two, 1152 = SiT-XL
KERNEL_CASES = [
    ((2, 5, 72), "gated", True),
    ((3, 4, 96), "none", True),
    ((2, 3, 1152), "gated", True),
    ((2, 6, 96), "ungated", True),
    ((2, 7, 72), "gated", False),
    ((1, 1, 16), "gated", True),
    ((2, 5, 72), "biased", True),
    ((2, 3, 1152), "biased", False),
    ((3, 5, 72), "positional", True),
    ((2, 3, 1152), "positional", True),
    ((3, 4, 96), "positional_dx", True),
]
GPU_CASES = KERNEL_CASES + [
    ((64, 256, 1152), "gated", True),
    ((64, 256, 1152), "biased", True),
    ((4, 64, 384), "none", True),
    ((64, 256, 1152), "positional", True),
]
BF16_ULP = 2.0**-7  # one bfloat16 ulp, relative (interpreter truncates; the GPU rounds to nearest)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """SiT's (DiT's) modulate."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def case_id(case) -> str:
    (b, n, d), mode, grad_x_out = case
    return f"B{b}-N{n}-D{d}-{mode}" + ("" if grad_x_out else "-no_dx_out")


def make_inputs(shape, mode, dtype, small_dtype, device="cpu", seed=0):
    """``(x, branch, gate, shift, scale, bias)``; gate/shift/scale are strided chunks of one [B, 6D]
    output; bias (float32, as a Linear's parameter under autocast) only in mode "biased"."""
    g = torch.Generator().manual_seed(seed)
    b, n, d = shape
    x = (torch.randn(1 if mode.startswith("positional") else b, n, d, generator=g) * 2 + 0.3).to(
        device, dtype
    )
    branch = torch.randn(b, n, d, generator=g).to(device, small_dtype) if mode != "none" else None
    adaln = (torch.randn(b, 6 * d, generator=g) * 0.5).to(device, small_dtype)
    shift, scale, gate = adaln[:, :d], adaln[:, d : 2 * d], adaln[:, 2 * d : 3 * d]
    bias = (torch.randn(d, generator=g) * 0.5).to(device, dtype) if mode == "biased" else None
    return x, branch, (gate if mode in ("gated", "biased") else None), shift, scale, bias


def leaves_of(tensors, frozen_x=False):
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in tensors]
    if frozen_x:  # x as a buffer (SiT's positional embedding): no gradient asked for
        leaves[0].requires_grad_(False)
    return leaves


def value_and_grads(fn, inputs, dx_out, dh, frozen_x=False):
    """``(x_out, h, grads of the non-None inputs)`` for upstream gradients ``dx_out`` (or None),
    ``dh``; without x's with ``frozen_x``."""
    leaves = leaves_of(inputs, frozen_x)
    x_out, h = fn(*leaves)
    outputs, upstream = [h], [dh.to(h.dtype)]
    if dx_out is not None:
        outputs.append(x_out)
        upstream.append(dx_out.to(x_out.dtype))
    grads = torch.autograd.grad(outputs, [t for t in leaves if t is not None and t.requires_grad], upstream)
    return x_out, h, grads


def worst_error_ratio(actual: torch.Tensor, expected: torch.Tensor, rel: float) -> float:
    """``max |a - e| / (rel |e| + 1e-4 max|e|)``: at most 1 passes (the floor absorbs float32 sums)."""
    expected = expected.double()
    floor = 1e-4 * expected.abs().max().item() + 1e-12
    bound = rel * expected.abs() + floor
    return ((actual.double() - expected).abs() / bound).max().item()


def fused_bf16(x, branch, gate, shift, scale, bias):
    return add_norm_modulate(x, branch, gate, shift, scale, out_dtype=torch.bfloat16, bias=bias)


def reference64(x, branch, gate, shift, scale, bias):
    return add_norm_modulate_reference(x, branch, gate, shift, scale, out_dtype=torch.float64, bias=bias)


def kernel_error_ratios(shape, mode, grad_x_out, device="cpu", seed=0, fn=fused_bf16) -> dict[str, float]:
    """Worst error ratio of every output and gradient of ``fn`` (the fused op) vs a float64 oracle."""
    inputs = make_inputs(shape, mode, torch.float32, torch.bfloat16, device, seed)
    assert triton_path_available(inputs[0])
    g = torch.Generator().manual_seed(seed + 1)
    dx_out = torch.randn(shape, generator=g).to(device) if grad_x_out else None
    dh = torch.randn(shape, generator=g).to(device, torch.bfloat16)
    frozen_x = mode == "positional"
    x_out, h, grads = value_and_grads(fn, inputs, dx_out, dh, frozen_x)
    inputs64 = [t.double() if t is not None else None for t in inputs]
    x_out64, h64, grads64 = value_and_grads(
        reference64,
        inputs64,
        dx_out.double() if grad_x_out else None,
        dh.double(),
        frozen_x,
    )
    assert x_out.dtype == torch.float32 and h.dtype == torch.bfloat16
    ratios = {"x_out": worst_error_ratio(x_out, x_out64, 1e-6), "h": worst_error_ratio(h, h64, BF16_ULP)}
    assert x_out.shape == shape
    names = ("dx", "dbranch", "dgate", "dshift", "dscale", "dbias")
    asked = [t is not None and not (frozen_x and i == 0) for i, t in enumerate(inputs)]
    names = [name for name, ask in zip(names, asked, strict=True) if ask]
    givens = [t for t, ask in zip(inputs, asked) if ask]
    for name, grad, grad64, given in zip(names, grads, grads64, givens, strict=True):
        assert grad.dtype == given.dtype and grad.shape == given.shape, name
        ratios[name] = worst_error_ratio(grad, grad64, 1e-5 if grad.dtype == torch.float32 else BF16_ULP)
    return ratios


# bfloat16 residual stream (SiT's model.residual_dtype=autocast): (B, N, D), branch mode
BF16_RESIDUAL_CASES = [((2, 5, 72), "biased"), ((2, 3, 1152), "gated"), ((2, 4, 96), "positional")]


def bf16_residual_error_ratios(device="cpu") -> dict[str, float]:
    """The kernels with a bfloat16 ``x`` (and so ``x_out`` and ``dx``) against the reference on
    the same inputs (float32 arithmetic, bfloat16 rounding where the kernels round): errors
    relative to 4 bfloat16 ulps of each value plus 4 of the largest. The two may round ``x_out``
    one ulp apart (the interpreter truncates), which the LayerNorm after it carries into ``h`` and
    the gradients as an error of the rows' scale, not of each (possibly tiny) value."""
    ratios = {}
    for shape, mode in BF16_RESIDUAL_CASES:
        inputs = make_inputs(shape, mode, torch.bfloat16, torch.bfloat16, device)
        g = torch.Generator().manual_seed(1)
        dx_out = torch.randn(shape, generator=g).to(device, torch.bfloat16)
        dh = torch.randn(shape, generator=g).to(device, torch.bfloat16)
        frozen_x = mode == "positional"
        got = value_and_grads(fused_bf16, inputs, dx_out, dh, frozen_x)

        def reference(x, branch, gate, shift, scale, bias):
            return add_norm_modulate_reference(
                x, branch, gate, shift, scale, out_dtype=torch.bfloat16, bias=bias
            )

        want = value_and_grads(reference, inputs, dx_out, dh, frozen_x)
        assert got[0].dtype == torch.bfloat16 and got[0].shape == shape
        flat_got, flat_want = [got[0], got[1], *got[2]], [want[0], want[1], *want[2]]
        for i, (a, e) in enumerate(zip(flat_got, flat_want, strict=True)):
            assert a.dtype == e.dtype and a.shape == e.shape, (shape, mode, i)
            bound = 4 * BF16_ULP * (e.double().abs() + e.double().abs().max())
            ratios[f"{shape}-{mode}-{i}"] = ((a.double() - e.double()).abs() / bound).max().item()
    return ratios


def opcheck_results(device="cpu", test_utils=None) -> dict[str, str]:
    """``torch.library.opcheck`` of both custom ops (branch, gate and no-branch forward; backward)."""
    kwargs = {} if test_utils is None else {"test_utils": test_utils}
    results = {}
    for mode in ("gated", "biased", "none"):
        x, branch, gate, shift, scale, bias = leaves_of(
            make_inputs((2, 3, 40), mode, torch.float32, torch.bfloat16, device)
        )
        args = (x, branch, gate, shift, scale, 1e-6, torch.bfloat16, bias)
        for util, outcome in torch.library.opcheck(
            torch.ops.reed_kernels.add_norm_modulate_fwd, args, **kwargs
        ).items():
            results[f"fwd-{mode}-{util}"] = outcome
    x, branch, gate, shift, scale, bias = make_inputs(
        (2, 3, 40), "biased", torch.float32, torch.bfloat16, device
    )
    x_out, _, mean, rstd = torch.ops.reed_kernels.add_norm_modulate_fwd(
        x, branch, gate, shift, scale, 1e-6, torch.bfloat16, bias
    )
    dh = torch.randn_like(x).bfloat16()
    args = (torch.randn_like(x), dh, x_out, mean, rstd, branch, gate, scale, True, torch.bfloat16, bias, True)
    for util, outcome in torch.library.opcheck(
        torch.ops.reed_kernels.add_norm_modulate_bwd, args, **kwargs
    ).items():
        results[f"bwd-{util}"] = outcome
    return results


def launch_config_differences(device="cpu") -> dict[str, float]:
    """Max abs difference, relative to the largest value, of every output of both ops between the
    default launch configuration and an explicit other one (``config=``: rows, warps; rows, warps,
    stages, programs per SM)."""
    inputs = make_inputs((2, 8, 72), "biased", torch.float32, torch.bfloat16, device)
    x, branch, gate, shift, scale, bias = inputs
    fwd, bwd = torch.ops.reed_kernels.add_norm_modulate_fwd, torch.ops.reed_kernels.add_norm_modulate_bwd
    args = (x, branch, gate, shift, scale, 1e-6, torch.bfloat16, bias)
    default, other = fwd(*args), fwd(*args, [2, 2])
    x_out, _, mean, rstd = default
    g = torch.Generator().manual_seed(1)
    dx_out = torch.randn(x_out.shape, generator=g).to(device)
    dh = torch.randn(x_out.shape, generator=g).to(device, torch.bfloat16)
    bwd_args = (dx_out, dh, x_out, mean, rstd, branch, gate, scale, True, torch.bfloat16, bias, True)
    default_bwd, other_bwd = bwd(*bwd_args), bwd(*bwd_args, True, [2, 2, 2, 1])
    return {
        f"{name}{i}": ((a.double() - b.double()).abs().max() / (a.double().abs().max() + 1e-12)).item()
        for name, pair in (("fwd", (default, other)), ("bwd", (default_bwd, other_bwd)))
        for i, (a, b) in enumerate(zip(*pair, strict=True))
    }


def interpreter_report() -> dict:
    """Run inside the ``TRITON_INTERPRET=1`` subprocess: every kernel case, opcheck, other launch
    configurations, as JSON."""
    return {
        "cases": {case_id(case): kernel_error_ratios(*case) for case in KERNEL_CASES},
        "launch_configs": launch_config_differences(),
        "opcheck": opcheck_results(
            test_utils=("test_schema", "test_autograd_registration", "test_faketensor")
        ),
        "bf16_residual": bf16_residual_error_ratios(),
    }


# ---------------------------------------------------------------- reference (float64, CPU)


@pytest.mark.parametrize("mode", BRANCH_MODES)
def test_reference_matches_unfused_layernorm_chain(mode):
    shape = (3, 5, 24)
    inputs = make_inputs(shape, mode, torch.float64, torch.float64)
    norm = nn.LayerNorm(shape[-1], elementwise_affine=False, eps=1e-6)

    def unfused(x, branch, gate, shift, scale, bias):
        if branch is not None:
            x = x + (gate.unsqueeze(1) if gate is not None else 1) * (
                branch + (bias if bias is not None else 0)
            )
        return x, modulate(norm(x), shift, scale)

    def reference(x, branch, gate, shift, scale, bias):
        return add_norm_modulate_reference(x, branch, gate, shift, scale, bias=bias)

    dx_out, dh = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    got = value_and_grads(reference, inputs, dx_out, dh)
    want = value_and_grads(unfused, inputs, dx_out, dh)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    assert len(got[2]) == len(want[2]) == sum(t is not None for t in inputs)
    for g, w in zip(got[2], want[2]):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("mode", BRANCH_MODES)
def test_backward_equations_match_autograd_of_the_reference(mode):
    """The closed-form backward of the module docstring, which the Triton kernel implements."""
    shape, eps = (2, 6, 20), 1e-6
    x, branch, gate, shift, scale, bias = make_inputs(shape, mode, torch.float64, torch.float64)
    dx_out, dh = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    _, _, grads = value_and_grads(
        lambda *t: add_norm_modulate_reference(*t[:5], bias=t[5]),
        (x, branch, gate, shift, scale, bias),
        dx_out,
        dh,
    )

    gate_b = gate[:, None, :] if gate is not None else 1.0
    if bias is not None:
        branch = branch + bias
    x_out = x + gate_b * branch if branch is not None else x
    mean = x_out.mean(-1, keepdim=True)
    rstd = 1 / torch.sqrt(((x_out - mean) ** 2).mean(-1, keepdim=True) + eps)
    xhat = (x_out - mean) * rstd
    dxhat = dh * (1 + scale[:, None, :])
    mean_dxhat, mean_dxhat_xhat = dxhat.mean(-1, keepdim=True), (dxhat * xhat).mean(-1, keepdim=True)
    dx_total = dx_out + rstd * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat)
    expected = [dx_total]
    if branch is not None:
        expected.append(gate_b * dx_total)
    if gate is not None:
        expected.append((branch * dx_total).sum(1))
    expected += [dh.sum(1), (dh * xhat).sum(1)]
    if bias is not None:
        expected.append((gate_b * dx_total).sum((0, 1)))
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want)


def test_cpu_without_interpreter_runs_the_reference():
    x, branch, gate, shift, scale, _ = make_inputs((2, 4, 24), "gated", torch.float32, torch.bfloat16)
    if triton_path_available(x):
        pytest.skip("TRITON_INTERPRET is set in this process: CPU tensors take the Triton path")
    x_out, h = add_norm_modulate(x, branch, gate, shift, scale)
    ref_x_out, ref_h = add_norm_modulate_reference(x, branch, gate, shift, scale)
    assert h.dtype == torch.bfloat16 and x_out.dtype == torch.float32
    assert torch.equal(x_out, ref_x_out) and torch.equal(h, ref_h)
    same_x, h_no_branch = add_norm_modulate(x, None, None, shift, scale, out_dtype=torch.bfloat16)
    assert same_x is x and h_no_branch.dtype == torch.bfloat16


def test_shape_errors():
    x, branch, gate, shift, scale, _ = make_inputs((2, 4, 24), "gated", torch.float32, torch.bfloat16)
    with pytest.raises(ValueError, match=r"x must be \[B, N, D\]"):
        add_norm_modulate(x[0], branch, gate, shift, scale)
    with pytest.raises(ValueError, match="branch"):
        add_norm_modulate(x, branch[:, :2], gate, shift, scale)
    with pytest.raises(ValueError, match=r"or \[1, N, D\]"):
        add_norm_modulate(torch.cat([x, x]), branch, gate, shift, scale)
    with pytest.raises(ValueError, match="gate needs a branch"):
        add_norm_modulate(x, None, gate, shift, scale)
    with pytest.raises(ValueError, match="scale must be"):
        add_norm_modulate(x, branch, gate, shift, scale[:1])
    with pytest.raises(ValueError, match="bias must be"):
        add_norm_modulate(x, branch, gate, shift, scale, bias=torch.zeros(3))
    with pytest.raises(ValueError, match="bias must be"):
        add_norm_modulate(x, None, None, shift, scale, bias=torch.zeros(24))


# ---------------------------------------------------------------- Triton kernels, interpreter (CPU)


@pytest.fixture(scope="module")
def interpreter(triton_interpreter_report):
    """One ``TRITON_INTERPRET=1`` subprocess runs ``interpreter_report()`` of this file."""
    return triton_interpreter_report(Path(__file__))


@pytest.mark.parametrize("case", KERNEL_CASES, ids=case_id)
def test_triton_interpreter_matches_float64_oracle(interpreter, case):
    ratios = interpreter["cases"][case_id(case)]
    (_, _, _), mode, _ = case
    expected = {"x_out", "h", "dshift", "dscale"} | ({"dx"} if mode != "positional" else set())
    expected |= {"dbranch"} if mode != "none" else set()
    expected |= {"dgate"} if mode in ("gated", "biased") else set()
    assert set(ratios) == expected | ({"dbias"} if mode == "biased" else set())
    assert all(r <= 1.0 for r in ratios.values()), ratios


def test_triton_interpreter_bf16_residual_stream(interpreter):
    ratios = interpreter["bf16_residual"]
    assert len(ratios) >= 3 * len(BF16_RESIDUAL_CASES)
    assert all(r <= 1.0 for r in ratios.values()), ratios


def test_triton_interpreter_opcheck(interpreter):
    results = interpreter["opcheck"]
    assert results and all(outcome == "SUCCESS" for outcome in results.values()), results


def test_triton_interpreter_launch_configs_give_the_same_results(interpreter):
    """``config=`` (the benchmarks' other launch configurations) changes only the schedule: the
    same values up to float32 summation order (and a bfloat16 rounding it may move)."""
    differences = interpreter["launch_configs"]
    assert len(differences) == 4 + 6 and all(d < 8e-3 for d in differences.values()), differences


# ---------------------------------------------------------------- Triton kernels, CUDA


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES, ids=case_id)
def test_triton_cuda_matches_float64_oracle(case):
    ratios = kernel_error_ratios(*case, device="cuda")
    assert all(r <= 1.0 for r in ratios.values()), ratios


@pytest.mark.gpu
def test_triton_cuda_bf16_residual_stream():
    ratios = bf16_residual_error_ratios(device="cuda")
    assert all(r <= 1.0 for r in ratios.values()), ratios


@pytest.mark.gpu
def test_triton_cuda_opcheck():
    results = opcheck_results(device="cuda")
    assert all(outcome == "SUCCESS" for outcome in results.values()), results


@pytest.mark.gpu
def test_triton_cuda_launch_configs_give_the_same_results():
    differences = launch_config_differences(device="cuda")
    assert all(d < 8e-3 for d in differences.values()), differences


@pytest.mark.gpu
def test_torch_compile_keeps_the_fused_kernels():
    from torch._inductor.utils import run_and_get_code

    def step(x, branch, gate, shift, scale, bias):
        with torch.autocast("cuda", dtype=torch.bfloat16):  # autocast must leave the custom ops alone
            return add_norm_modulate(x, branch, gate, shift, scale, out_dtype=torch.bfloat16, bias=bias)

    compiled = torch.compile(step, fullgraph=True)
    ratios, sources = run_and_get_code(
        kernel_error_ratios, (4, 64, 1152), "biased", True, "cuda", 0, compiled
    )
    assert all(r <= 1.0 for r in ratios.values()), ratios
    generated = "\n".join(sources)
    assert "_add_norm_modulate_fwd_kernel" in generated and "_add_norm_modulate_bwd_kernel" in generated
