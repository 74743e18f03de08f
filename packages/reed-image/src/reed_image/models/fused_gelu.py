"""Fused bias add + tanh-GELU for SiT's MLP (Triton, hand-written backward with the bias gradient).

SiT's MLP is ``fc2(gelu_tanh(fc1(x)))``. Here ``fc1`` runs without its bias (``h = x W^T``) and the
bias add, the GELU and, in the backward, the bias gradient are one kernel each way. For ``h [..., F]``
(bfloat16 under autocast) and ``bias [F]`` (the float32 parameter), arithmetic in float32:

Forward (``bias_gelu``):

    pre = h + bias
    out = gelu_tanh(pre) = 0.5 pre (1 + tanh(k (pre + c pre^3)))     k = sqrt(2/pi), c = 0.044715
                         = pre * s,   s = sigmoid(2k (pre + c pre^3))        (cast to h's dtype)

Backward, from ``dout`` (``pre`` recomputed from the saved ``h`` and ``bias``; no second activation
is kept):

    dpre  = dout * (s + 2k pre s (1 - s) (1 + 3c pre^2))     (= dout * gelu_tanh'(pre); h's dtype)
    dh    = dpre,   dbias = sum over all leading dims of dpre (float32, before the cast)

The kernels use the sigmoid form (``1 + tanh(u) = 2 sigmoid(2u)``): the same function as PyTorch's
``F.gelu(approximate="tanh")`` up to float32 rounding, it needs only ``exp`` (which Triton's
interpreter has; ``libdevice.tanh`` it has not), and it does not lose ``1 + tanh`` to cancellation
for negative ``pre``.

Traffic: the forward reads ``h`` once and writes ``out`` once; the backward reads ``dout`` and ``h``
once and writes ``dh`` once. Each backward program owns a block of columns and a tile of rows, and
writes the float32 column sums of ``dpre`` over its rows; a small ``[tiles, F] -> [F]`` sum finishes
``dbias`` (deterministic; no atomics), instead of a separate reduction pass over ``dpre``. For SiT-XL/2
(rows = 64 x 256 = 16384, F = 4608, bfloat16) that is 302 MB forward and 453 MB backward, plus
about 1 MB of partial sums; unfused, inductor's GELU backward (453 MB) was followed by a 151 MB
reduction for the bias gradient (1.54 ms per step over 28 blocks on an H100).

Both directions are ``torch.library.triton_op`` custom ops (``reed_image::bias_gelu_fwd`` and
``reed_image::bias_gelu_bwd``) tied together with ``register_autograd``: ``torch.compile`` sees
through them to the Triton kernels, and autocast passes their inputs through untouched (the bias
stays float32). ``bias_gelu`` falls back to ``bias_gelu_reference`` (plain PyTorch) when the
tensors are not on CUDA or Triton is missing; with ``TRITON_INTERPRET=1`` set before Triton is
imported, the kernels also run on CPU tensors through Triton's interpreter (as the tests run them).
"""

import math

import torch
from torch.library import register_autograd, triton_op, wrap_triton

from reed_image.models._triton_util import (
    TRITON_INTERPRET,
    interpreter_kernel,
    multiprocessor_count,
    triton_path_available,
)

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - Triton ships with CUDA builds of PyTorch on Linux
    triton = None

__all__ = ["bias_gelu", "bias_gelu_reference", "triton_path_available"]

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_KAPPA = 0.044715
# backward programs (column blocks x row tiles) per SM: several, so the last wave's imbalance is
# small; the [tiles, F] float32 partial sums stay about 1% of the backward's traffic
_BWD_PROGRAMS_PER_SM = 4
_MAX_BLOCK_F = 512  # columns a program: F = 4608 (SiT-XL/2's MLP) is 9 blocks exactly


