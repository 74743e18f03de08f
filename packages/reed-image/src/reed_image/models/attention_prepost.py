"""Triton pre- and postprocess around FlashAttention-4's Hopper backward, with the qkv bias gradient.

FlashAttention-4's backward (``flash_attn.cute``) runs three kernels: a preprocess, the main
kernel, and a postprocess. For ``o, do [B, N, H, d]`` and the forward's ``lse [B, H, N]``:

Preprocess (``attention_bwd_preprocess``):

    D        = rowsum(o * do)                    (``dpsum [B, H, N]``, float32)
    lse_log2 = lse * log2(e)                     (0 where lse = -inf)
    dq_accum = 0                                 (the float32 dq accumulator the main kernel adds to)

Postprocess (``attention_bwd_postprocess``), after the main kernel has summed ``dS k`` into
``dq_accum`` tile by tile:

    dq = s * dq_accum                            (cast to bf16/fp16, written into ``dqkv[:, :, 0]``)

Both are memory-bound passes, and each already reads a tensor whose sum over tokens is a part of
the qkv Linear's bias gradient. For a qkv bias ``b = (b_q, b_k, b_v)`` (no qk-norm), per head:

    db_q = sum_tokens dq
    db_k = 0                      (a key bias adds q.b_k to every score of a row: softmax ignores it)
    db_v = sum_tokens do          (= sum_tokens dv: each row of P sums to 1)

so these kernels also write float32 partial sums of ``do`` (preprocess) and ``dq`` (postprocess),
one row per 64 tokens of a sample, into ``colsum [B * N / 64, 3, H * d]`` (the ``k`` slot
zeros); ``colsum.sum(0)`` is the bias gradient. That replaces autograd's separate reduction of the
whole ``dqkv`` (113 MB a block at SiT-XL/2, batch 64).

The main kernel's accumulator layout (flash-attn-4 4.0.0b36, SM90; ``flash_bwd_sm90.py``): per
``(b, h)`` a row of ``dq_accum``; in it, tile ``t`` of ``tile_m`` query rows at offset
``t * tile_m * th`` (``th``: the head dim rounded up to 16), stored in the order of the WGMMA
accumulator fragments: each warpgroup's 64 rows in a chunk of ``64 * th`` floats, and in it the
value of row ``r``, column ``c`` (``r = 16 w + 8 i_r + l_r``, ``c = 8 j + 2 l_c + i_c``: warp
``w``, lane ``4 l_r + l_c``, fragment value ``4 j + 2 i_r + i_c``) at

    512 j + 128 w + 16 l_r + 4 l_c + 2 i_r + i_c

(each thread's fragment written four floats at a time, ``128 threads * 4`` per ``j``).
``flash_attention.py`` checks the configuration before it uses these kernels; a GPU test compares
the postprocess with FlashAttention-4's own on the same accumulator.
"""

import math

import torch

from reed_image.models._triton_util import TRITON_INTERPRET, interpreter_kernel

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - Triton ships with CUDA builds of PyTorch on Linux
    triton = None

__all__ = ["ROWS_PER_PARTIAL", "attention_bwd_postprocess", "attention_bwd_preprocess"]

# tokens per row of the colsum partial sums (and per preprocess program)
ROWS_PER_PARTIAL = 64
_LOG2_E = math.log2(math.e)


