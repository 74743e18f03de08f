"""Helpers shared by the hand-written Triton ops (``fused_adaln.py``, ``fused_gelu.py``).

Whether the Triton path runs for a device (CUDA, or CPU through Triton's interpreter when
``TRITON_INTERPRET=1`` was set before Triton was imported), the kernel to launch in interpreter mode,
and the SM count that sizes grids of float32 partial sums.
"""

import functools

import torch

try:
    import triton
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