def bias_gelu_reference(h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The module docstring's forward in plain PyTorch, tanh form (autograd gives the backward).

    Computes in float32 (float64 if ``h`` or ``bias`` is float64); the result has ``h``'s dtype.
    """
    _check_shapes(h, bias)
    compute_dtype = torch.promote_types(torch.promote_types(h.dtype, bias.dtype), torch.float32)
    pre = h.to(compute_dtype) + bias.to(compute_dtype)
    inner = _SQRT_2_OVER_PI * (pre + _KAPPA * pre * pre * pre)
    return (0.5 * pre * (1.0 + torch.tanh(inner))).to(h.dtype)


def bias_gelu(h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``gelu_tanh(h + bias)`` in ``h``'s dtype, fused; differentiable in ``h`` and ``bias``.

    ``h [..., F]`` (e.g. ``F.linear(x, fc1.weight)``, bfloat16 under autocast; leading dims are
    flattened), ``bias [F]`` (float32 in training; its gradient is summed in float32 and returned in
    its dtype). Runs the Triton kernels where ``triton_path_available(h)``, else the reference.
    """
    _check_shapes(h, bias)
    if not triton_path_available(h):
        return bias_gelu_reference(h, bias)
    return torch.ops.reed_image.bias_gelu_fwd(h, bias)


def _check_shapes(h: torch.Tensor, bias: torch.Tensor) -> None:
    if h.dim() < 1:
        raise ValueError("bias_gelu: h must have a last dimension of features [..., F], got a scalar")
    if bias.dim() != 1 or bias.shape[0] != h.shape[-1]:
        raise ValueError(
            f"bias_gelu: bias must be [F] = [{h.shape[-1]}] (h's last dimension), got {tuple(bias.shape)}"
        )


def _fwd_config(dim: int) -> tuple[int, int, int]:
    """``(BLOCK_F, rows a program, num_warps)``: tiles of 4096 elements, 32 a thread (4 warps).

    F = 4608: 8 rows x 512 columns (9 column blocks, 18432 programs for 16384 rows), 1 KB contiguous
    per row of bfloat16 and four 16-byte vectors a thread; narrow F packs more rows. Not yet tuned on
    a GPU.
    """
    block_f = min(_MAX_BLOCK_F, triton.next_power_of_2(max(dim, 1)))
    rows = max(1, min(64, 4096 // block_f))
    return block_f, rows, 4


def _bwd_config(dim: int) -> tuple[int, int, int, int]:
    """``(BLOCK_F, rows a loop step, num_warps, num_stages)`` of the backward's row loop.

    F = 4608: steps of 8 rows x 512 columns, 8 warps (16 elements a thread, with a float32
    accumulator of the same shape), 3 pipeline stages as in ``fused_adaln``'s backward (there the
    pipelining was worth 1.5x). Not yet tuned on a GPU.
    """
    block_f = min(_MAX_BLOCK_F, triton.next_power_of_2(max(dim, 1)))
    rows = max(1, min(64, 4096 // block_f))
    return block_f, rows, 8, 3


if triton is not None:

    @triton.jit
    def _gelu_sigmoid(pre):
        """``s`` with ``gelu_tanh(pre) = pre * s``: ``sigmoid(2k (pre + c pre^3))``."""
        two_inner = 1.5957691216057308 * (pre + 0.044715 * pre * pre * pre)  # 2 sqrt(2/pi) (...)
        return 1.0 / (1.0 + tl.exp(-two_inner))

    @triton.jit
    def _bias_gelu_fwd_kernel(
        h_ptr,
        bias_ptr,
        out_ptr,
        num_rows,
        dim,
        num_col_blocks,
        ROWS: tl.constexpr,
        BLOCK_F: tl.constexpr,
    ):
        # column blocks vary fastest: consecutive programs sweep consecutive memory
        pid = tl.program_id(0)
        row_block = pid // num_col_blocks
        col_block = pid % num_col_blocks
        rows = row_block * ROWS + tl.arange(0, ROWS)
        cols = col_block * BLOCK_F + tl.arange(0, BLOCK_F)
        col_mask = cols < dim
        mask = (rows < num_rows)[:, None] & col_mask[None, :]
        offsets = rows.to(tl.int64)[:, None] * dim + cols[None, :]

        bias = tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
        pre = tl.load(h_ptr + offsets, mask=mask, other=0.0).to(tl.float32) + bias[None, :]
        out = pre * _gelu_sigmoid(pre)
        tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _bias_gelu_bwd_kernel(
        dout_ptr,
        h_ptr,
        bias_ptr,
        dh_ptr,
        dbias_partial_ptr,
        num_rows,
        dim,
        num_col_blocks,
        ROWS_PER_PROGRAM: tl.constexpr,
        NUM_STAGES: tl.constexpr,
        ROWS: tl.constexpr,
        BLOCK_F: tl.constexpr,
    ):
        # program (tile, column block): rows [tile * ROWS_PER_PROGRAM, (tile + 1) * ROWS_PER_PROGRAM)
        pid = tl.program_id(0)
        tile = pid // num_col_blocks
        col_block = pid % num_col_blocks
        cols = col_block * BLOCK_F + tl.arange(0, BLOCK_F)
        col_mask = cols < dim
        bias = tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
        # elementwise float32 sums; reduced over the rows once, after the loop
        dbias_acc = tl.zeros([ROWS, BLOCK_F], dtype=tl.float32)

        first_row = tile * ROWS_PER_PROGRAM
        # the pipeliner prefetches later rows while this step computes
        for start in tl.range(0, ROWS_PER_PROGRAM, ROWS, num_stages=NUM_STAGES):
            rows = first_row + start + tl.arange(0, ROWS)
            mask = (rows < num_rows)[:, None] & col_mask[None, :]
            offsets = rows.to(tl.int64)[:, None] * dim + cols[None, :]
            # masked lanes: dout = 0, so dpre = 0 there
            dout = tl.load(dout_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            pre = tl.load(h_ptr + offsets, mask=mask, other=0.0).to(tl.float32) + bias[None, :]
            s = _gelu_sigmoid(pre)
            slope = 1.5957691216057308 * (1.0 + 0.134145 * pre * pre)  # d(2k (pre + c pre^3))/dpre
            dpre = dout * (s + pre * s * (1.0 - s) * slope)
            tl.store(dh_ptr + offsets, dpre.to(dh_ptr.dtype.element_ty), mask=mask)
            dbias_acc += dpre

        tl.store(dbias_partial_ptr + tile * dim + cols, tl.sum(dbias_acc, axis=0), mask=col_mask)


def _flat_rows(t: torch.Tensor) -> torch.Tensor:
    """``[..., F] -> [rows, F]``, contiguous (a 1-D ``[F]`` is one row)."""
    return t.contiguous().view(math.prod(t.shape[:-1]), t.shape[-1])


@triton_op("reed_image::bias_gelu_fwd", mutates_args=())
def _bias_gelu_fwd(h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``gelu_tanh(h + bias)`` in ``h``'s dtype and shape."""
    dim = h.shape[-1]
    h_rows = _flat_rows(h)
    out = torch.empty(h.shape, dtype=h.dtype, device=h.device)  # contiguous: rows of F
    num_rows = h_rows.shape[0]
    if num_rows > 0 and dim > 0:
        block_f, rows, num_warps = _fwd_config(dim)
        if TRITON_INTERPRET:  # wrap_triton refuses the interpreter's kernels
            kernel = interpreter_kernel(_bias_gelu_fwd_kernel, h_rows, "bias_gelu")
        else:
            kernel = wrap_triton(_bias_gelu_fwd_kernel)
        num_col_blocks = triton.cdiv(dim, block_f)
        kernel[(triton.cdiv(num_rows, rows) * num_col_blocks,)](
            h_rows,
            bias.contiguous(),
            out,
            num_rows,
            dim,
            num_col_blocks,
            ROWS=rows,
            BLOCK_F=block_f,
            num_warps=num_warps,
        )
    return out


@triton_op("reed_image::bias_gelu_bwd", mutates_args=())
def _bias_gelu_bwd(
    dout: torch.Tensor, h: torch.Tensor, bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dh, dbias)``: ``dh`` in ``h``'s dtype and shape, ``dbias`` float32 ``[F]``."""
    dim = h.shape[-1]
    h_rows, dout_rows = _flat_rows(h), _flat_rows(dout)
    num_rows = h_rows.shape[0]
    block_f, rows, num_warps, num_stages = _bwd_config(dim)
    num_col_blocks = triton.cdiv(dim, block_f)

    # row tiles: about _BWD_PROGRAMS_PER_SM programs per SM in all, each tile a power of two of rows
    # (a constexpr: few kernel variants) and a multiple of the rows of one loop step
    target_programs = _BWD_PROGRAMS_PER_SM * multiprocessor_count(h.device)
    rows_per_program = rows
    while (
        rows_per_program < num_rows
        and num_col_blocks * triton.cdiv(num_rows, 2 * rows_per_program) >= target_programs
    ):
        rows_per_program *= 2
    tiles = max(1, triton.cdiv(num_rows, rows_per_program))

    dh = torch.empty(h.shape, dtype=h.dtype, device=h.device)  # contiguous: rows of F
    dbias_partial = h_rows.new_empty((tiles, dim), dtype=torch.float32)
    if num_rows > 0 and dim > 0:
        if TRITON_INTERPRET:  # wrap_triton refuses the interpreter's kernels
            kernel = interpreter_kernel(_bias_gelu_bwd_kernel, h_rows, "bias_gelu")
        else:
            kernel = wrap_triton(_bias_gelu_bwd_kernel)
        kernel[(tiles * num_col_blocks,)](
            dout_rows,
            h_rows,
            bias.contiguous(),
            dh,
            dbias_partial,
            num_rows,
            dim,
            num_col_blocks,
            ROWS_PER_PROGRAM=rows_per_program,
            NUM_STAGES=num_stages,
            ROWS=rows,
            BLOCK_F=block_f,
            num_warps=num_warps,
        )
    else:
        dbias_partial.zero_()
    return dh, dbias_partial.sum(dim=0)


def _setup_context(ctx, inputs, output) -> None:
    h, bias = inputs
    ctx.save_for_backward(h, bias)  # pre is recomputed in the backward


def _backward(ctx, dout):
    h, bias = ctx.saved_tensors
    needs_dh, needs_dbias = ctx.needs_input_grad
    dh, dbias = torch.ops.reed_image.bias_gelu_bwd(dout, h, bias)
    return (dh if needs_dh else None, dbias.to(bias.dtype) if needs_dbias else None)


register_autograd("reed_image::bias_gelu_fwd", _backward, setup_context=_setup_context)
