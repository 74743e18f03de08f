"""Packed attention (``packed_attention``): the op against ``F.scaled_dot_product_attention``.

On the CPU the op runs its float32 reference: value and the packed ``qkv`` gradient are checked
against SDPA's (float64 inputs), with ``opcheck`` and ``torch.compile(fullgraph=True)``; the qkv
bias gradient the op returns (``bias=``) against autograd through the Linear (a whole SiT through
it: reed-image's test_sit.py). The CUDA tests (skipped
without a GPU, and where FlashAttention-4 is not installed) run the kernels at SiT-XL/2's head
dimension 72 in bfloat16 against the float32 reference, under compile and CUDA-graph capture.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from reed_kernels import flash_attention
from reed_kernels.flash_attention import (
    attention_backward_reference,
    attention_reference,
    flash_attention_available,
    packed_attention,
    qkv_bias_grad_reference,
)


def sdpa(qkv: torch.Tensor) -> torch.Tensor:
    """SiT's SDPA path on a packed ``[B, N, 3, H, d]`` -> ``[B, N, H, d]``."""
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2)


def value_and_grad(fn, qkv: torch.Tensor, dout: torch.Tensor):
    qkv = qkv.detach().clone().requires_grad_()
    out = fn(qkv)
    (dqkv,) = torch.autograd.grad(out, qkv, dout.to(out.dtype))
    return out, dqkv


def random_qkv(batch=2, tokens=24, heads=3, head_dim=8, dtype=torch.float64, device="cpu", scale=2.0):
    generator = torch.Generator(device="cpu").manual_seed(0)
    qkv = scale * torch.randn(batch, tokens, 3, heads, head_dim, generator=generator, dtype=torch.float64)
    dout = torch.randn(batch, tokens, heads, head_dim, generator=generator, dtype=torch.float64)
    return qkv.to(device, dtype), dout.to(device, dtype)


def test_reference_matches_sdpa_value_and_gradient():
    qkv, dout = random_qkv()
    out, dqkv = value_and_grad(packed_attention, qkv, dout)
    want_out, want_dqkv = value_and_grad(sdpa, qkv, dout)
    assert dqkv.shape == qkv.shape and dqkv.is_contiguous()
    # the reference computes in float32: agreement to float32 precision on O(1) values
    torch.testing.assert_close(out, want_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dqkv, want_dqkv, rtol=1e-5, atol=1e-5)


def test_lse_is_the_log_partition_function():
    qkv, _ = random_qkv()
    _, lse = attention_reference(qkv)
    q, k = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)
    scores = (q @ k.transpose(-1, -2)) / qkv.shape[-1] ** 0.5
    torch.testing.assert_close(lse, torch.logsumexp(scores, -1).float(), rtol=1e-5, atol=1e-5)


def test_backward_reference_swaps_a_wrong_lse_for_a_wrong_gradient():
    """The backward rebuilds P from the saved lse: it must actually use it."""
    qkv, dout = random_qkv(dtype=torch.float32)
    out, lse = attention_reference(qkv)
    right = attention_backward_reference(dout, qkv, out, lse)
    wrong = attention_backward_reference(dout, qkv, out, lse + 0.5)
    assert (right - wrong).abs().max() > 1e-2


def test_opcheck_and_fullgraph_compile():
    qkv, dout = random_qkv(dtype=torch.float32)
    torch.library.opcheck(
        torch.ops.reed_kernels.packed_attention_fwd.default, (qkv.requires_grad_(),), raise_exception=True
    )
    out, lse = attention_reference(qkv.detach())
    torch.library.opcheck(
        torch.ops.reed_kernels.packed_attention_bwd.default,
        (dout, qkv.detach(), out, lse),
        raise_exception=True,
    )
    compiled = torch.compile(packed_attention, fullgraph=True, backend="aot_eager")
    got = value_and_grad(compiled, qkv, dout)
    want = value_and_grad(packed_attention, qkv, dout)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


