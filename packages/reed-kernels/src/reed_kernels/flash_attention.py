"""Self-attention on a packed ``qkv`` tensor, each way one op: FlashAttention-4 kernels on Hopper.

For ``qkv [B, N, 3, H, d]`` (the qkv Linear's output viewed per head; ``q = qkv[:, :, 0]`` etc.)
and ``s = 1 / sqrt(d)``, per batch element and head:

Forward (``packed_attention``; ``reed_kernels::packed_attention_fwd``):

    S = s q k^T,   lse = logsumexp over keys of S,   P = exp(S - lse),   o = P v

Backward from ``do`` (``reed_kernels::packed_attention_bwd``; saved: ``qkv``, ``o``, ``lse``):

    dv = P^T do,   dP = do v^T,   D = rowsum(do * o),   dS = P * (dP - D),
    dq = s dS k,   dk = s dS^T q

and ``dq``, ``dk``, ``dv`` are written into one ``dqkv [B, N, 3, H, d]`` buffer: the gradient the
qkv Linear's backward reads as it is. Through ``F.scaled_dot_product_attention`` the three come
back as separate tensors and autograd stacks them into that layout in one more pass over
``3 B N H d`` elements (SiT-XL/2, batch 64: 113 MB read and written per block, 2.1 ms of a step).

With ``bias`` (``packed_attention(qkv, bias)``, where ``qkv = x W^T + bias`` was formed with the
bias detached) the op also returns that bias's gradient, per head (``qkv_bias_grad_reference``):

    db_q = sum_tokens dq,   db_k = 0,   db_v = sum_tokens do

(softmax ignores a key bias, which adds the same ``q . b_k`` to a whole row of scores; each row of
``P`` sums to 1, so ``sum_tokens dv = sum_tokens do``). On the GPU these sums come out of the
backward's own pre- and postprocess passes (``attention_prepost.py``, Triton, in place of
FlashAttention-4's: -0.6 to -0.8 ms a SiT-XL/2 step on an H100, docs/results/image.md), which read
``do`` and ``dq`` anyway; autograd's reduction of the whole ``dqkv`` for the Linear's bias is gone.
The key bias then gets an exact zero gradient, where the reduction gave it float rounding noise.
Calls the Triton passes are not written for (tokens not a multiple of 64, other architectures)
keep FlashAttention-4's own passes and the bias gradient by ``qkv_bias_grad_reference``.

On CUDA with a compute capability of 9.x or above and bfloat16/float16 inputs the backward is
FlashAttention-4's (``flash_attn.cute``, PyPI ``flash-attn-4``, CuTe DSL kernels compiled on first
use for each shape). It runs at the head dimension rounded up to 16 (SiT's 72 -> 80), where
cuDNN's kernels run 72 in a 128-wide tile, and it accepts caller-made ``dq``/``dk``/``dv``, which
is what lets it write the packed gradient: its private entry point ``_flash_attn_bwd`` is used
for that (hence the exact version pin of the ``fa4`` extra). It needs only ``o`` and ``lse`` from
the forward, so the forward is whichever kernel is faster there: at SiT-XL/2's shapes on an H100
that is cuDNN's (through PyTorch's ``_scaled_dot_product_cudnn_attention``, which returns ``lse``
too): 89-93 us against 129-159 us for FlashAttention-4's own forward at its tiles. Its backward
took 337 us against cuDNN's 370 us + 75 us of gradient stacking. Anywhere else (CPU,
float32, older GPUs) the same ops run ``attention_reference``/``attention_backward_reference``
(the equations above in float32), so the packed path is the same code with and without a Hopper
GPU. Both ops are
``torch.library.custom_op``s tied with ``register_autograd``: ``torch.compile(fullgraph=True)``
keeps each as one opaque call, and CUDA-graph capture records the kernels.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import math

import torch
from torch.library import custom_op, register_autograd, register_fake

from reed_kernels.attention_prepost import (
    ROWS_PER_PARTIAL,
    attention_bwd_postprocess,
    attention_bwd_preprocess,
    colsum_buffer,
    colsum_total,
)

__all__ = [
    "attention_backward_reference",
    "attention_reference",
    "flash_attention_available",
    "packed_attention",
    "qkv_bias_grad_reference",
]

INSTALL_HINT = "pip install 'reed-kernels[fa4]' (PyPI flash-attn-4)"
# the release the private entry points and the fix below are written against (extra ``fa4``)
FLASH_ATTN_VERSION = "4.0.0b36"


@functools.cache
def _flash_interface():
    """``flash_attn.cute.interface`` (with ``_fix_sm90_dq_accum_stride``), or None where it cannot
    be imported; a version other than ``FLASH_ATTN_VERSION`` is refused with a clear error."""
    try:
        from flash_attn.cute import interface
    except ImportError:
        return None
    installed = importlib.metadata.version("flash-attn-4")
    if installed != FLASH_ATTN_VERSION:
        raise ImportError(
            f"packed_attention is written against flash-attn-4=={FLASH_ATTN_VERSION} (it calls "
            f"private entry points); found {installed}: {INSTALL_HINT}"
        )
    _fix_sm90_dq_accum_stride(interface)
    return interface


def _fix_sm90_dq_accum_stride(interface) -> None:
    """Make the dq postprocess read the float32 dq accumulator with the Hopper kernel's row stride.

    In flash-attn-4 4.0.0b36 the SM90 backward kernel lays ``dq_accum`` out in rows of the head
    dimension rounded up to 16 (``FlashAttentionBackwardSm90.tile_hdim``), while
    ``_flash_attn_bwd`` hands its postprocess (float32 -> bf16 and the softmax scale) a rounding to
    32. For head dimensions that are multiples of 32 the two agree; for SiT's 72 (80 vs 96) every
    ``dq`` came out wrong (max error 2.3 on O(1) gradients, H100; ``dk``/``dv`` were right, as
    they skip that buffer). The postprocess is told 16, the kernel's value; the buffer, allocated
    for 32, is large enough for either. Measured fixed by ``test_flash_attention.py`` on the GPU.
    """
    convert = interface._bwd_postprocess_convert
    if getattr(convert, "reed_fixed", False):
        return

    @functools.wraps(convert)
    def convert_with_kernel_stride(*args, hdim_multiple_of=32, **kwargs):
        hdim_multiple_of = _kernel_hdim_multiple(args[5], hdim_multiple_of)
        return convert(*args, hdim_multiple_of=hdim_multiple_of, **kwargs)

    convert_with_kernel_stride.reed_fixed = True
    interface._bwd_postprocess_convert = convert_with_kernel_stride


def _kernel_hdim_multiple(arch: int, hdim_multiple_of: int) -> int:
    """The row rounding of the dq accumulator the SM90 kernel writes (``_fix_sm90_dq_accum_stride``):
    16 where ``_flash_attn_bwd`` says 32 on SM 9.x (64, for dKV_swapAB, is the kernel's too)."""
    return 16 if arch // 10 == 9 and hdim_multiple_of == 32 else hdim_multiple_of


class _BackwardPass:
    """One ``packed_attention_bwd`` call's state for the routed pre/postprocess: its ``dq`` view,
    the ``colsum`` partial sums (``attention_prepost``), and which of the two ran in Triton."""

    def __init__(self, dq: torch.Tensor, colsum: torch.Tensor):
        self.dq = dq
        self.colsum = colsum
        self.preprocessed = False
        self.postprocessed = False


@contextlib.contextmanager
def _routed_prepost(interface, job: _BackwardPass):
    """While one packed backward runs ``_flash_attn_bwd``: its preprocess and dq postprocess go to
    ``attention_prepost`` (with ``job``'s buffers) where the call is one those kernels are written
    for; every other call goes to FlashAttention-4's own. The interface's functions are put back
    afterwards. (``_flash_attn_bwd`` finds both as globals of its module, so they are swapped there
    for the call: the job reaches them by closure, not through state of this module.)"""
    preprocess, postprocess = interface._bwd_preprocess, interface._bwd_postprocess_convert

    @functools.wraps(preprocess)
    def routed_preprocess(*args, **kwargs):
        if not _triton_preprocess(job, *args, **kwargs):
            preprocess(*args, **kwargs)

    @functools.wraps(postprocess)
    def routed_postprocess(*args, hdim_multiple_of=32, **kwargs):
        hdim_multiple_of = _kernel_hdim_multiple(args[5], hdim_multiple_of)
        if not _triton_postprocess(job, *args, hdim_multiple_of=hdim_multiple_of, **kwargs):
            postprocess(*args, hdim_multiple_of=hdim_multiple_of, **kwargs)

    interface._bwd_preprocess, interface._bwd_postprocess_convert = routed_preprocess, routed_postprocess
    try:
        yield
    finally:
        interface._bwd_preprocess, interface._bwd_postprocess_convert = preprocess, postprocess


def _round_up(value: int, multiple: int) -> int:
    return (value + multiple - 1) // multiple * multiple


def _triton_preprocess(
    job: _BackwardPass,
    out,
    dout,
    dpsum,
    lse,
    lse_log2,
    dq_accum,
    cu_seqlens_q,
    seqused_q,
    dlse,
    dtype,
    head_dim,
    head_dim_v,
    m_block_size,
    *args,
    hdim_multiple_of=32,
    fake_mode=False,
    **options,
) -> bool:
    """Run ``attention_bwd_preprocess`` for this FlashAttention-4 preprocess call if it can; True if it ran.

    Only the plain case (no varlen, dlse, sinks, packed GQA; head dims alike, up to 128, where the
    Hopper kernel rounds its accumulator rows to 16), on a Hopper GPU (other architectures lay the
    accumulator out differently)."""
    if fake_mode or args:
        return False
    if not out.is_cuda or torch.cuda.get_device_capability(out.device)[0] != 9:
        return False
    if any(options.get(name) is not None for name in ("row_max", "scale_p", "cu_total_m_blocks", "o_lo")):
        return False
    if options.get("nheads_major") or options.get("pack_gqa") or options.get("use_padded_offsets") is False:
        return False
    tokens = out.shape[1]
    if (
        cu_seqlens_q is not None
        or seqused_q is not None
        or dlse is not None
        or dq_accum is None
        or lse_log2 is None
        or head_dim != head_dim_v
        or head_dim > 128
        or hdim_multiple_of != 32
        or out.dim() != 4
        or any(t.stride(-1) != 1 or t.stride(2) != head_dim for t in (out, dout))
        or tokens % m_block_size
        or dpsum.shape[-1] != tokens
    ):
        return False
    attention_bwd_preprocess(out, dout, lse, dpsum, lse_log2, dq_accum, _round_up(head_dim, 16), job.colsum)
    job.preprocessed = True
    return True


def _triton_postprocess(
    job: _BackwardPass,
    accum,
    output,
    scale,
    cu_seqlens,
    seqused,
    arch,
    dtype,
    hdim,
    block_size,
    num_threads,
    atom_layout,
    swap_ab,
    use_2cta_instrs=False,
    cluster_size=1,
    cu_total_m_blocks=None,
    sink_tensors=None,
    hdim_multiple_of=32,
    accum_order=None,
    *,
    fake_mode=False,
) -> bool:
    """Run ``attention_bwd_postprocess`` for this dq postprocess call if it can; True if it ran.

    The accumulator layout it reads is the SM90 one of warpgroups that each own 64 rows of the
    tile (no dQ_swapAB); the call must be for ``job``'s own dq."""
    if fake_mode or not output.is_cuda:
        return False
    if output.data_ptr() != job.dq.data_ptr():
        return False
    if (
        arch // 10 != 9
        or hdim_multiple_of != 16
        or swap_ab
        or use_2cta_instrs
        or cu_seqlens is not None
        or seqused is not None
        or cu_total_m_blocks is not None
        or sink_tensors is not None
        or num_threads != 128 * atom_layout
        or block_size != 64 * atom_layout
        or output.shape[1] % block_size
    ):
        return False
    attention_bwd_postprocess(accum, output, scale, block_size, _round_up(hdim, hdim_multiple_of), job.colsum)
    job.postprocessed = True
    return True


def flash_attention_available(device: torch.device | str | None = None) -> bool:
    """True where ``packed_attention`` runs the FlashAttention-4 kernels (CUDA, SM 9.x+, installed)."""
    if not torch.cuda.is_available():
        return False
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 9 and _flash_interface() is not None


def _use_flash(qkv: torch.Tensor) -> bool:
    """The kernels for CUDA bfloat16/float16 inputs; raises on a GPU that cannot run them."""
    if not qkv.is_cuda:
        return False
    if not flash_attention_available(qkv.device):
        raise RuntimeError(
            "packed_attention on CUDA needs a GPU of compute capability 9.0 or above and "
            f"FlashAttention-4: {INSTALL_HINT}"
        )
    return qkv.dtype in (torch.bfloat16, torch.float16) and qkv.shape[-1] % 8 == 0


def attention_reference(qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(o [B, N, H, d], lse [B, H, N] float32)`` of the module docstring, in float32."""
    q, k, v = (qkv[:, :, i].float().transpose(1, 2) for i in range(3))  # (B, H, N, d)
    scale = 1.0 / math.sqrt(qkv.shape[-1])
    scores = scale * (q @ k.transpose(-1, -2))
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - lse.unsqueeze(-1))
    out = (probs @ v).transpose(1, 2).to(qkv.dtype)
    return out.contiguous(), lse


def attention_backward_reference(
    dout: torch.Tensor, qkv: torch.Tensor, out: torch.Tensor, lse: torch.Tensor
) -> torch.Tensor:
    """``dqkv [B, N, 3, H, d]`` of the module docstring, from the saved ``o`` and ``lse``."""
    q, k, v = (qkv[:, :, i].float().transpose(1, 2) for i in range(3))
    do, o = (t.float().transpose(1, 2) for t in (dout, out))
    scale = 1.0 / math.sqrt(qkv.shape[-1])
    probs = torch.exp(scale * (q @ k.transpose(-1, -2)) - lse.unsqueeze(-1))
    dv = probs.transpose(-1, -2) @ do
    dprobs = do @ v.transpose(-1, -2)
    delta = (do * o).sum(-1, keepdim=True)
    dscores = probs * (dprobs - delta)
    dq = scale * (dscores @ k)
    dk = scale * (dscores.transpose(-1, -2) @ q)
    return torch.stack([t.transpose(1, 2) for t in (dq, dk, dv)], dim=2).to(qkv.dtype)


def qkv_bias_grad_reference(dq: torch.Tensor, dout: torch.Tensor) -> torch.Tensor:
    """The qkv bias gradient ``[3 H d]`` (float32, module docstring) from ``dq``, ``do [B, N, H, d]``."""
    db_q = dq.sum((0, 1), dtype=torch.float32).flatten()
    db_v = dout.sum((0, 1), dtype=torch.float32).flatten()
    return torch.cat([db_q, torch.zeros_like(db_q), db_v])


def _check(qkv: torch.Tensor) -> None:
    if qkv.dim() != 5 or qkv.shape[2] != 3:
        raise ValueError(f"packed_attention: qkv must be [B, N, 3, H, d], got {tuple(qkv.shape)}")
    if qkv.stride(-1) != 1:
        raise ValueError("packed_attention: qkv's last (head) dimension must be contiguous")


def _cudnn_forward(qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(o [B, N, H, d], lse [B, H, N])`` by cuDNN's fused attention (PyTorch's SDPA kernel)."""
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (B, H, N, d) views
    out, lse = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, False, False)[:2]
    batch, heads, tokens = q.shape[:3]
    return out.transpose(1, 2).contiguous(), lse.reshape(batch, heads, tokens).contiguous()


@custom_op("reed_kernels::packed_attention_fwd", mutates_args=())
def _packed_attention_fwd(
    qkv: torch.Tensor, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(o, lse)``; ``bias`` is only an input for its gradient (``qkv`` already holds it)."""
    if not _use_flash(qkv):
        return attention_reference(qkv)
    return _cudnn_forward(qkv)


@register_fake("reed_kernels::packed_attention_fwd")
def _packed_attention_fwd_fake(qkv, bias=None):
    batch, tokens, _, heads, head_dim = qkv.shape
    out = qkv.new_empty(batch, tokens, heads, head_dim)
    lse = qkv.new_empty(batch, heads, tokens, dtype=torch.float32)
    return out, lse


@custom_op("reed_kernels::packed_attention_bwd", mutates_args=())
def _packed_attention_bwd(
    dout: torch.Tensor, qkv: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, bias_grad: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dqkv, dbias)``; ``dbias``: the qkv bias gradient ``[3 H d]`` (float32) or, without
    ``bias_grad``, empty."""
    batch, tokens, _, heads, head_dim = qkv.shape
    if not _use_flash(qkv):
        dqkv = attention_backward_reference(dout, qkv, out, lse)
        dbias = (
            qkv_bias_grad_reference(dqkv[:, :, 0], dout)
            if bias_grad
            else dout.new_empty(0, dtype=torch.float32)
        )
        return dqkv, dbias
    dqkv = torch.empty_like(qkv, memory_format=torch.contiguous_format)
    interface = _flash_interface()
    job = None
    routing = contextlib.nullcontext()
    if tokens % ROWS_PER_PARTIAL == 0:
        job = _BackwardPass(dqkv[:, :, 0], colsum_buffer(batch, tokens, heads, head_dim, qkv.device))
        routing = _routed_prepost(interface, job)
    with routing:
        interface._flash_attn_bwd(
            qkv[:, :, 0],
            qkv[:, :, 1],
            qkv[:, :, 2],
            out,
            dout,
            lse,
            causal=False,
            dq=dqkv[:, :, 0],
            dk=dqkv[:, :, 1],
            dv=dqkv[:, :, 2],
        )
    if not bias_grad:
        return dqkv, dout.new_empty(0, dtype=torch.float32)
    if job is not None and job.preprocessed and job.postprocessed:
        return dqkv, colsum_total(job.colsum)
    return dqkv, qkv_bias_grad_reference(dqkv[:, :, 0], dout)


@register_fake("reed_kernels::packed_attention_bwd")
def _packed_attention_bwd_fake(dout, qkv, out, lse, bias_grad=False):
    dqkv = torch.empty_like(qkv, memory_format=torch.contiguous_format)
    width = 3 * qkv.shape[3] * qkv.shape[4] if bias_grad else 0
    return dqkv, dout.new_empty(width, dtype=torch.float32)


def _setup_context(ctx, inputs, output) -> None:
    qkv, bias = inputs
    out, lse = output
    ctx.save_for_backward(qkv, out, lse)
    ctx.bias_shape_dtype = None if bias is None else (bias.shape, bias.dtype)
    ctx.mark_non_differentiable(lse)


def _backward(ctx, dout, _dlse):
    qkv, out, lse = ctx.saved_tensors
    bias_grad = ctx.bias_shape_dtype is not None and ctx.needs_input_grad[1]
    dqkv, dbias = _packed_attention_bwd(dout.contiguous(), qkv, out, lse, bias_grad)
    if not bias_grad:
        return dqkv, None
    shape, dtype = ctx.bias_shape_dtype
    return dqkv, dbias.to(dtype).reshape(shape)


register_autograd("reed_kernels::packed_attention_fwd", _backward, setup_context=_setup_context)


def packed_attention(qkv: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention of ``qkv [B, N, 3, H, d]`` -> ``[B, N, H, d]`` (module docstring).

    ``bias`` (``[3 H d]``): the qkv Linear's bias, which ``qkv`` must already contain, added with
    the bias detached (``F.linear(x, W, bias.detach())``): its gradient then comes from this op
    (``db_q = sum dq``, ``db_k = 0``, ``db_v = sum do``), as if it had flowed through the Linear.

    On a GPU that cannot run the kernels (not installed, compute capability below 9) this raises
    rather than falling back, so a run configured for them never silently measures the float32
    reference; CPU runs, and float32 inputs anywhere, use the reference.
    """
    _check(qkv)
    if bias is not None and bias.shape != (3 * qkv.shape[3] * qkv.shape[4],):
        raise ValueError(
            f"packed_attention: bias must be [3 * H * d] = [{3 * qkv.shape[3] * qkv.shape[4]}], "
            f"got {tuple(bias.shape)}"
        )
    return _packed_attention_fwd(qkv, bias)[0]
