"""Training curriculum: ``w_diff(p)`` and ``w_align_k(p)`` over training progress ``p``.

Wang et al. (2025), Sec. 4: early in training the denoiser learns the representation (alignment
on, diffusion warming up); later the generative term dominates (alignment constant or decayed):

    L = w_diff(p) L_gen + sum_k w_align_k(p) lambda_k E_tau[alpha_k(tau) L_align_k(tau)]

``p`` is counted in ``unit`` ("step" or "epoch"); ``w_align_k`` is ``per_target[k]`` where given,
else the shared ``w_align``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from reed_core.schedules import Schedule, constant

UNITS = ("step", "epoch")


@dataclass(frozen=True)
class CurriculumConfig:
    w_diff: Schedule = field(default_factory=constant)
    w_align: Schedule = field(default_factory=constant)
    per_target: dict[str, Schedule] = field(default_factory=dict)
    unit: str = "step"

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(f"curriculum.unit: unknown {self.unit!r}; choose one of {UNITS}")


@dataclass(frozen=True)
class CurriculumWeights:
    w_diff: float
    w_align: dict[str, float]


class Curriculum:
    def __init__(self, cfg: CurriculumConfig, target_names: list[str] | tuple[str, ...] = ()):
        unknown = sorted(set(cfg.per_target) - set(target_names))
        if target_names and unknown:
            raise ValueError(f"curriculum.per_target: no alignment target named {unknown}")
        self.cfg = cfg
        self.target_names = tuple(target_names)

    def progress(self, step: int | torch.Tensor, steps_per_epoch: int) -> float | torch.Tensor:
        """Progress ``p`` of ``step`` in the curriculum's unit (a tensor for a tensor ``step``:
        then every weight below is a tensor too, computed on the step's device)."""
        step = step.double() if isinstance(step, torch.Tensor) else float(step)
        return step if self.cfg.unit == "step" else step / max(steps_per_epoch, 1)

    def w_align_for(self, name: str, progress: float) -> float:
        return self.cfg.per_target.get(name, self.cfg.w_align)(progress)

    def weights(self, progress: float) -> CurriculumWeights:
        w_align = {name: self.w_align_for(name, progress) for name in self.target_names}
        return CurriculumWeights(w_diff=self.cfg.w_diff(progress), w_align=w_align)
