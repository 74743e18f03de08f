"""Fused adaLN-Zero residual add + LayerNorm + modulate for SiT blocks (Triton, hand-written backward).

A SiT block runs, twice, ``x = x + gate * Branch(modulate(LN(x), shift, scale))``. The residual
add of one branch and the LayerNorm + modulate that feeds the next are one row-wise chain, fused
here into one kernel each way. For ``x [B, N, D]`` and per-sample ``gate, shift, scale [B, D]``:

Forward (``add_norm_modulate``; arithmetic in float32):

    x_out = x + gate[:, None, :] * (branch + bias)   (branch None: x_out = x; bias optional)
    mean  = mean_D(x_out)
    rstd  = 1 / sqrt(mean_D((x_out - mean)^2) + eps)
    xhat  = (x_out - mean) * rstd
    h     = xhat * (1 + scale[:, None, :]) + shift[:, None, :]      (cast to out_dtype)

Backward, from ``dx_out`` (gradient of ``x_out`` through later uses of the residual stream) and ``dh``:

    dxhat    = dh * (1 + scale)
    dx_total = dx_out + rstd * (dxhat - mean_D(dxhat) - xhat * mean_D(dxhat * xhat))
    dx = dx_total,   dbranch = gate * dx_total,   dgate = sum_N((branch + bias) * dx_total)
    dshift = sum_N(dh),   dscale = sum_N(dh * xhat),   dbias = sum_{B,N}(dbranch)

The bias is the branch's last Linear's (SiT: the attention's ``proj``, the MLP's ``fc2``), moved
here from that GEMM: its gradient then comes from the pass that already writes ``dbranch``, in
place of one more read of ``dbranch`` (a separate column-sum kernel, or cuBLASLt's BGRADB, 13-50 us
a call at SiT-XL/2 shapes on an H100).

Traffic: the forward reads ``x`` and ``branch`` once and writes ``x_out`` and ``h`` once (plus
``mean``/``rstd``, 8 bytes a token). The backward reads ``x_out``, ``dh``, ``dx_out`` and
``branch`` once and writes ``dx`` and ``dbranch`` once; each program takes a tile of tokens of
one sample and writes float32 partial sums of ``dgate``/``dshift``/``dscale`` for that tile, which a
small ``[B, tiles, D] -> [B, D]`` torch sum finishes (deterministic; no atomics; about 20 us a call
at SiT-XL/2 on an H100 with its launch gaps: one Triton kernel for all of them measured slower,
docs/results/image.md, eighth session).

For B = 64, N = 256, D = 1152 (float32 x, bfloat16 branch/gate/shift/scale/h/dh) that is 12 bytes
an element forward (226 MB) and 18 backward (340 MB, plus about 7 MB of partial sums). Kernel
times measured on one H100 (a plain copy: 3.0 TB/s): forward 78 us (2.9 TB/s), backward 122 us
(2.8 TB/s) plus 9-16 us for the partial sums and casts; inductor's kernels for the unfused chain
took 91 us forward and 192 us backward (three reduction kernels).

Both directions are ``torch.library.triton_op`` custom ops (``reed_kernels::add_norm_modulate_fwd``
and ``reed_kernels::add_norm_modulate_bwd``) tied together with ``register_autograd``:
``torch.compile`` sees through them to the Triton kernels, and autocast passes their inputs
through untouched. ``add_norm_modulate`` falls back to ``add_norm_modulate_reference`` (plain
PyTorch, the test oracle) when the tensors are not on CUDA or Triton is missing; with
``TRITON_INTERPRET=1`` set before Triton is imported, the kernels also run on CPU tensors through
Triton's interpreter (that is how the tests exercise them without a GPU). Both ops take an
optional launch ``config`` (``benchmarks/bench_adaln.py`` times others); None is the measured default.
"""

import torch
from torch.library import register_autograd, triton_op, wrap_triton

