"""Packed attention (``model.attention=fa4``): the op against ``F.scaled_dot_product_attention``.

On the CPU the op runs its float32 reference: value and the packed ``qkv`` gradient are checked
against SDPA's (float64 inputs), with ``opcheck``, ``torch.compile(fullgraph=True)``, and a whole
SiT (with and without qk-norm) against the same weights through SDPA. The CUDA tests (skipped
without a GPU, and where FlashAttention-4 is not installed) run the kernels at SiT-XL/2's head
dimension 72 in bfloat16 against the float32 reference, under compile and CUDA-graph capture.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from reed_image.models import flash_attention
from reed_image.models.flash_attention import (
    attention_backward_reference,
    attention_reference,
    flash_attention_available,
    packed_attention,
)
from reed_image.models.sit import SiT, SiTConfig


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
        torch.ops.reed_image.packed_attention_fwd.default, (qkv.requires_grad_(),), raise_exception=True
    )
    out, lse = attention_reference(qkv.detach())
    torch.library.opcheck(
        torch.ops.reed_image.packed_attention_bwd.default,
        (dout, qkv.detach(), out, lse),
        raise_exception=True,
    )
    compiled = torch.compile(packed_attention, fullgraph=True, backend="aot_eager")
    got = value_and_grad(compiled, qkv, dout)
    want = value_and_grad(packed_attention, qkv, dout)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


def test_bad_layout_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\[B, N, 3, H, d\]"):
        packed_attention(torch.zeros(2, 4, 2, 3, 8))
    with pytest.raises(ValueError, match="contiguous"):
        packed_attention(torch.zeros(2, 4, 3, 8, 3).transpose(-1, -2))


@pytest.mark.parametrize("qk_norm,fused_adaln", [(False, False), (True, False), (False, True)])
def test_sit_with_packed_attention_matches_sdpa(qk_norm, fused_adaln):
    """A whole SiT with ``attention="fa4"`` (the reference on CPU) equals the SDPA SiT: velocity
    and every parameter gradient."""
    cfg = dict(
        arch="SiT-S/2",
        input_size=8,
        in_channels=2,
        num_classes=5,
        depth=2,
        hidden_size=48,
        num_heads=3,
        qk_norm=qk_norm,
        fused_adaln=fused_adaln,
    )
    torch.manual_seed(0)
    plain = SiT(SiTConfig(**cfg)).double()
    packed = SiT(SiTConfig(**cfg, attention="fa4")).double()
    packed.load_state_dict(plain.state_dict())
    for module in (plain, packed):  # adaLN-Zero starts at zero: give the attention branch a say
        for block in module.blocks:
            torch.nn.init.normal_(block.adaLN_modulation[-1].weight, std=0.05)
        torch.nn.init.normal_(module.final_layer.linear.weight, std=0.05)
    packed.load_state_dict(plain.state_dict())
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    t = torch.rand(3, dtype=torch.float64)
    y = torch.tensor([0, 3, 5])
    outs = []
    for module in (plain, packed):
        module.zero_grad()
        velocity = module(x, t, y)
        velocity.square().sum().backward()
        outs.append((velocity, {n: p.grad.clone() for n, p in module.named_parameters()}))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-5, atol=1e-6)
    for name, grad in outs[0][1].items():
        torch.testing.assert_close(outs[1][1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_unknown_attention_names_the_choices():
    with pytest.raises(ValueError, match="fa4"):
        SiTConfig(attention="flash4").resolved()


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
@pytest.mark.parametrize("forward", ["cudnn", "fa4"])
@pytest.mark.parametrize("shape", [(64, 256, 16, 72), (3, 40, 2, 64), (2, 200, 4, 128)])
def test_kernels_match_the_reference(shape, forward, monkeypatch):
    monkeypatch.setattr(flash_attention, "FORWARD", forward)
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
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):  # warm-up off the capture (kernel compilation, workspaces)
            torch.autograd.grad(packed_attention(static_qkv), static_qkv, dout)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = packed_attention(static_qkv)
        (static_dqkv,) = torch.autograd.grad(static_out, static_qkv, dout)
    fresh = torch.randn_like(qkv)
    static_qkv.data.copy_(fresh)
    graph.replay()
    want_out, want_dqkv = value_and_grad(packed_attention, fresh, dout)
    torch.testing.assert_close(static_out, want_out, rtol=0, atol=0)
    torch.testing.assert_close(static_dqkv, want_dqkv, rtol=0, atol=0)
