"""Triton pre/postprocess of the packed attention backward (``reed_kernels/attention_prepost.py``).

Without a GPU the kernels run through Triton's interpreter in one ``TRITON_INTERPRET=1``
subprocess (the interpreter is chosen when Triton is imported). The preprocess is checked against
its equations; the postprocess against an accumulator built by a plain reshape/permute of the
layout in the module docstring (written independently of the kernel's index arithmetic). That
this layout is FlashAttention-4's own is checked on the GPU (``test_flash_attention.py``).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

# (B, N, H, d, tile_m): SiT-XL/2's head dim 72 (tile 64, one warpgroup) and 64 (tile 128, two)
POST_CASES = [(2, 128, 3, 72, 64), (1, 256, 2, 64, 128), (2, 64, 1, 40, 64)]
PRE_CASES = [(2, 128, 3, 72), (1, 64, 2, 40)]


def round_up(value: int, multiple: int) -> int:
    return (value + multiple - 1) // multiple * multiple


def accumulator_from_dq(dq: torch.Tensor, row_length: int) -> torch.Tensor:
    """``dq_accum [B, H, row_length]`` holding ``dq [B, N, H, d]`` in the Hopper kernel's tile order.

    A warpgroup's 64 x th block, rows as (warp 4, i_r 2, l_r 8) and columns as (j, l_c 4, i_c 2),
    is stored in the order (j, warp, l_r, l_c, i_r, i_c); a tile of 64 or 128 rows is one or two such
    blocks, so the tile size does not change where a row lands."""
    batch, tokens, heads, head_dim = dq.shape
    th = round_up(head_dim, 16)
    padded = torch.zeros(batch, heads, tokens, th, dtype=torch.float32)
    padded[..., :head_dim] = dq.permute(0, 2, 1, 3)
    blocks = padded.reshape(batch, heads, tokens // 64, 4, 2, 8, th // 8, 4, 2)
    ordered = blocks.permute(0, 1, 2, 6, 3, 5, 7, 4, 8).reshape(batch, heads, tokens * th)
    accum = torch.full((batch, heads, row_length), float("nan"))
    accum[..., : tokens * th] = ordered
    return accum


def postprocess_errors(case) -> dict:
    from reed_kernels.attention_prepost import attention_bwd_postprocess, colsum_buffer

    batch, tokens, heads, head_dim, tile_m = case
    g = torch.Generator().manual_seed(0)
    dq_true = torch.randn(batch, tokens, heads, head_dim, generator=g)
    scale = 1 / math.sqrt(head_dim)
    accum = accumulator_from_dq(dq_true / scale, tokens * round_up(head_dim, 32))
    dqkv = torch.full((batch, tokens, 3, heads, head_dim), 7.0, dtype=torch.bfloat16)
    colsum = colsum_buffer(batch, tokens, heads, head_dim, "cpu").fill_(float("nan"))
    attention_bwd_postprocess(accum, dqkv[:, :, 0], scale, tile_m, round_up(head_dim, 16), colsum)
    per_64 = dq_true.reshape(batch, tokens // 64, 64, heads * head_dim).sum(2).reshape(-1, heads * head_dim)
    return {
        "dq": (dqkv[:, :, 0].float() - dq_true).abs().max().item() / dq_true.abs().max().item(),
        "untouched": bool((dqkv[:, :, 1:] == 7.0).all()),
        "colsum_q": (colsum[:, 0] - per_64).abs().max().item(),
    }


def preprocess_errors(case) -> dict:
    from reed_kernels.attention_prepost import attention_bwd_preprocess, colsum_buffer

    batch, tokens, heads, head_dim = case
    g = torch.Generator().manual_seed(1)
    out = torch.randn(batch, tokens, heads, head_dim, generator=g).to(torch.bfloat16)
    dout = torch.randn(batch, tokens, 2, heads, head_dim, generator=g).to(torch.bfloat16)[:, :, 1]  # strided
    lse = torch.randn(batch, heads, tokens, generator=g)
    lse[0, 0, 1] = float("-inf")
    th = round_up(head_dim, 16)
    row_length = tokens * round_up(head_dim, 32)
    dq_accum = torch.full((batch, heads, row_length), 5.0)
    dpsum = torch.full((batch, heads, tokens), float("nan"))
    lse_log2 = torch.full_like(dpsum, float("nan"))
    colsum = colsum_buffer(batch, tokens, heads, head_dim, "cpu").fill_(float("nan"))
    attention_bwd_preprocess(out, dout, lse, dpsum, lse_log2, dq_accum, th, colsum)
    want_dpsum = (out.float() * dout.float()).sum(-1).transpose(1, 2)
    want_log2 = torch.where(lse == float("-inf"), 0.0, lse * math.log2(math.e))
    per_64 = (
        dout.float().reshape(batch, tokens // 64, 64, heads * head_dim).sum(2).reshape(-1, heads * head_dim)
    )
    return {
        "dpsum": (dpsum - want_dpsum).abs().max().item(),
        "lse_log2": (lse_log2 - want_log2).abs().max().item(),
        "zeroed": bool((dq_accum[..., : tokens * th] == 0).all()),
        "rest_untouched": bool((dq_accum[..., tokens * th :] == 5.0).all()),
        "colsum_k_zero": bool((colsum[:, 1] == 0).all()),
        "colsum_v": (colsum[:, 2] - per_64).abs().max().item(),
    }


TOTAL_CASES = [(256, 3, 216), (3, 3, 40), (65, 3, 8)]  # colsum [rows, 3, H * d]


def total_error(case) -> float:
    from reed_kernels.attention_prepost import colsum_total

    colsum = torch.randn(*case, generator=torch.Generator().manual_seed(2))
    total = colsum_total(colsum)
    assert total.shape == (case[1] * case[2],) and total.dtype == torch.float32
    return (total - colsum.double().sum(0).flatten()).abs().max().item()


def interpreter_report() -> dict:
    """Run inside the ``TRITON_INTERPRET=1`` subprocess."""
    return {
        "post": {str(case): postprocess_errors(case) for case in POST_CASES},
        "pre": {str(case): preprocess_errors(case) for case in PRE_CASES},
        "total": {str(case): total_error(case) for case in TOTAL_CASES},
    }


@pytest.fixture(scope="module")
def interpreter(triton_interpreter_report):
    return triton_interpreter_report(Path(__file__))


@pytest.mark.parametrize("case", POST_CASES, ids=str)
def test_postprocess_unpermutes_scales_and_sums_dq(interpreter, case):
    got = interpreter["post"][str(case)]
    assert got["dq"] < 2**-7  # one bfloat16 ulp (the interpreter truncates)
    assert got["untouched"], "the postprocess wrote outside dq's slot of dqkv"
    assert got["colsum_q"] < 1e-4


@pytest.mark.parametrize("case", PRE_CASES, ids=str)
def test_preprocess_equations_and_zeroing(interpreter, case):
    got = interpreter["pre"][str(case)]
    assert got["dpsum"] < 1e-4 and got["lse_log2"] < 1e-5 and got["colsum_v"] < 1e-4
    assert got["zeroed"] and got["rest_untouched"] and got["colsum_k_zero"]


@pytest.mark.parametrize("case", TOTAL_CASES, ids=str)
def test_colsum_total_sums_the_partial_rows(interpreter, case):
    """The bias gradient's last step: every column summed over all partial rows (rows and columns
    that are not multiples of the kernel's blocks included)."""
    assert interpreter["total"][str(case)] < 1e-4


def test_layout_builder_is_a_permutation():
    """The test's own accumulator builder loses nothing (so the postprocess check means something)."""
    dq = torch.arange(2 * 128 * 1 * 72, dtype=torch.float32).reshape(2, 128, 1, 72)
    accum = accumulator_from_dq(dq, 128 * 96)[..., : 128 * 80]
    values = accum[accum == accum]  # drop the padding columns' zeros below
    assert sorted(values[values > 0].tolist()) == sorted(dq[dq > 0].tolist())