if triton is not None:

    @triton.jit
    def _preprocess_kernel(
        out_ptr,
        dout_ptr,
        lse_ptr,
        dpsum_ptr,
        lse_log2_ptr,
        dq_accum_ptr,
        colsum_ptr,
        tokens,
        heads,
        head_dim,
        out_stride_b,
        out_stride_n,
        out_stride_h,
        dout_stride_b,
        dout_stride_n,
        dout_stride_h,
        lse_stride_bh,
        dpsum_stride_bh,
        accum_stride_bh,
        log2_e,
        TILE_HDIM: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        # program (m, h, b): tokens [m * BLOCK_M, (m + 1) * BLOCK_M) of sample b, head h
        m_block = tl.program_id(0)
        head = tl.program_id(1)
        sample = tl.program_id(2).to(tl.int64)
        rows = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_D)
        row_mask = rows < tokens
        mask = row_mask[:, None] & (cols < head_dim)[None, :]

        out = tl.load(
            out_ptr
            + sample * out_stride_b
            + rows[:, None] * out_stride_n
            + head * out_stride_h
            + cols[None, :],
            mask=mask,
            other=0.0,
        ).to(tl.float32)
        dout = tl.load(
            dout_ptr
            + sample * dout_stride_b
            + rows[:, None] * dout_stride_n
            + head * dout_stride_h
            + cols[None, :],
            mask=mask,
            other=0.0,
        ).to(tl.float32)
        bh = sample * heads + head
        tl.store(dpsum_ptr + bh * dpsum_stride_bh + rows, tl.sum(out * dout, axis=1), mask=row_mask)
        lse = tl.load(lse_ptr + bh * lse_stride_bh + rows, mask=row_mask, other=0.0)
        lse_log2 = tl.where(lse == float("-inf"), 0.0, lse * log2_e)
        tl.store(lse_log2_ptr + bh * dpsum_stride_bh + rows, lse_log2, mask=row_mask)

        # these rows' share of the accumulator (tile-ordered inside, contiguous as a whole)
        zero_mask = row_mask[:, None] & (cols < TILE_HDIM)[None, :]
        zero_offsets = rows[:, None] * TILE_HDIM + cols[None, :]
        tl.store(
            dq_accum_ptr + bh * accum_stride_bh + zero_offsets,
            tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32),
            mask=zero_mask,
        )

        # colsum[(b, m), slot, h, :]: slot 1 (keys) zeros, slot 2 (values) sum of do over the rows
        width = heads * head_dim
        partial = (sample * tl.num_programs(0) + m_block) * 3 * width + head * head_dim + cols
        col_mask = cols < head_dim
        tl.store(colsum_ptr + partial + width, tl.zeros([BLOCK_D], dtype=tl.float32), mask=col_mask)
        tl.store(colsum_ptr + partial + 2 * width, tl.sum(dout, axis=0), mask=col_mask)

    @triton.jit
    def _postprocess_kernel(
        dq_accum_ptr,
        dq_ptr,
        colsum_ptr,
        scale,
        tokens,
        heads,
        head_dim,
        dq_stride_b,
        dq_stride_n,
        dq_stride_h,
        accum_stride_bh,
        TILE_M: tl.constexpr,
        TILE_HDIM: tl.constexpr,
        BLOCK_D: tl.constexpr,
        ROWS_PER_SUM: tl.constexpr,
    ):
        # program (t, h, b): the main kernel's accumulator tile t of sample b, head h
        tile = tl.program_id(0)
        head = tl.program_id(1)
        sample = tl.program_id(2).to(tl.int64)
        r = tl.arange(0, TILE_M)[:, None]
        c = tl.arange(0, BLOCK_D)[None, :]
        # where row r, column c of the tile sits in the accumulator (module docstring)
        in_wg = r % 64
        offsets = (
            (r // 64) * (64 * TILE_HDIM)
            + (c // 8) * 512
            + (in_wg // 16) * 128
            + (in_wg % 8) * 16
            + ((c % 8) // 2) * 4
            + ((in_wg % 16) // 8) * 2
            + (c % 2)
        )
        rows = tile * TILE_M + r
        mask = (rows < tokens) & (c < head_dim)
        bh = sample * heads + head
        accum = tl.load(
            dq_accum_ptr + bh * accum_stride_bh + tile * (TILE_M * TILE_HDIM) + offsets, mask=mask, other=0.0
        )
        dq = accum * scale
        tl.store(
            dq_ptr + sample * dq_stride_b + rows * dq_stride_n + head * dq_stride_h + c,
            dq.to(dq_ptr.dtype.element_ty),
            mask=mask,
        )
        # colsum[(b, m), 0, h, :]: sum of dq over each ROWS_PER_SUM tokens of the tile
        sums = tl.sum(tl.reshape(dq, [TILE_M // ROWS_PER_SUM, ROWS_PER_SUM, BLOCK_D]), axis=1)
        parts = tl.arange(0, TILE_M // ROWS_PER_SUM)[:, None]
        cols = tl.arange(0, BLOCK_D)[None, :]
        partial = sample * (tokens // ROWS_PER_SUM) + tile * (TILE_M // ROWS_PER_SUM) + parts
        tl.store(
            colsum_ptr + partial * 3 * heads * head_dim + head * head_dim + cols,
            sums,
            mask=cols < head_dim,
        )


def _launch(kernel, probe: torch.Tensor):
    if TRITON_INTERPRET:  # CPU tests
        return interpreter_kernel(kernel, probe, "attention_prepost")
    return kernel


def colsum_buffer(batch: int, tokens: int, heads: int, head_dim: int, device) -> torch.Tensor:
    """Uninitialised ``[B * N / 64, 3, H * d]`` float32: both kernels together fill all of it."""
    if tokens % ROWS_PER_PARTIAL:
        raise ValueError(f"attention_prepost: tokens ({tokens}) must be a multiple of {ROWS_PER_PARTIAL}")
    return torch.empty(
        batch * tokens // ROWS_PER_PARTIAL, 3, heads * head_dim, dtype=torch.float32, device=device
    )


def attention_bwd_preprocess(
    out: torch.Tensor,
    dout: torch.Tensor,
    lse: torch.Tensor,
    dpsum: torch.Tensor,
    lse_log2: torch.Tensor,
    dq_accum: torch.Tensor,
    tile_hdim: int,
    colsum: torch.Tensor,
) -> None:
    """Fill ``dpsum``, ``lse_log2`` (``[B, H, N]``, float32), zero ``dq_accum``'s first
    ``N * tile_hdim`` floats of each ``(b, h)`` row, and write colsum's key (zeros) and value
    (sum of ``do``) slots. ``out``/``dout``: ``[B, N, H, d]`` with a unit last stride."""
    batch, tokens, heads, head_dim = out.shape
    block_d = triton.next_power_of_2(max(head_dim, tile_hdim))
    grid = (tokens // ROWS_PER_PARTIAL, heads, batch)
    _launch(_preprocess_kernel, out)[grid](
        out,
        dout,
        lse,
        dpsum,
        lse_log2,
        dq_accum,
        colsum,
        tokens,
        heads,
        head_dim,
        out.stride(0),
        out.stride(1),
        out.stride(2),
        dout.stride(0),
        dout.stride(1),
        dout.stride(2),
        lse.stride(1),
        dpsum.stride(1),
        dq_accum.stride(1),
        _LOG2_E,
        TILE_HDIM=tile_hdim,
        BLOCK_M=ROWS_PER_PARTIAL,
        BLOCK_D=block_d,
        num_warps=4,
    )


def attention_bwd_postprocess(
    dq_accum: torch.Tensor, dq: torch.Tensor, scale: float, tile_m: int, tile_hdim: int, colsum: torch.Tensor
) -> None:
    """``dq = scale * dq_accum`` (unpermuted from the accumulator tiles of ``tile_m`` rows, 64 a
    warpgroup) into ``dq [B, N, H, d]`` (any strides but a unit last one), and colsum's query slot."""
    batch, tokens, heads, head_dim = dq.shape
    block_d = triton.next_power_of_2(max(head_dim, tile_hdim))
    grid = (tokens // tile_m, heads, batch)
    _launch(_postprocess_kernel, dq)[grid](
        dq_accum,
        dq,
        colsum,
        float(scale),
        tokens,
        heads,
        head_dim,
        dq.stride(0),
        dq.stride(1),
        dq.stride(2),
        dq_accum.stride(1),
        TILE_M=tile_m,
        TILE_HDIM=tile_hdim,
        BLOCK_D=block_d,
        ROWS_PER_SUM=ROWS_PER_PARTIAL,
        num_warps=4,
    )
