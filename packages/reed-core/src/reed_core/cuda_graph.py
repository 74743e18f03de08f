"""The whole training step as one CUDA graph: captured once, replayed every step.

With compiled models the GPU work of a step is a few hundred kernels whose launches, and the
Python around them (autograd, the compiled graphs' wrappers, the optimizer), take host time the
GPU may wait on. :class:`GraphedStep` records the step (forward, backward, update) once with
``torch.cuda.graph`` and afterwards only copies the new batch into the recorded input tensors and
replays the graph: one launch per step.

What a replay cannot see, and how this module keeps it correct:

* **Host values.** Python numbers computed from the step count would be frozen into the graph
  when it is recorded. So ``step_fn`` is given the step as a device tensor, written before each
  step (and the Trainer hands it to the task's loss): the curriculum weights are computed from it
  on the device
  (:mod:`reed_core.schedules` takes tensors). Learning rate and EMA decay are device scalars too
  (:meth:`reed_core.optim.FusedUpdate.set_rates`). Host values a task still derives from the
  step are named by its ``graph_key(step)``: the graph is replayed only while the key is
  unchanged; when it changes, the graph is dropped, ``warmup`` steps run eagerly, and the step is
  recorded again.
* **Inputs.** Every tensor of the batch is copied into the tensor recorded at capture; the batch
  must keep its structure, shapes and dtypes, and its non-tensor fields must stay equal.
* **Randomness.** ``torch.cuda.graph`` registers the default CUDA generator, so every replay
  draws fresh numbers and advances the generator as the eager step would.
* **Outputs.** The returned terms live in the graph's memory and are overwritten by the next
  replay: callers that keep them must copy them (``Trainer.fit`` does).

The eager warm-up steps run on the capture stream, as PyTorch's whole-network capture recipe
asks (lazily created per-stream state, e.g. cuBLAS workspaces, then exists before capture).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable
from typing import Any

import torch

__all__ = ["GraphedStep", "copy_into"]


def copy_into(static: Any, new: Any, where: str = "batch") -> None:
    """Copy every tensor of ``new`` into the tensor at the same place in ``static``.

    Dicts, lists, tuples and dataclasses are walked; other leaves must be equal. A mismatch
    (missing key, shape, dtype, a changed non-tensor field) is a ``ValueError`` naming the field.
    """
    if isinstance(static, torch.Tensor):
        if not isinstance(new, torch.Tensor):
            raise ValueError(f"{where}: a tensor when the step was captured, now {type(new).__name__}")
        if new.shape != static.shape or new.dtype != static.dtype:
            raise ValueError(
                f"{where}: shape {tuple(new.shape)} {new.dtype} differs from the captured "
                f"{tuple(static.shape)} {static.dtype}; a captured step needs fixed batch shapes"
            )
        static.copy_(new, non_blocking=True)
    elif isinstance(static, dict):
        if not isinstance(new, dict) or set(new) != set(static):
            raise ValueError(f"{where}: keys changed since the step was captured")
        for key in static:
            copy_into(static[key], new[key], f"{where}[{key!r}]")
    elif isinstance(static, (list, tuple)):
        if type(new) is not type(static) or len(new) != len(static):
            raise ValueError(f"{where}: length or type changed since the step was captured")
        for i, (s, n) in enumerate(zip(static, new)):
            copy_into(s, n, f"{where}[{i}]")
    elif dataclasses.is_dataclass(static) and not isinstance(static, type):
        if type(new) is not type(static):
            raise ValueError(f"{where}: {type(new).__name__} in place of {type(static).__name__}")
        for field in dataclasses.fields(static):
            copy_into(getattr(static, field.name), getattr(new, field.name), f"{where}.{field.name}")
    elif static != new:
        raise ValueError(
            f"{where}: {new!r} differs from {static!r} at capture; a captured step cannot see "
            "changing non-tensor batch fields"
        )


class GraphedStep:
    """``step(batch, step_count)``: ``step_fn`` eagerly, or a replay of its captured graph.

    ``step_fn(batch, step_tensor)`` is the device work of one training step, given the step count
    as a 0-d float64 tensor on the GPU (it must read no host state that changes between steps
    other than through ``key_fn``); ``key_fn(step_count)`` is a
    hashable of every host value it derives from the step count; ``warmup`` eager steps precede
    each capture (compilation, lazy state); ``before_capture()`` runs just before recording
    (e.g. set gradients to ``None`` so that the backward allocates them in the graph's memory).
    """

    def __init__(
        self,
        step_fn: Callable[[Any, torch.Tensor], Any],
        key_fn: Callable[[int], Hashable],
        warmup: int = 3,
        before_capture: Callable[[], None] | None = None,
    ):
        if warmup < 1:
            raise ValueError(f"GraphedStep: warmup must be >= 1, got {warmup}")
        self.step_fn, self.key_fn, self.warmup = step_fn, key_fn, warmup
        self.before_capture = before_capture
        self.stream = torch.cuda.Stream()
        self.step_tensor = torch.zeros((), dtype=torch.float64, device=torch.cuda.current_device())
        self.graph: torch.cuda.CUDAGraph | None = None
        self.key: Hashable = None
        self.static_batch: Any = None
        self.static_out: Any = None
        self._pending_key: Hashable = None
        self._eager_steps = 0
        self.captures = 0  # how many times a step was recorded (logged by tests and benchmarks)
        self.replays = 0

    def reset(self) -> None:
        """Drop the graph (and its memory); the next steps warm up and capture again. Needed
        whenever a tensor the graph reads or writes is replaced, e.g. by loading a checkpoint."""
        self.graph = self.static_batch = self.static_out = None
        self.key = self._pending_key = None
        self._eager_steps = 0

    def __call__(self, batch: Any, step: int) -> Any:
        self.step_tensor.fill_(step)
        key = self.key_fn(step)
        if self.graph is not None and key == self.key:
            copy_into(self.static_batch, batch)
            self.graph.replay()
            self.replays += 1
            return self.static_out
        if self.graph is not None:
            self.reset()  # the host values changed: free the old graph before anything else
        if key != self._pending_key:
            self._pending_key, self._eager_steps = key, 0
        if self._eager_steps < self.warmup:
            self._eager_steps += 1
            return self._eager(batch)
        return self._capture(batch, key)

    def _eager(self, batch: Any) -> Any:
        torch.cuda.synchronize()  # the batch was made on the current stream
        with torch.cuda.stream(self.stream):
            out = self.step_fn(batch, self.step_tensor)
        torch.cuda.synchronize()  # outputs are read, and inputs freed, on the current stream
        return out

    def _capture(self, batch: Any, key: Hashable) -> Any:
        if self.before_capture is not None:
            self.before_capture()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
            out = self.step_fn(batch, self.step_tensor)
        graph.replay()  # recording ran nothing: this is the step
        self.graph, self.key, self.static_batch, self.static_out = graph, key, batch, out
        self.captures += 1
        return out
