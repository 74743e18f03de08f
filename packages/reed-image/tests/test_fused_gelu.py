"""Fused bias add + tanh-GELU: reference vs ``F.gelu``, Triton kernels vs a float64 oracle.

The reference (plain PyTorch) is checked in float64 against ``F.gelu(h + bias, approximate="tanh")``
and against the sigmoid-form equations the kernels implement. The Triton kernels are checked against
``F.gelu`` in float64 with bfloat16 ``h``/``dout`` and a float32 ``bias``, as under autocast in
training.

Without a GPU the kernels run through Triton's interpreter, chosen when ``triton`` is imported with
``TRITON_INTERPRET=1``; so those checks run in one subprocess started with that variable, and the
tests read its report. As in ``test_fused_adaln.py``: the interpreter casts float32 to bfloat16 by
truncation (the GPU rounds to nearest), so bfloat16 outputs are held to one bfloat16 ulp (2^-7
relative) of the oracle; and its ``opcheck`` leaves out ``test_aot_dispatch_dynamic`` (tracing for
``torch.compile``), which the CUDA tests run.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from reed_image.models.fused_gelu import bias_gelu, bias_gelu_reference, triton_path_available

# h shapes: F not a power of two, odd, one column block or several (512 columns a block), one row;
# 2 x 500 rows spans several row tiles of the backward, each several loop steps, the last one ragged
KERNEL_CASES = [(3, 5, 72), (7, 4608), (1, 1, 16), (2, 3, 1155), (2, 500, 72), (64, 9)]
GPU_CASES = KERNEL_CASES + [(64, 256, 4608), (4, 256, 1536), (100_003, 24)]
BF16_ULP = 2.0**-7  # one bfloat16 ulp, relative (interpreter truncates; the GPU rounds to nearest)


def case_id(shape) -> str:
    return "x".join(map(str, shape))


def make_inputs(shape, h_dtype=torch.bfloat16, bias_dtype=torch.float32, device="cpu", seed=0):
    """``(h, bias, dout)``: pre-activations of spread 2 around a bias of spread 0.5."""
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(shape, generator=g) * 2).to(device, h_dtype)
    bias = (torch.randn(shape[-1], generator=g) * 0.5).to(device, bias_dtype)
    dout = torch.randn(shape, generator=g).to(device, h_dtype)
    return h, bias, dout


def value_and_grads(fn, h, bias, dout):
    """``(out, dh, dbias)`` of ``fn(h, bias)`` for the upstream gradient ``dout``."""
    h, bias = h.detach().clone().requires_grad_(), bias.detach().clone().requires_grad_()
    out = fn(h, bias)
    dh, dbias = torch.autograd.grad(out, (h, bias), dout.to(out.dtype))
    return out, dh, dbias


def torch_gelu(h, bias):
    return F.gelu(h + bias, approximate="tanh")


def worst_error_ratio(actual: torch.Tensor, expected: torch.Tensor, rel: float) -> float:
    """``max |a - e| / (rel |e| + 1e-4 max|e|)``: at most 1 passes (the floor absorbs float32 sums)."""
    expected = expected.double()
    floor = 1e-4 * expected.abs().max().item() + 1e-12
    bound = rel * expected.abs() + floor
    return ((actual.double() - expected).abs() / bound).max().item()


def kernel_error_ratios(shape, device="cpu", seed=0, fn=bias_gelu) -> dict[str, float]:
    """Worst error ratio of ``out``/``dh``/``dbias`` of ``fn`` (the fused op) vs ``F.gelu`` in float64."""
    h, bias, dout = make_inputs(shape, device=device, seed=seed)
    assert triton_path_available(h)
    out, dh, dbias = value_and_grads(fn, h, bias, dout)
    out64, dh64, dbias64 = value_and_grads(torch_gelu, h.double(), bias.double(), dout.double())
    assert out.dtype == dh.dtype == torch.bfloat16 and dbias.dtype == torch.float32
    assert out.shape == dh.shape == h.shape and dbias.shape == bias.shape
    return {
        "out": worst_error_ratio(out, out64, BF16_ULP),
        "dh": worst_error_ratio(dh, dh64, BF16_ULP),
        "dbias": worst_error_ratio(dbias, dbias64, 1e-5),
    }


def autocast_keeps_inputs(device="cpu") -> bool:
    """Under bfloat16 autocast the op sees the float32 bias as is (not rounded to bfloat16)."""
    h, bias, _ = make_inputs((4, 40), device=device)
    bias = bias + 1e-3  # not representable in bfloat16
    with torch.autocast(device, dtype=torch.bfloat16):
        autocast_out = bias_gelu(h, bias)
    return autocast_out.dtype == torch.bfloat16 and torch.equal(autocast_out, bias_gelu(h, bias))


def opcheck_results(device="cpu", test_utils=None) -> dict[str, str]:
    """``torch.library.opcheck`` of both custom ops (2-D and 3-D ``h``)."""
    kwargs = {} if test_utils is None else {"test_utils": test_utils}
    results = {}
    for shape in ((6, 40), (2, 3, 40)):
        h, bias, dout = make_inputs(shape, device=device)
        for name, op, args in (
            ("fwd", torch.ops.reed_image.bias_gelu_fwd, (h.requires_grad_(), bias.requires_grad_())),
            ("bwd", torch.ops.reed_image.bias_gelu_bwd, (dout, h.detach(), bias.detach())),
        ):
            for util, outcome in torch.library.opcheck(op, args, **kwargs).items():
                results[f"{name}-{case_id(shape)}-{util}"] = outcome
    return results


def interpreter_report() -> dict:
    """Run inside the ``TRITON_INTERPRET=1`` subprocess: every kernel case and opcheck, as JSON."""
    return {
        "cases": {case_id(shape): kernel_error_ratios(shape) for shape in KERNEL_CASES},
        "autocast_keeps_inputs": autocast_keeps_inputs(),
        "opcheck": opcheck_results(
            test_utils=("test_schema", "test_autograd_registration", "test_faketensor")
        ),
    }


# ---------------------------------------------------------------- reference (float64, CPU)


@pytest.mark.parametrize("shape", [(3, 5, 24), (7, 13), (11,)], ids=case_id)
def test_reference_matches_torch_gelu(shape):
    h, bias, dout = make_inputs(shape, torch.float64, torch.float64)
    got = value_and_grads(bias_gelu_reference, h, bias, dout)
    want = value_and_grads(torch_gelu, h, bias, dout)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


def test_reference_gradcheck():
    h, bias, _ = make_inputs((2, 3, 5), torch.float64, torch.float64)
    assert torch.autograd.gradcheck(bias_gelu_reference, (h.requires_grad_(), bias.requires_grad_()))


def test_kernel_equations_match_autograd_of_the_reference():
    """The sigmoid form of the module docstring, which the Triton kernels implement."""
    h, bias, dout = make_inputs((4, 6, 20), torch.float64, torch.float64)
    h = h * 2  # reach well into both tails
    out, dh, dbias = value_and_grads(bias_gelu_reference, h, bias, dout)
    k, c = math.sqrt(2 / math.pi), 0.044715
    pre = h + bias
    s = torch.sigmoid(2 * k * (pre + c * pre**3))
    dpre = dout * (s + 2 * k * pre * s * (1 - s) * (1 + 3 * c * pre**2))
    torch.testing.assert_close(out, pre * s)
    torch.testing.assert_close(dh, dpre)
    torch.testing.assert_close(dbias, dpre.sum(dim=(0, 1)))


def test_cpu_without_interpreter_runs_the_reference():
    h, bias, _ = make_inputs((2, 4, 24))
    if triton_path_available(h):
        pytest.skip("TRITON_INTERPRET is set in this process: CPU tensors take the Triton path")
    out = bias_gelu(h, bias)
    assert out.dtype == torch.bfloat16 and torch.equal(out, bias_gelu_reference(h, bias))


def test_shape_errors():
    h, bias, _ = make_inputs((2, 4, 24))
    with pytest.raises(ValueError, match=r"bias must be \[F\] = \[24\]"):
        bias_gelu(h, bias[:20])
    with pytest.raises(ValueError, match=r"bias must be \[F\]"):
        bias_gelu(h, bias[None])
    with pytest.raises(ValueError, match="scalar"):
        bias_gelu(h[0, 0, 0], bias[:1])


# ---------------------------------------------------------------- Triton kernels, interpreter (CPU)


@pytest.fixture(scope="module")
def interpreter(triton_interpreter_report):
    """One ``TRITON_INTERPRET=1`` subprocess runs ``interpreter_report()`` of this file."""
    return triton_interpreter_report(Path(__file__))


@pytest.mark.parametrize("shape", KERNEL_CASES, ids=case_id)
def test_triton_interpreter_matches_float64_oracle(interpreter, shape):
    ratios = interpreter["cases"][case_id(shape)]
    assert set(ratios) == {"out", "dh", "dbias"}
    assert all(r <= 1.0 for r in ratios.values()), ratios


def test_triton_interpreter_autocast_leaves_the_op_alone(interpreter):
    assert interpreter["autocast_keeps_inputs"]


def test_triton_interpreter_opcheck(interpreter):
    results = interpreter["opcheck"]
    assert results and all(outcome == "SUCCESS" for outcome in results.values()), results


# ---------------------------------------------------------------- Triton kernels, CUDA


@pytest.mark.gpu
@pytest.mark.parametrize("shape", GPU_CASES, ids=case_id)
def test_triton_cuda_matches_float64_oracle(shape):
    ratios = kernel_error_ratios(shape, device="cuda")
    assert all(r <= 1.0 for r in ratios.values()), ratios


@pytest.mark.gpu
def test_triton_cuda_opcheck_and_autocast():
    results = opcheck_results(device="cuda")
    assert all(outcome == "SUCCESS" for outcome in results.values()), results
    assert autocast_keeps_inputs("cuda")


@pytest.mark.gpu
def test_torch_compile_keeps_the_fused_kernels():
    from torch._inductor.utils import run_and_get_code

    def step(h, bias):
        with torch.autocast("cuda", dtype=torch.bfloat16):  # autocast must leave the custom ops alone
            return bias_gelu(h, bias)

    compiled = torch.compile(step, fullgraph=True)
    ratios, sources = run_and_get_code(kernel_error_ratios, (4, 64, 4608), "cuda", 0, compiled)
    assert all(r <= 1.0 for r in ratios.values()), ratios
    generated = "\n".join(sources)
    assert "_bias_gelu_fwd_kernel" in generated and "_bias_gelu_bwd_kernel" in generated


@pytest.mark.gpu
def test_compiled_fused_mlp_matches_the_unfused_mlp():
    from reed_image.models.sit import Mlp

    torch.manual_seed(0)
    plain = Mlp(256, 1024).cuda()
    torch.nn.init.normal_(plain.fc1.bias, std=0.5)
    fused = Mlp(256, 1024, fused_gelu=True).cuda()
    fused.load_state_dict(plain.state_dict())
    x = torch.randn(4, 64, 256, device="cuda")

    def loss(mlp, x):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return mlp(x).float().square().sum()

    loss(plain, x).backward()
    loss_fused = torch.compile(loss, fullgraph=True)(fused, x)
    loss_fused.backward()
    torch.testing.assert_close(loss_fused, loss(plain, x), rtol=1e-2, atol=0)
    for (name, p), q in zip(plain.named_parameters(), fused.parameters()):
        assert q.grad.dtype == p.grad.dtype == torch.float32, name
        torch.testing.assert_close(q.grad, p.grad, rtol=2e-2, atol=2e-2 * p.grad.abs().max().item(), msg=name)
