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
zeros); ``colsum.sum(0)`` is the bias gradient (``colsum_total``: one more small kernel of 108
programs, 32 columns each, where PyTorch's column reduction ran 27 blocks for 12 us at SiT-XL/2).
That replaces autograd's separate reduction of the whole ``dqkv`` (113 MB a block at SiT-XL/2,
batch 64).

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

from reed_kernels._triton_util import TRITON_INTERPRET, column_sum, interpreter_kernel

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - Triton ships with CUDA builds of PyTorch on Linux
    triton = None

__all__ = [
    "ROWS_PER_PARTIAL",
    "attention_bwd_postprocess",
    "attention_bwd_preprocess",
    "colsum_buffer",
    "colsum_total",
]

# tokens per row of the colsum partial sums (and per preprocess program)
ROWS_PER_PARTIAL = 64
# warps per program of the two kernels, and the postprocess's columns per step (in groups of 8):
# the defaults of their arguments. SiT-XL/2, batch 64, on an H100 (GPU time a call): the
# preprocess 62 us with 4 warps (72 with 8; FlashAttention-4's own 64 us); the postprocess 59 us
# with 2 warps and the whole tile width at once (71 with 4 warps, 78-141 us in steps of 8-32
# columns; FlashAttention-4's own 60 us; benchmarks/bench_attention_prepost.py)
PRE_NUM_WARPS = 4
POST_NUM_WARPS = 2
POST_COL_GROUPS = 16
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
        heads,
        out_stride_b,
        out_stride_n,
        dout_stride_b,
        dout_stride_n,
        lse_stride_bh,
        dpsum_stride_bh,
        accum_stride_bh,
        log2_e,
        HEAD_DIM: tl.constexpr,
        TILE_HDIM: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_D: tl.constexpr,
        ZERO_BLOCK: tl.constexpr,
    ):
        # program (m, h, b): tokens [m * BLOCK_M, (m + 1) * BLOCK_M) of sample b, head h; the head
        # dim is a constexpr (and heads are HEAD_DIM apart) so that loads and stores are vectorised
        m_block = tl.program_id(0)
        head = tl.program_id(1)
        sample = tl.program_id(2).to(tl.int64)
        rows = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_D)
        mask = (cols < HEAD_DIM)[None, :]

        out = tl.load(
            out_ptr + sample * out_stride_b + rows[:, None] * out_stride_n + head * HEAD_DIM + cols[None, :],
            mask=mask,
            other=0.0,
        ).to(tl.float32)
        dout_row = dout_ptr + sample * dout_stride_b + rows[:, None] * dout_stride_n
        dout = tl.load(
            dout_row + head * HEAD_DIM + cols[None, :],
            mask=mask,
            other=0.0,
        ).to(tl.float32)
        bh = sample * heads + head
        tl.store(dpsum_ptr + bh * dpsum_stride_bh + rows, tl.sum(out * dout, axis=1))
        lse = tl.load(lse_ptr + bh * lse_stride_bh + rows)
        lse_log2 = tl.where(lse == float("-inf"), 0.0, lse * log2_e)
        tl.store(lse_log2_ptr + bh * dpsum_stride_bh + rows, lse_log2)

        # these rows' share of the accumulator (tile-ordered inside, contiguous as a whole)
        flat = tl.arange(0, ZERO_BLOCK)
        tl.store(
            dq_accum_ptr + bh * accum_stride_bh + m_block * (BLOCK_M * TILE_HDIM) + flat,
            tl.zeros([ZERO_BLOCK], dtype=tl.float32),
            mask=flat < BLOCK_M * TILE_HDIM,
        )

        # colsum[(b, m), slot, h, :]: slot 1 (keys) zeros, slot 2 (values) sum of do over the rows
        width = heads * HEAD_DIM
        partial = (sample * tl.num_programs(0) + m_block) * 3 * width + head * HEAD_DIM + cols
        col_mask = cols < HEAD_DIM
        tl.store(colsum_ptr + partial + width, tl.zeros([BLOCK_D], dtype=tl.float32), mask=col_mask)
        tl.store(colsum_ptr + partial + 2 * width, tl.sum(dout, axis=0), mask=col_mask)

    @triton.jit
    def _postprocess_kernel(
        dq_accum_ptr,
        dq_ptr,
        colsum_ptr,
        scale,
        heads,
        dq_stride_b,
        dq_stride_n,
        accum_stride_bh,
        HEAD_DIM: tl.constexpr,
        TILE_M: tl.constexpr,
        TILE_HDIM: tl.constexpr,
        COL_GROUPS: tl.constexpr,
    ):
        # program (t, h, b): the main kernel's accumulator tile t of sample b, head h, one
        # warpgroup's 64 rows at a time and COL_GROUPS groups of 8 columns (j) at a time: a
        # contiguous load in storage order (j, w, l_r, l_c, i_r, i_c), permuted to rows
        # (w, i_r, l_r) x columns (j, l_c, i_c) (module docstring)
        tile = tl.program_id(0)
        head = tl.program_id(1)
        sample = tl.program_id(2).to(tl.int64)
        j = tl.arange(0, COL_GROUPS)[:, None, None, None, None, None]
        warp = tl.arange(0, 4)[None, :, None, None, None, None]
        lane_row = tl.arange(0, 8)[None, None, :, None, None, None]
        lane_col = tl.arange(0, 4)[None, None, None, :, None, None]
        value_row = tl.arange(0, 2)[None, None, None, None, :, None]
        value_col = tl.arange(0, 2)[None, None, None, None, None, :]
        offsets = j * 512 + warp * 128 + lane_row * 16 + lane_col * 4 + value_row * 2 + value_col
        bh = sample * heads + head
        num_partials = tl.num_programs(0) * (TILE_M // 64)
        for chunk in tl.static_range(TILE_M // 64):
            first_row = tile * TILE_M + chunk * 64
            rows = first_row + tl.arange(0, 64)
            dq_rows = dq_ptr + sample * dq_stride_b + rows[:, None] * dq_stride_n + head * HEAD_DIM
            partial = sample * num_partials + tile * (TILE_M // 64) + chunk
            colsum_row = colsum_ptr + partial * 3 * heads * HEAD_DIM + head * HEAD_DIM
            for first_group in tl.static_range(0, TILE_HDIM // 8, COL_GROUPS):
                accum = tl.load(
                    dq_accum_ptr + bh * accum_stride_bh + first_row * TILE_HDIM + first_group * 512 + offsets,
                    mask=first_group + j < TILE_HDIM // 8,
                    other=0.0,
                )
                dq = scale * tl.reshape(tl.permute(accum, (1, 4, 2, 0, 3, 5)), (64, COL_GROUPS * 8))
                cols = first_group * 8 + tl.arange(0, COL_GROUPS * 8)
                col_mask = cols < HEAD_DIM
                tl.store(dq_rows + cols[None, :], dq.to(dq_ptr.dtype.element_ty), mask=col_mask[None, :])
                # colsum[(b, m), 0, h, :]: sum of dq over these 64 tokens
                tl.store(colsum_row + cols, tl.sum(dq, axis=0), mask=col_mask)


if triton is not None:

    @triton.jit
    def _colsum_total_kernel(
        colsum_ptr, total_ptr, width, ROWS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr
    ):
        """``total[c] = sum_r colsum[r, c]`` for ``colsum [ROWS, width]``, ``BLOCK_C`` columns a program."""
        cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
        col_mask = cols < width
        acc = column_sum(colsum_ptr, cols, col_mask, width, ROWS, BLOCK_R, BLOCK_C)
        tl.store(total_ptr + cols, acc, mask=col_mask)


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


def _check_layout(name: str, tensor: torch.Tensor) -> None:
    """``[B, N, H, d]`` with heads ``d`` apart and a unit last stride (the kernels' index arithmetic)."""
    if tensor.stride(-1) != 1 or tensor.stride(2) != tensor.shape[3]:
        raise ValueError(f"attention_prepost: {name} must have strides (.., .., d, 1), got {tensor.stride()}")


def attention_bwd_preprocess(
    out: torch.Tensor,
    dout: torch.Tensor,
    lse: torch.Tensor,
    dpsum: torch.Tensor,
    lse_log2: torch.Tensor,
    dq_accum: torch.Tensor,
    tile_hdim: int,
    colsum: torch.Tensor,
    num_warps: int = PRE_NUM_WARPS,
) -> None:
    """Fill ``dpsum``, ``lse_log2`` (``[B, H, N]``, float32), zero ``dq_accum``'s first
    ``N * tile_hdim`` floats of each ``(b, h)`` row, and write colsum's key (zeros) and value
    (sum of ``do``) slots. ``out``/``dout``: ``[B, N, H, d]``, ``N`` a multiple of 64."""
    batch, tokens, heads, head_dim = out.shape
    _check_layout("out", out)
    _check_layout("dout", dout)
    grid = (tokens // ROWS_PER_PARTIAL, heads, batch)
    _launch(_preprocess_kernel, out)[grid](
        out,
        dout,
        lse,
        dpsum,
        lse_log2,
        dq_accum,
        colsum,
        heads,
        out.stride(0),
        out.stride(1),
        dout.stride(0),
        dout.stride(1),
        lse.stride(1),
        dpsum.stride(1),
        dq_accum.stride(1),
        _LOG2_E,
        HEAD_DIM=head_dim,
        TILE_HDIM=tile_hdim,
        BLOCK_M=ROWS_PER_PARTIAL,
        BLOCK_D=triton.next_power_of_2(head_dim),
        ZERO_BLOCK=triton.next_power_of_2(ROWS_PER_PARTIAL * tile_hdim),
        num_warps=num_warps,
    )


def attention_bwd_postprocess(
    dq_accum: torch.Tensor,
    dq: torch.Tensor,
    scale: float,
    tile_m: int,
    tile_hdim: int,
    colsum: torch.Tensor,
    col_groups: int = POST_COL_GROUPS,
    num_warps: int = POST_NUM_WARPS,
) -> None:
    """``dq = scale * dq_accum`` (unpermuted from the accumulator tiles of ``tile_m`` rows, 64 a
    warpgroup) into ``dq [B, N, H, d]`` (heads ``d`` apart, e.g. a slot of ``dqkv``), and colsum's
    query slot; ``col_groups`` groups of 8 columns a step, ``num_warps`` warps a program."""
    batch, tokens, heads, head_dim = dq.shape
    _check_layout("dq", dq)
    grid = (tokens // tile_m, heads, batch)
    _launch(_postprocess_kernel, dq)[grid](
        dq_accum,
        dq,
        colsum,
        float(scale),
        heads,
        dq.stride(0),
        dq.stride(1),
        dq_accum.stride(1),
        HEAD_DIM=head_dim,
        TILE_M=tile_m,
        TILE_HDIM=tile_hdim,
        COL_GROUPS=min(col_groups, triton.next_power_of_2(tile_hdim // 8)),
        num_warps=num_warps,
    )


def colsum_total(colsum: torch.Tensor) -> torch.Tensor:
    """``colsum.sum(0).flatten()`` (float32 ``[3 * H * d]``: the qkv bias gradient) in one kernel."""
    rows = colsum.shape[0]
    flat = colsum.reshape(rows, -1)
    total = torch.empty(flat.shape[1], dtype=torch.float32, device=colsum.device)
    block_c = 32
    _launch(_colsum_total_kernel, colsum)[(triton.cdiv(flat.shape[1], block_c),)](
        flat, total, flat.shape[1], ROWS=rows, BLOCK_R=64, BLOCK_C=block_c, num_warps=4
    )
    return total
