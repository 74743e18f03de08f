"""Helpers shared by the hand-written Triton ops (``fused_adaln.py``, ``attention_prepost.py``).

Whether the Triton path runs for a device (CUDA, or CPU through Triton's interpreter when
``TRITON_INTERPRET=1`` was set before Triton was imported), the kernel to launch in interpreter mode,
the SM count that sizes grids of float32 partial sums, and ``column_sum``, the in-kernel sum over the
rows of such partial sums.
"""

import functools

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - Triton ships with CUDA builds of PyTorch on Linux
    triton = None

TRITON_INTERPRET = bool(triton.knobs.runtime.interpret) if triton is not None else False


def triton_path_available(x: torch.Tensor) -> bool:
    """Whether the fused ops run their Triton kernels for tensors on ``x``'s device."""
    if triton is None:
        return False
    return x.is_cuda or (TRITON_INTERPRET and x.device.type == "cpu")


class _NoLaunch:
    """A kernel stand-in for fake tensors in interpreter mode: shapes are all a fake run needs."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def interpreter_kernel(kernel, probe: torch.Tensor, op_name: str):
    """``kernel`` for plain CPU tensors; under FakeTensorMode (shape propagation) no launch at all.

    Any other tensor subclass (e.g. the FunctionalTensor of a compile trace) would need
    ``wrap_triton``, which does not take the interpreter's kernels: refuse rather than trace a graph
    without the kernel.
    """
    from torch._subclasses.fake_tensor import FakeTensor

    if isinstance(probe, FakeTensor):
        return _NoLaunch()
    if type(probe) is not torch.Tensor:
        raise RuntimeError(
            f"{op_name}: the Triton interpreter cannot run under {type(probe).__name__} "
            "(torch.compile needs a GPU for these kernels)"
        )
    return kernel


@functools.cache
def multiprocessor_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 2  # interpreter: few programs, but still more than one tile of rows


if triton is not None:

    @triton.jit
    def column_sum(
        ptr, cols, col_mask, width, ROWS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr
    ):
        """``sum_r x[r, cols]`` (float32 ``[BLOCK_C]``) of a row-major ``x [ROWS, width]`` at ``ptr``,
        ``BLOCK_R`` rows a loop step; columns outside ``col_mask`` read as 0."""
        acc = tl.zeros([BLOCK_C], dtype=tl.float32)
        for start in tl.range(0, ROWS, BLOCK_R):
            rows = start + tl.arange(0, BLOCK_R)
            mask = (rows < ROWS)[:, None] & col_mask[None, :]
            acc += tl.sum(tl.load(ptr + rows[:, None] * width + cols[None, :], mask=mask, other=0.0), axis=0)
        return acc

else:  # pragma: no cover
    column_sum = None