from reed_kernels._triton_util import (
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

__all__ = ["add_norm_modulate", "add_norm_modulate_reference", "triton_path_available"]

# float32 partial sums of the backward: aim for this many programs per SM (B * tiles in all)
BWD_PROGRAMS_PER_SM = 2


def add_norm_modulate_reference(
    x: torch.Tensor,
    branch: torch.Tensor | None,
    gate: torch.Tensor | None,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float = 1e-6,
    out_dtype: torch.dtype | None = None,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The module docstring's forward in plain PyTorch (autograd gives the backward).

    Computes in float32 (float64 if ``x`` is float64); ``x_out`` keeps ``x``'s dtype and ``h`` is
    cast to ``out_dtype`` (default: ``branch``'s dtype, else ``x``'s). ``gate`` None with a
    ``branch`` adds the branch ungated.
    """
    _check_shapes(x, branch, gate, shift, scale, bias)
    out_dtype = out_dtype or (branch.dtype if branch is not None else x.dtype)
    compute_dtype = torch.promote_types(x.dtype, torch.float32)
    x_out = x
    if branch is not None:
        update = branch.to(compute_dtype)
        if bias is not None:
            update = update + bias.to(compute_dtype)
        if gate is not None:
            update = gate.to(compute_dtype)[:, None, :] * update
        x_out = (x.to(compute_dtype) + update).to(x.dtype)
    residual = x_out.to(compute_dtype)
    mean = residual.mean(dim=-1, keepdim=True)
    centered = residual - mean
    rstd = torch.rsqrt((centered * centered).mean(dim=-1, keepdim=True) + eps)
    xhat = centered * rstd
    h = xhat * (1 + scale.to(compute_dtype)[:, None, :]) + shift.to(compute_dtype)[:, None, :]
    return x_out, h.to(out_dtype)


def add_norm_modulate(
    x: torch.Tensor,
    branch: torch.Tensor | None,
    gate: torch.Tensor | None,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float = 1e-6,
    out_dtype: torch.dtype | None = None,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_out, h)`` of the module docstring, fused; differentiable in all six tensors.

    ``x [B, N, D]`` (the residual stream, float32 in training), ``branch [B, N, D]`` or None,
    ``gate``/``shift``/``scale [B, D]`` (rows may be strided, e.g. chunks of one adaLN output).
    With a branch, ``x`` may be ``[1, N, D]``, added to every sample (SiT's first call: the
    positional embedding, with the patch embedding as the ungated branch); ``x_out`` is then
    ``[B, N, D]``. With ``branch`` None, ``x_out`` is ``x`` itself. ``h`` comes out in ``out_dtype`` (default:
    ``branch``'s dtype, else ``x``'s; pass the autocast dtype when ``h`` feeds a Linear).
    ``bias [D]`` (or None) is added to ``branch`` before the gate; it needs a branch.
    Runs the Triton kernels where ``triton_path_available(x)``, else the reference.
    """
    _check_shapes(x, branch, gate, shift, scale, bias)
    out_dtype = out_dtype or (branch.dtype if branch is not None else x.dtype)
    if not triton_path_available(x):
        return add_norm_modulate_reference(x, branch, gate, shift, scale, eps, out_dtype, bias)
    x_out, h, _, _ = torch.ops.reed_kernels.add_norm_modulate_fwd(
        x, branch, gate, shift, scale, float(eps), out_dtype, bias
    )
    return (x if branch is None else x_out), h


def _check_shapes(
    x: torch.Tensor,
    branch: torch.Tensor | None,
    gate: torch.Tensor | None,
    shift: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> None:
    if x.dim() != 3:
        raise ValueError(f"add_norm_modulate: x must be [B, N, D], got {tuple(x.shape)}")
    batch, _, dim = x.shape if branch is None else branch.shape
    if branch is not None and (
        branch.dim() != 3 or x.shape[1:] != branch.shape[1:] or x.shape[0] not in (1, batch)
    ):
        raise ValueError(
            f"add_norm_modulate: branch {tuple(branch.shape)} and x {tuple(x.shape)}: x must be [B, N, D] "
            "as the branch, or [1, N, D] (one residual for every sample)"
        )
    if gate is not None and branch is None:
        raise ValueError("add_norm_modulate: a gate needs a branch")
    if bias is not None and (branch is None or tuple(bias.shape) != (dim,)):
        raise ValueError(
            f"add_norm_modulate: bias must be [D] = [{dim}] with a branch, got "
            f"{tuple(bias.shape)} with branch {'None' if branch is None else 'given'}"
        )
    for name, vec in (("gate", gate), ("shift", shift), ("scale", scale)):
        if vec is not None and tuple(vec.shape) != (batch, dim):
            raise ValueError(
                f"add_norm_modulate: {name} must be [B, D] = {(batch, dim)}, got {tuple(vec.shape)}"
            )


def _row_vector(vec: torch.Tensor) -> torch.Tensor:
    """``[B, D]`` with unit stride along D (chunks of a ``[B, 6D]`` adaLN output already are)."""
    return vec if vec.stride(-1) == 1 else vec.contiguous()


def _fwd_config(dim: int, itemsize: int) -> tuple[int, int, int]:
    """``(BLOCK_D, rows per program, num_warps)``: whole padded rows of D in registers.

    D = 1152 pads to 2048 lanes. A float32 residual stream (``itemsize`` 4): one row per program,
    4 warps (16 float32 a thread); on an H100 that ran at 2.8 TB/s of the 3.0 a plain copy
    reaches (8 and 16 warps, or 2 and 4 rows, were slower). A bfloat16 one (``itemsize`` 2, SiT's
    ``residual_dtype="autocast"``): 4 rows, 8 warps, 59 us against 63.5 for the float32 choice
    (benchmarks/bench_adaln.py, H100; 1-8 warps and 1-4 rows spanned 59-72 us). Narrow rows are packed
    a few per program so a program still holds about as many elements.
    """
    block_d = triton.next_power_of_2(dim)
    elements = 8192 if itemsize <= 2 else 2048
    rows = max(1, min(16, elements // block_d))
    if itemsize <= 2 and block_d <= 8192:
        return block_d, rows, 8
    num_warps = 4 if block_d * rows <= 2048 else (8 if block_d <= 8192 else 16)
    return block_d, rows, num_warps


def _bwd_config(dim: int, itemsize: int) -> tuple[int, int, int, int]:
    """``(BLOCK_D, rows per loop step, num_warps, num_stages)`` of the backward's token loop.

    D = 1152, float32 residual stream: one row a step, 8 warps, 3 pipeline stages: 2.8 TB/s on an
    H100 (without the pipelining 1.8 TB/s); 4 or 16 warps and 2 or 4 rows a step were within a
    few percent. bfloat16 residual stream: one row, 4 warps, 4 stages, 113 us against 119 for the
    float32 choice (benchmarks/bench_adaln.py, H100; the 24 configurations timed spanned 113-121 us).
    """
    block_d = triton.next_power_of_2(dim)
    rows = max(1, min(16, 2048 // block_d))
    if itemsize <= 2 and block_d <= 8192:
        return block_d, rows, 4, 4
    num_warps = 8 if block_d <= 8192 else 16
    return block_d, rows, num_warps, 3


if triton is not None:

    @triton.jit
    def _add_norm_modulate_fwd_kernel(
        x_ptr,
        branch_ptr,
        gate_ptr,
        shift_ptr,
        scale_ptr,
        bias_ptr,
        x_out_ptr,
        h_ptr,
        mean_ptr,
        rstd_ptr,
        num_rows,
        tokens_per_sample,
        dim,
        gate_row_stride,
        shift_row_stride,
        scale_row_stride,
        eps,
        HAS_BRANCH: tl.constexpr,
        HAS_GATE: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        X_BROADCAST: tl.constexpr,
        ROWS: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        row_mask = rows < num_rows
        cols = tl.arange(0, BLOCK_D)
        col_mask = cols < dim
        mask = row_mask[:, None] & col_mask[None, :]
        sample = (rows // tokens_per_sample).to(tl.int64)
        offsets = rows.to(tl.int64)[:, None] * dim + cols[None, :]

        if X_BROADCAST:  # x [1, N, D]: the token's row, the same for every sample
            x_offsets = (rows % tokens_per_sample).to(tl.int64)[:, None] * dim + cols[None, :]
        else:
            x_offsets = offsets
        residual = tl.load(x_ptr + x_offsets, mask=mask, other=0.0).to(tl.float32)
        if HAS_BRANCH:
            update = tl.load(branch_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            if HAS_BIAS:
                update += tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
            if HAS_GATE:
                gate = tl.load(
                    gate_ptr + sample[:, None] * gate_row_stride + cols[None, :], mask=mask, other=0.0
                )
                update = gate.to(tl.float32) * update
            residual = (residual + update).to(x_out_ptr.dtype.element_ty)
            tl.store(x_out_ptr + offsets, residual, mask=mask)
            residual = residual.to(tl.float32)

        mean = tl.sum(residual, axis=1) / dim
        centered = tl.where(mask, residual - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(centered * centered, axis=1) / dim + eps)
        shift = tl.load(shift_ptr + sample[:, None] * shift_row_stride + cols[None, :], mask=mask, other=0.0)
        scale = tl.load(scale_ptr + sample[:, None] * scale_row_stride + cols[None, :], mask=mask, other=0.0)
        h = centered * rstd[:, None] * (1.0 + scale.to(tl.float32)) + shift.to(tl.float32)
        tl.store(h_ptr + offsets, h.to(h_ptr.dtype.element_ty), mask=mask)
        tl.store(mean_ptr + rows, mean, mask=row_mask)
        tl.store(rstd_ptr + rows, rstd, mask=row_mask)

    @triton.jit
    def _add_norm_modulate_bwd_kernel(
        dx_out_ptr,
        dh_ptr,
        x_out_ptr,
        mean_ptr,
        rstd_ptr,
        branch_ptr,
        gate_ptr,
        scale_ptr,
        bias_ptr,
        dx_ptr,
        dbranch_ptr,
        dgate_partial_ptr,
        dshift_partial_ptr,
        dscale_partial_ptr,
        dbias_partial_ptr,
        tokens_per_sample,
        dim,
        gate_row_stride,
        scale_row_stride,
        TOKENS_PER_PROGRAM: tl.constexpr,
        NUM_STAGES: tl.constexpr,
        HAS_DX_OUT: tl.constexpr,
        HAS_GATE: tl.constexpr,
        NEED_DX: tl.constexpr,
        NEED_DBRANCH: tl.constexpr,
        NEED_DGATE: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        NEED_DBIAS: tl.constexpr,
        ROWS: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        # program (b, t): tokens [t * TOKENS_PER_PROGRAM, (t + 1) * TOKENS_PER_PROGRAM) of sample b
        sample = tl.program_id(0).to(tl.int64)
        tile = tl.program_id(1)
        num_tiles = tl.num_programs(1)
        cols = tl.arange(0, BLOCK_D)
        col_mask = cols < dim

        one_plus_scale = 1.0 + tl.load(
            scale_ptr + sample * scale_row_stride + cols, mask=col_mask, other=0.0
        ).to(tl.float32)
        if HAS_GATE:
            gate = tl.load(gate_ptr + sample * gate_row_stride + cols, mask=col_mask, other=0.0).to(
                tl.float32
            )
        if HAS_BIAS:
            bias = tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
        dgate_sum = tl.zeros([BLOCK_D], dtype=tl.float32)
        dbias_sum = tl.zeros([BLOCK_D], dtype=tl.float32)
        dshift_sum = tl.zeros([BLOCK_D], dtype=tl.float32)
        dscale_sum = tl.zeros([BLOCK_D], dtype=tl.float32)

        first_token = tile * TOKENS_PER_PROGRAM
        # the pipeliner prefetches later tokens' rows while this one is reduced (about 1.5x faster)
        for start in tl.range(0, TOKENS_PER_PROGRAM, ROWS, num_stages=NUM_STAGES):
            tokens = first_token + start + tl.arange(0, ROWS)
            row_mask = tokens < tokens_per_sample
            rows = sample * tokens_per_sample + tokens
            mask = row_mask[:, None] & col_mask[None, :]
            offsets = rows[:, None] * dim + cols[None, :]

            mean = tl.load(mean_ptr + rows, mask=row_mask, other=0.0)
            rstd = tl.load(rstd_ptr + rows, mask=row_mask, other=0.0)
            residual = tl.load(x_out_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            xhat = tl.where(mask, (residual - mean[:, None]) * rstd[:, None], 0.0)
            dh = tl.load(dh_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            dxhat = dh * one_plus_scale[None, :]
            mean_dxhat = tl.sum(dxhat, axis=1) / dim
            mean_dxhat_xhat = tl.sum(dxhat * xhat, axis=1) / dim
            dx_total = rstd[:, None] * (dxhat - mean_dxhat[:, None] - xhat * mean_dxhat_xhat[:, None])
            if HAS_DX_OUT:
                dx_total += tl.load(dx_out_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            if NEED_DX:
                tl.store(dx_ptr + offsets, dx_total.to(dx_ptr.dtype.element_ty), mask=mask)
            dbranch = dx_total
            if HAS_GATE:
                dbranch = gate[None, :] * dx_total
            if NEED_DBRANCH:
                tl.store(dbranch_ptr + offsets, dbranch.to(dbranch_ptr.dtype.element_ty), mask=mask)
            if NEED_DBIAS:
                dbias_sum += tl.sum(tl.where(mask, dbranch, 0.0), axis=0)
            if NEED_DGATE:
                branch = tl.load(branch_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
                if HAS_BIAS:
                    branch = tl.where(mask, branch + bias[None, :], 0.0)
                dgate_sum += tl.sum(branch * dx_total, axis=0)
            dshift_sum += tl.sum(dh, axis=0)
            dscale_sum += tl.sum(dh * xhat, axis=0)

        partial_offsets = (sample * num_tiles + tile) * dim + cols
        if NEED_DGATE:
            tl.store(dgate_partial_ptr + partial_offsets, dgate_sum, mask=col_mask)
        if NEED_DBIAS:
            tl.store(dbias_partial_ptr + partial_offsets, dbias_sum, mask=col_mask)
        tl.store(dshift_partial_ptr + partial_offsets, dshift_sum, mask=col_mask)
        tl.store(dscale_partial_ptr + partial_offsets, dscale_sum, mask=col_mask)


@triton_op("reed_kernels::add_norm_modulate_fwd", mutates_args=())
def _add_norm_modulate_fwd(
    x: torch.Tensor,
    branch: torch.Tensor | None,
    gate: torch.Tensor | None,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float,
    out_dtype: torch.dtype,
    bias: torch.Tensor | None = None,
    config: list[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_out, h, mean, rstd)``; ``x_out`` is an empty tensor when ``branch`` is None (it is ``x``).

    ``mean``/``rstd`` are float32 ``[B, N]``, kept for the backward. ``config``: ``[rows per
    program, warps]`` in place of ``_fwd_config``'s (benchmarks).
    """
    has_branch = branch is not None
    batch, tokens, dim = branch.shape if has_branch else x.shape
    x_broadcast = x.shape[0] != batch
    x = x.contiguous()
    has_gate = gate is not None
    if has_branch:
        branch = branch.contiguous()
    if has_gate:
        gate = _row_vector(gate)
    has_bias = bias is not None
    if has_bias:
        bias = bias.contiguous()
    shift, scale = _row_vector(shift), _row_vector(scale)
    x_out = x.new_empty((batch, tokens, dim)) if has_branch else x.new_empty(0)
    h = torch.empty((batch, tokens, dim), dtype=out_dtype, device=x.device)
    mean = torch.empty((batch, tokens), dtype=torch.float32, device=x.device)
    rstd = torch.empty((batch, tokens), dtype=torch.float32, device=x.device)
    num_rows = batch * tokens
    if num_rows == 0:
        return x_out, h, mean, rstd
    block_d, rows, num_warps = _fwd_config(dim, x.element_size())
    if config is not None:
        rows, num_warps = config
    if TRITON_INTERPRET:  # wrap_triton refuses the interpreter's kernels
        kernel = interpreter_kernel(_add_norm_modulate_fwd_kernel, x, "add_norm_modulate")
    else:
        kernel = wrap_triton(_add_norm_modulate_fwd_kernel)
    kernel[(triton.cdiv(num_rows, rows),)](
        x,
        branch if has_branch else x,
        gate if has_gate else shift,
        shift,
        scale,
        bias if has_bias else shift,
        x_out if has_branch else h,
        h,
        mean,
        rstd,
        num_rows,
        tokens,
        dim,
        gate.stride(0) if has_gate else 0,
        shift.stride(0),
        scale.stride(0),
        eps,
        HAS_BRANCH=has_branch,
        HAS_GATE=has_gate,
        HAS_BIAS=has_bias,
        X_BROADCAST=x_broadcast,
        ROWS=rows,
        BLOCK_D=block_d,
        num_warps=num_warps,
    )
    return x_out, h, mean, rstd


@triton_op("reed_kernels::add_norm_modulate_bwd", mutates_args=())
def _add_norm_modulate_bwd(
    dx_out: torch.Tensor | None,
    dh: torch.Tensor,
    x_out: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    branch: torch.Tensor | None,
    gate: torch.Tensor | None,
    scale: torch.Tensor,
    need_dbranch: bool,
    dbranch_dtype: torch.dtype,
    bias: torch.Tensor | None = None,
    need_dbias: bool = False,
    need_dx: bool = True,
    config: list[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dx, dbranch, dgate, dshift, dscale, dbias)``; dgate/dshift/dscale float32 ``[B, D]``,
    dbias float32 ``[D]``. ``config``: ``[rows per loop step, warps, pipeline stages, programs per
    SM]`` in place of ``_bwd_config``'s and ``BWD_PROGRAMS_PER_SM`` (benchmarks).

    ``branch`` is passed only when ``dgate`` is wanted (else ``dgate`` is empty), and then
    ``bias`` too where the forward had one; ``dbranch`` is empty unless ``need_dbranch``, ``dbias``
    unless ``need_dbias``, ``dx`` unless ``need_dx``. ``dx_out`` None means no gradient reached
    ``x_out``.
    """
    batch, tokens, dim = x_out.shape
    x_out, dh = x_out.contiguous(), dh.contiguous()
    has_dx_out = dx_out is not None
    has_gate = gate is not None
    need_dgate = branch is not None and has_gate
    if has_dx_out:
        dx_out = dx_out.contiguous()
    if need_dgate:
        branch = branch.contiguous()
    if has_gate:
        gate = _row_vector(gate)
    scale = _row_vector(scale)
    has_bias = need_dgate and bias is not None
    if has_bias:
        bias = bias.contiguous()
    block_d, rows, num_warps, num_stages = _bwd_config(dim, x_out.element_size())
    programs_per_sm = BWD_PROGRAMS_PER_SM
    if config is not None:
        rows, num_warps, num_stages, programs_per_sm = config

    # token tiles: about programs_per_sm programs per SM in all, each tile a power of two of
    # tokens (a constexpr: few kernel variants) and a multiple of the rows done at once
    target_programs = programs_per_sm * multiprocessor_count(x_out.device)
    tokens_per_program = rows
    while (
        tokens_per_program < tokens and batch * triton.cdiv(tokens, 2 * tokens_per_program) >= target_programs
    ):
        tokens_per_program *= 2
    tiles = max(1, triton.cdiv(tokens, tokens_per_program))

    dx = torch.empty_like(x_out) if need_dx else x_out.new_empty(0)
    dbranch = torch.empty(x_out.shape, dtype=dbranch_dtype, device=x_out.device) if need_dbranch else None
    partial_shape = (batch, tiles, dim)
    dgate_partial = x_out.new_empty(partial_shape, dtype=torch.float32) if need_dgate else None
    dshift_partial = x_out.new_empty(partial_shape, dtype=torch.float32)
    dscale_partial = x_out.new_empty(partial_shape, dtype=torch.float32)
    dbias_partial = x_out.new_empty(partial_shape, dtype=torch.float32) if need_dbias else None
    if batch * tokens > 0:
        if TRITON_INTERPRET:  # wrap_triton refuses the interpreter's kernels
            kernel = interpreter_kernel(_add_norm_modulate_bwd_kernel, x_out, "add_norm_modulate")
        else:
            kernel = wrap_triton(_add_norm_modulate_bwd_kernel)
        kernel[(batch, tiles)](
            dx_out if has_dx_out else dh,
            dh,
            x_out,
            mean,
            rstd,
            branch if need_dgate else dh,
            gate if has_gate else scale,
            scale,
            bias if has_bias else scale,
            dx if need_dx else dh,
            dbranch if need_dbranch else dh,
            dgate_partial if need_dgate else dshift_partial,
            dshift_partial,
            dscale_partial,
            dbias_partial if need_dbias else dshift_partial,
            tokens,
            dim,
            gate.stride(0) if has_gate else 0,
            scale.stride(0),
            TOKENS_PER_PROGRAM=tokens_per_program,
            NUM_STAGES=num_stages,
            HAS_DX_OUT=has_dx_out,
            HAS_GATE=has_gate,
            NEED_DX=need_dx,
            NEED_DBRANCH=need_dbranch,
            NEED_DGATE=need_dgate,
            HAS_BIAS=has_bias,
            NEED_DBIAS=need_dbias,
            ROWS=rows,
            BLOCK_D=block_d,
            num_warps=num_warps,
        )
    else:
        dshift_partial.zero_()
        dscale_partial.zero_()
        if need_dgate:
            dgate_partial.zero_()
        if need_dbias:
            dbias_partial.zero_()
    dgate = dgate_partial.sum(dim=1) if need_dgate else x_out.new_empty(0, dtype=torch.float32)
    dbias = dbias_partial.sum(dim=(0, 1)) if need_dbias else x_out.new_empty(0, dtype=torch.float32)
    dshift, dscale = dshift_partial.sum(dim=1), dscale_partial.sum(dim=1)
    dbranch = dbranch if need_dbranch else x_out.new_empty(0, dtype=dbranch_dtype)
    return dx, dbranch, dgate, dshift, dscale, dbias


def _setup_context(ctx, inputs, output) -> None:
    x, branch, gate, shift, scale, _eps, _out_dtype, bias, _config = inputs
    x_out, _h, mean, rstd = output
    has_branch = branch is not None
    # branch (and bias) only for dgate; x_out (or x itself without a branch) gives xhat with mean/rstd
    branch_for_dgate = branch if (gate is not None and gate.requires_grad) else None
    ctx.save_for_backward(x_out if has_branch else x, mean, rstd, branch_for_dgate, gate, scale, bias)
    ctx.has_branch = has_branch
    ctx.x_broadcast = has_branch and x.shape[0] != branch.shape[0]  # x [1, N, D]
    ctx.branch_dtype = branch.dtype if has_branch else x.dtype
    ctx.shift_dtype, ctx.scale_dtype = shift.dtype, scale.dtype
    ctx.mark_non_differentiable(mean, rstd)


def _backward(ctx, dx_out, dh, _dmean, _drstd):
    residual, mean, rstd, branch_for_dgate, gate, scale, bias = ctx.saved_tensors
    needs_dx, needs_dbranch, needs_dgate, needs_dshift, needs_dscale = ctx.needs_input_grad[:5]
    needs_dbias = bias is not None and ctx.needs_input_grad[7:8] == (True,)
    if not ctx.has_branch or (dx_out is not None and dx_out.numel() == 0):
        dx_out = None  # without a branch, x_out is x: its gradient reaches x directly
    if dh is None:
        dh = torch.zeros_like(residual)
    dx, dbranch, dgate, dshift, dscale, dbias = torch.ops.reed_kernels.add_norm_modulate_bwd(
        dx_out,
        dh,
        residual,
        mean,
        rstd,
        branch_for_dgate if needs_dgate else None,
        gate,
        scale,
        bool(needs_dbranch),
        ctx.branch_dtype,
        bias,
        bool(needs_dbias),
        bool(needs_dx),
    )
    if needs_dx and ctx.x_broadcast:
        dx = dx.sum(dim=0, keepdim=True)
    return (
        dx if needs_dx else None,
        dbranch if needs_dbranch else None,
        dgate.to(gate.dtype) if needs_dgate else None,
        dshift.to(ctx.shift_dtype) if needs_dshift else None,
        dscale.to(ctx.scale_dtype) if needs_dscale else None,
        None,
        None,
        dbias.to(bias.dtype) if needs_dbias else None,
        None,
    )


register_autograd("reed_kernels::add_norm_modulate_fwd", _backward, setup_context=_setup_context)
