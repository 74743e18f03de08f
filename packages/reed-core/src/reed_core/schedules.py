"""Progress -> weight schedules, clamped at both ends.

A schedule maps training progress ``p`` (a step or an epoch count, whichever unit the curriculum
uses) to a weight. Every family is flat before ``start`` (value ``v_start``) and flat after ``end``
(value ``v_end``); in between it moves by a shape ``s(u)`` with ``u = (p - start) / (end - start)``:

    w(p) = v_start + (v_end - v_start) * s(clamp(u, 0, 1))

    linear:   s(u) = u
    cosine:   s(u) = (1 - cos(pi u)) / 2             (a half-cosine ramp)
    sigmoid:  s(u) = sigma(k (u - 1/2)) rescaled so s(0) = 0, s(1) = 1

So ``linear_warmup(0, 50_000)`` is ``w_diff`` of the paper's image recipe (0 -> 1 over 50k steps)
and ``cosine_decay(0, 200)`` the protein recipe's alignment decay (1 -> 0 over 200 epochs, then 0).
``piecewise`` interpolates linearly between ``(p, v)`` knots and holds the end values;
``step_down(p1)`` (alignment that stops at ``p1``) is the piecewise ``[(p1, 1), (p1, 0)]``.

Progress may also be a tensor (e.g. the step count on the GPU, inside a recorded CUDA graph,
:mod:`reed_core.cuda_graph`): the same formulas then run as tensor ops, elementwise, in the
tensor's dtype, and return a tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

KINDS = ("constant", "linear", "cosine", "sigmoid", "piecewise")


@dataclass(frozen=True)
class Schedule:
    """A clamped weight schedule over training progress (see module docstring)."""

    kind: str = "constant"
    start: float = 0.0
    end: float = 0.0
    v_start: float = 1.0
    v_end: float = 1.0
    points: tuple[tuple[float, float], ...] = ()
    sharpness: float = 10.0  # k of the sigmoid shape

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind: unknown schedule {self.kind!r}; choose one of {KINDS}")
        if self.kind in ("linear", "cosine", "sigmoid") and self.end < self.start:
            raise ValueError(f"end: {self.end} is before start={self.start} (schedule {self.kind})")
        if self.kind == "piecewise":
            if not self.points:
                raise ValueError("points: a piecewise schedule needs at least one (p, v) knot")
            knots = [p for p, _ in self.points]
            if knots != sorted(knots):
                raise ValueError(f"points: the knots of a piecewise schedule must increase, got {knots}")

    def __call__(self, progress: float | torch.Tensor) -> float | torch.Tensor:
        if isinstance(progress, torch.Tensor):
            return self._on_tensor(progress)
        p = float(progress)
        if self.kind == "constant":
            return float(self.v_end)
        if self.kind == "piecewise":
            return _piecewise(self.points, p)
        if p <= self.start:
            return float(self.v_start)
        if p >= self.end:
            return float(self.v_end)
        u = (p - self.start) / (self.end - self.start)
        return float(self.v_start + (self.v_end - self.v_start) * self._shape(u))

    def _on_tensor(self, p: torch.Tensor) -> torch.Tensor:
        """:meth:`__call__` for tensor progress: the same cases, as ``torch.where``."""
        if self.kind == "constant":
            return torch.full_like(p, self.v_end)
        if self.kind == "piecewise":
            (p0, v0), out = self.points[0], torch.full_like(p, self.points[-1][1])
            for (pa, va), (pb, vb) in reversed(list(zip(self.points[:-1], self.points[1:]))):
                ramp = va + (vb - va) * (p - pa) / (pb - pa) if pb != pa else torch.full_like(p, va)
                out = torch.where(p <= pb, ramp, out)
            return torch.where(p <= p0, torch.full_like(p, v0), out)
        u = ((p - self.start) / max(self.end - self.start, 1e-30)).clamp(0.0, 1.0)
        ramp = self.v_start + (self.v_end - self.v_start) * self._shape(u)
        ramp = torch.where(p >= self.end, torch.full_like(p, self.v_end), ramp)
        return torch.where(p <= self.start, torch.full_like(p, self.v_start), ramp)

    def _shape(self, u: float | torch.Tensor) -> float | torch.Tensor:
        on_tensor = isinstance(u, torch.Tensor)
        if self.kind == "linear":
            return u
        if self.kind == "cosine":
            return 0.5 * (1.0 - (torch.cos if on_tensor else math.cos)(math.pi * u))
        # sigmoid, rescaled to pass through (0, 0) and (1, 1)
        k = self.sharpness
        lo, hi = _sigmoid(-k / 2), _sigmoid(k / 2)
        return ((torch.sigmoid if on_tensor else _sigmoid)(k * (u - 0.5)) - lo) / (hi - lo)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _piecewise(points: tuple[tuple[float, float], ...], p: float) -> float:
    if p <= points[0][0]:
        return float(points[0][1])
    for (p0, v0), (p1, v1) in zip(points[:-1], points[1:]):
        if p <= p1:
            return float(v0 if p1 == p0 else v0 + (v1 - v0) * (p - p0) / (p1 - p0))
    return float(points[-1][1])


@dataclass(frozen=True)
class Product:
    """Pointwise product of schedules, e.g. a warm-up times a later decay."""

    factors: tuple[Schedule | Product, ...]

    def __call__(self, progress: float | torch.Tensor) -> float | torch.Tensor:
        out = 1.0
        for f in self.factors:
            out *= f(progress)
        return out


def constant(value: float = 1.0) -> Schedule:
    return Schedule("constant", v_start=value, v_end=value)


def linear_warmup(start: float, end: float, peak: float = 1.0) -> Schedule:
    """0 until ``start``, linear to ``peak`` at ``end``, then ``peak``."""
    return Schedule("linear", start, end, 0.0, peak)


def linear_decay(start: float, end: float, initial: float = 1.0, final: float = 0.0) -> Schedule:
    return Schedule("linear", start, end, initial, final)


def cosine_warmup(start: float, end: float, peak: float = 1.0) -> Schedule:
    return Schedule("cosine", start, end, 0.0, peak)


def cosine_decay(start: float, end: float, initial: float = 1.0, final: float = 0.0) -> Schedule:
    """``initial`` until ``start``, half-cosine to ``final`` at ``end``, clamped there."""
    return Schedule("cosine", start, end, initial, final)


def sigmoid(start: float, end: float, v_start: float = 0.0, v_end: float = 1.0) -> Schedule:
    return Schedule("sigmoid", start, end, v_start, v_end)


def piecewise(points: list[tuple[float, float]]) -> Schedule:
    return Schedule("piecewise", points=tuple((float(p), float(v)) for p, v in points))


def step_down(at: float, before: float = 1.0, after: float = 0.0) -> Schedule:
    """``before`` up to and including ``at``, then ``after``: e.g. alignment that stops at ``at``."""
    return piecewise([(at, before), (at, after)])