def linear_then_attention(folded: bool, x, weight, bias, heads: int):
    """SiT's qkv Linear + attention: plain autograd through SDPA, or the bias folded into the op."""
    batch, tokens, dim = x.shape
    if folded:
        qkv = F.linear(x, weight, bias.detach()).view(batch, tokens, 3, heads, dim // heads)
        return packed_attention(qkv, bias)
    return sdpa(F.linear(x, weight, bias).view(batch, tokens, 3, heads, dim // heads))


def test_bias_gradient_from_the_op_equals_autograd_through_the_linear():
    """db_q = sum dq, db_k = 0, db_v = sum do: the gradients of x, W and b all match plain autograd."""
    g = torch.Generator().manual_seed(3)
    batch, tokens, heads, dim = 2, 24, 3, 24
    x = torch.randn(batch, tokens, dim, generator=g, dtype=torch.float64)
    weight = 0.3 * torch.randn(3 * dim, dim, generator=g, dtype=torch.float64)
    bias = torch.randn(3 * dim, generator=g, dtype=torch.float64)
    dout = torch.randn(batch, tokens, heads, dim // heads, generator=g, dtype=torch.float64)
    results = []
    for folded in (False, True):
        leaves = [t.detach().clone().requires_grad_() for t in (x, weight, bias)]
        out = linear_then_attention(folded, *leaves, heads)
        results.append((out, *torch.autograd.grad(out, leaves, dout)))
    for got, want in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    db_k = results[1][3][dim : 2 * dim]
    assert (db_k == 0).all() and results[0][3][dim : 2 * dim].abs().max() < 1e-10
    assert results[1][3][2 * dim :].abs().min() > 0  # the value slot is not vacuous


def test_opcheck_and_compile_with_bias():
    qkv, dout = random_qkv(dtype=torch.float32)
    bias = torch.randn(3 * qkv.shape[3] * qkv.shape[4])
    torch.library.opcheck(
        torch.ops.reed_kernels.packed_attention_fwd.default,
        (qkv.clone().requires_grad_(), bias.clone().requires_grad_()),
        raise_exception=True,
    )
    out, lse = attention_reference(qkv)
    torch.library.opcheck(
        torch.ops.reed_kernels.packed_attention_bwd.default, (dout, qkv, out, lse, True), raise_exception=True
    )
    dqkv, dbias = torch.ops.reed_kernels.packed_attention_bwd(dout, qkv, out, lse, True)
    torch.testing.assert_close(dbias, qkv_bias_grad_reference(dqkv[:, :, 0], dout))

    def attention_sum(qkv, bias):
        return packed_attention(qkv, bias).square().sum()

    compiled = torch.compile(attention_sum, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(qkv.requires_grad_(), bias.requires_grad_()), (qkv, bias))
    want = torch.autograd.grad(attention_sum(qkv, bias), (qkv, bias))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


def test_routing_of_flash_attention_4s_passes(monkeypatch):
    """On FlashAttention-4's interface (here a stand-in): the dq-stride fix is installed once and
    tells the dq postprocess the Hopper kernel's rounding (16) only on SM90. While one packed
    backward runs (``_routed_prepost``) the pre/postprocess calls go to the Triton passes with
    that backward's job (by closure), and to FlashAttention-4's own where those decline (CPU
    tensors here); afterwards, also after an error, the interface's own functions are back."""
    import types

    calls = []
    interface = types.SimpleNamespace(
        _bwd_preprocess=lambda *args, **kwargs: calls.append(("pre", kwargs.get("hdim_multiple_of"))),
        _bwd_postprocess_convert=lambda *args, hdim_multiple_of=32, **kwargs: calls.append(
            ("post", hdim_multiple_of)
        ),
    )
    for _ in range(2):  # a second install must not wrap again
        flash_attention._fix_sm90_dq_accum_stride(interface)
    preprocess, postprocess = interface._bwd_preprocess, interface._bwd_postprocess_convert
    out = torch.zeros(2, 64, 3, 8)
    pre_args = (out, out, None, None, None, None, None, None, None, None, 8, 8, 64)
    dq = torch.zeros(2, 64, 3, 8)
    post_args = lambda arch: (None, dq, 1.0, None, None, arch, None, 8, 64, 128, 1, False)  # noqa: E731
    interface._bwd_preprocess(*pre_args, fake_mode=False, hdim_multiple_of=32)
    interface._bwd_postprocess_convert(*post_args(90), fake_mode=False)
    interface._bwd_postprocess_convert(*post_args(100), fake_mode=False)
    interface._bwd_postprocess_convert(*post_args(90), fake_mode=False, hdim_multiple_of=64)
    job = flash_attention._BackwardPass(dq, torch.zeros(2, 3, 24))
    with flash_attention._routed_prepost(interface, job):  # a packed backward, but on the CPU
        assert interface._bwd_preprocess is not preprocess
        interface._bwd_preprocess(*pre_args, fake_mode=False, hdim_multiple_of=32)
        interface._bwd_postprocess_convert(*post_args(90), fake_mode=False)
    assert calls == [("pre", 32), ("post", 16), ("post", 32), ("post", 64), ("pre", 32), ("post", 16)]
    assert not (job.preprocessed or job.postprocessed)
    assert interface._bwd_preprocess is preprocess and interface._bwd_postprocess_convert is postprocess

    seen = []
    monkeypatch.setattr(flash_attention, "_triton_preprocess", lambda job, *a, **k: seen.append(job) or True)
    monkeypatch.setattr(flash_attention, "_triton_postprocess", lambda job, *a, **k: seen.append(job) or True)
    calls.clear()
    with pytest.raises(RuntimeError, match="inside"), flash_attention._routed_prepost(interface, job):
        interface._bwd_preprocess(*pre_args, fake_mode=False, hdim_multiple_of=32)
        interface._bwd_postprocess_convert(*post_args(90), fake_mode=False)
        raise RuntimeError("inside")
    assert seen == [job, job] and calls == []  # the Triton passes ran: FlashAttention-4's did not
    assert interface._bwd_preprocess is preprocess and interface._bwd_postprocess_convert is postprocess


def test_bad_layout_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\[B, N, 3, H, d\]"):
        packed_attention(torch.zeros(2, 4, 2, 3, 8))
    with pytest.raises(ValueError, match="contiguous"):
        packed_attention(torch.zeros(2, 4, 3, 8, 3).transpose(-1, -2))
    with pytest.raises(ValueError, match=r"bias must be \[3 \* H \* d\] = \[72\]"):
        packed_attention(torch.zeros(2, 4, 3, 3, 8), torch.zeros(24))


needs_fa4 = pytest.mark.skipif(
    not flash_attention_available(), reason="needs FlashAttention-4 and a GPU of compute capability 9+"
)


@pytest.mark.gpu
def test_cuda_without_the_kernels_raises_instead_of_falling_back(monkeypatch):
    monkeypatch.setattr(flash_attention, "flash_attention_available", lambda device=None: False)
    qkv, _ = random_qkv(dtype=torch.bfloat16, device="cuda")
    with pytest.raises(RuntimeError, match="flash-attn-4"):
        packed_attention(qkv)


@pytest.mark.gpu
@needs_fa4
@pytest.mark.parametrize("shape", [(64, 256, 16, 72), (3, 40, 2, 64), (2, 200, 4, 128)])
def test_kernels_match_the_reference(shape):
    batch, tokens, heads, head_dim = shape
    qkv, dout = random_qkv(batch, tokens, heads, head_dim, dtype=torch.bfloat16, device="cuda", scale=1.0)
    out, dqkv = value_and_grad(packed_attention, qkv, dout)
    want_out, want_dqkv = value_and_grad(
        lambda t: attention_reference(t)[0].float(), qkv.float(), dout.float()
    )
    assert out.dtype == torch.bfloat16 and dqkv.dtype == torch.bfloat16 and dqkv.is_contiguous()
    # bf16 inputs and outputs: a few bf16 ulps of the O(1) values
    torch.testing.assert_close(out.float(), want_out, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(dqkv.float(), want_dqkv, rtol=5e-2, atol=5e-2 * want_dqkv.abs().max().item())
    # and no worse than cuDNN/flash through SDPA on the same bf16 inputs
    sdpa_out, sdpa_dqkv = value_and_grad(sdpa, qkv, dout)
    assert (out.float() - want_out).abs().max() <= 2 * (sdpa_out.float() - want_out).abs().max() + 1e-3
    assert (dqkv.float() - want_dqkv).abs().max() <= 2 * (sdpa_dqkv.float() - want_dqkv).abs().max() + 1e-3


@pytest.mark.gpu
@needs_fa4
def test_kernels_under_compile_and_cuda_graph_capture():
    qkv, dout = random_qkv(4, 256, 4, 72, dtype=torch.bfloat16, device="cuda", scale=1.0)
    want = value_and_grad(packed_attention, qkv, dout)
    compiled = torch.compile(packed_attention, fullgraph=True)
    for g, w in zip(value_and_grad(compiled, qkv, dout), want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=0)

    static_qkv = qkv.detach().clone().requires_grad_()
    bias = torch.randn(3 * 4 * 72, device="cuda", requires_grad=True)  # the Triton pre/postprocess too
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):  # warm-up off the capture (kernel compilation, workspaces)
            torch.autograd.grad(packed_attention(static_qkv, bias), (static_qkv, bias), dout)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = packed_attention(static_qkv, bias)
        static_dqkv, static_dbias = torch.autograd.grad(static_out, (static_qkv, bias), dout)
    fresh = torch.randn_like(qkv)
    static_qkv.data.copy_(fresh)
    graph.replay()
    fresh.requires_grad_()
    want_out = packed_attention(fresh, bias)
    want_dqkv, want_dbias = torch.autograd.grad(want_out, (fresh, bias), dout)
    torch.testing.assert_close(static_out, want_out, rtol=0, atol=0)
    torch.testing.assert_close(static_dqkv, want_dqkv, rtol=0, atol=0)
    torch.testing.assert_close(static_dbias, want_dbias, rtol=0, atol=0)


def round_up(value: int, multiple: int) -> int:
    return (value + multiple - 1) // multiple * multiple


@pytest.mark.gpu
@needs_fa4
@pytest.mark.parametrize("head_dim", [72, 64, 40])
def test_triton_postprocess_reads_flash_attention_4s_accumulator(head_dim):
    """``attention_prepost``'s postprocess and FlashAttention-4's turn one accumulator into the same dq."""
    from reed_kernels.attention_prepost import attention_bwd_postprocess, colsum_buffer

    interface = flash_attention._flash_interface()
    cfg = interface._tile_size_bwd_sm90(head_dim, head_dim, False, False)
    tile_m = cfg.m_block_size
    batch, tokens, heads = 2, 2 * tile_m, 3
    accum = torch.randn(batch, heads, tokens * round_up(head_dim, 32), device="cuda")
    scale = head_dim**-0.5
    major, minor = torch.cuda.get_device_capability()
    want = torch.empty(batch, tokens, heads, head_dim, dtype=torch.bfloat16, device="cuda")
    interface._bwd_postprocess_convert(
        accum,
        want,
        scale,
        None,
        None,
        10 * major + minor,
        interface.torch2cute_dtype_map[torch.bfloat16],
        head_dim,
        tile_m,
        128 if cfg.dQ_single_wg else 128 * cfg.num_wg,
        cfg.AtomLayoutMdQ,
        cfg.dQ_swapAB,
        fake_mode=False,
    )
    got = torch.empty_like(want)
    colsum = colsum_buffer(batch, tokens, heads, head_dim, "cuda")
    attention_bwd_postprocess(accum, got, scale, tile_m, round_up(head_dim, 16), colsum)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.gpu
@needs_fa4
@pytest.mark.parametrize("shape", [(64, 256, 16, 72), (2, 256, 4, 64), (2, 200, 4, 72)])
def test_kernels_give_the_bias_gradient(shape, monkeypatch):
    """With ``bias``: dqkv and the bias gradient against the float32 reference, through the Triton
    pre/postprocess where the shape allows it (tokens a multiple of 64) and FlashAttention-4's else."""
    calls = []
    postprocess = flash_attention.attention_bwd_postprocess
    monkeypatch.setattr(
        flash_attention, "attention_bwd_postprocess", lambda *args: (calls.append(1), postprocess(*args))
    )
    batch, tokens, heads, head_dim = shape
    qkv, dout = random_qkv(batch, tokens, heads, head_dim, dtype=torch.bfloat16, device="cuda", scale=1.0)
    bias = torch.randn(3 * heads * head_dim, device="cuda", requires_grad=True)
    qkv.requires_grad_()
    dqkv, dbias = torch.autograd.grad(packed_attention(qkv, bias), (qkv, bias), dout)
    _, want_dqkv = value_and_grad(lambda t: attention_reference(t)[0].float(), qkv.float(), dout.float())
    want_dbias = qkv_bias_grad_reference(want_dqkv[:, :, 0], dout.float())
    assert bool(calls) == (tokens % 64 == 0)
    torch.testing.assert_close(dqkv.float(), want_dqkv, rtol=5e-2, atol=5e-2 * want_dqkv.abs().max().item())
    assert dbias.dtype == torch.float32 and (dbias[heads * head_dim : 2 * heads * head_dim] == 0).all()
    torch.testing.assert_close(dbias, want_dbias, rtol=1e-2, atol=1e-2 * want_dbias.abs().max().item())
