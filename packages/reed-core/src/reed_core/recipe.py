"""A REED recipe as one config, and the model, curriculum and objective assembled from it.

Wang et al. (2025): the denoiser's hidden state ``f^(d_k)`` at depth ``d_k`` is projected by an
MLP ``h_k`` and aligned (cosine) to a target representation ``z_k``; the training loss is

    L = w_diff(p) L_gen + sum_k w_align_k(p) lambda_k E_tau[alpha_k(tau) L_align_k]

:class:`ReedConfig` holds every choice of that equation: the targets ``k`` (:class:`TargetConfig`:
where ``z_k`` comes from, ``d_k``, pooling, ``lambda_k``, ``alpha_k``, the projector) and the
curriculum ``w_diff``/``w_align_k`` over progress ``p`` (:class:`reed_core.curriculum.CurriculumConfig`).
In a domain config it is the ``reed`` section, so every domain has the same keys::

    reed.targets.<name>.depth=8            reed.targets.<name>.weight=0.5
    reed.curriculum.w_diff.kind=linear     reed.curriculum.w_align.kind=cosine
    reed.curriculum.unit=epoch             reed.align_scale=0.2

:func:`assemble` turns it into a :class:`reed_core.model.ReedModel` around the domain's denoiser,
a :class:`reed_core.curriculum.Curriculum` and a :class:`reed_core.objective.ReedObjective`. What
``encoder``, ``feature``, ``checkpoint``, ``store`` and ``options`` mean (and how ``z_k`` is
computed) stays with the domain.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch.nn as nn

from reed_core.alignment import POOLINGS, AlignmentTarget
from reed_core.config import ConfigError
from reed_core.curriculum import Curriculum, CurriculumConfig
from reed_core.decomposition import AlphaSpec
from reed_core.model import ReedModel
from reed_core.objective import ReedObjective
from reed_core.taps import resolve_depth

LOCATIONS = ("host", "device", "mmap", "online")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")  # a target name is one key of a dotted override


@dataclass(frozen=True)
class TargetConfig:
    """One target ``z_k`` and how the denoiser is aligned to it.

    Where ``z_k`` comes from (the domain reads these): ``encoder`` (which encoder gives it),
    ``feature`` (which of its outputs; "" where it has one), ``checkpoint`` (its weights: a hub name
    or a local path; "" for the encoder's default), ``store`` (folder of a precomputed
    :class:`reed_core.features.FeatureStore`; "" for the domain's default), ``location`` (where
    the stored table is kept while training: host RAM, device memory, or memory-mapped; or
    ``online``: no store, the frozen encoder runs on each batch, where the domain supports it), and
    ``options`` (a domain's extra settings, e.g. reed-image's ``kind`` and ``input_size``).

    How the denoiser is aligned to it: ``depth`` ``d_k`` (1-based index into the denoiser's
    ``tap_points()``, or a module path such as ``"blocks.7"``), ``dim`` (width of ``z_k``; 0: read
    from the store or the encoder), ``pooling`` of the hidden state, ``weight`` ``lambda_k``,
    ``alpha`` ``alpha_k(tau)`` and the projector ``h_k`` (an MLP of ``projector_layers`` layers,
    ``projector_hidden`` wide). ``enabled=False`` keeps the entry (so overrides can address it)
    and leaves it out of training.
    """

    encoder: str = ""
    feature: str = ""
    checkpoint: str = ""
    store: str = ""
    location: str = "host"
    depth: int | str = 1
    dim: int = 0
    pooling: str = "token"
    weight: float = 1.0
    alpha: AlphaSpec = field(default_factory=AlphaSpec)
    projector_hidden: int = 2048
    projector_layers: int = 3
    enabled: bool = True
    options: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # messages start with the field: loaded from a config they read reed.targets.<name>.<field>
        if self.location not in LOCATIONS:
            raise ValueError(f"location: unknown {self.location!r}; choose one of {LOCATIONS}")
        if isinstance(self.depth, int) and self.depth < 1:
            raise ValueError(f"depth: must be >= 1 (1-based block index), got {self.depth}")
        if isinstance(self.depth, str) and not self.depth:
            raise ValueError("depth: give a 1-based block index or a module path, got ''")
        if self.dim < 0:
            raise ValueError(f"dim: must be >= 0 (0: read from the store or encoder), got {self.dim}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling: unknown {self.pooling!r}; choose one of {POOLINGS}")
        if self.weight < 0:
            raise ValueError(f"weight: must be >= 0, got {self.weight}")
        if self.projector_hidden < 1:
            raise ValueError(f"projector_hidden: must be >= 1, got {self.projector_hidden}")
        if self.projector_layers < 1:
            raise ValueError(f"projector_layers: must be >= 1, got {self.projector_layers}")


@dataclass(frozen=True)
class ReedConfig:
    """The targets, the curriculum and ``align_scale``, an overall factor on every ``lambda_k``
    (the protein recipe's 0.2): target ``k`` is trained with weight ``align_scale * weight``."""

    targets: dict[str, TargetConfig] = field(default_factory=dict)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    align_scale: float = 1.0

    # keys of reed-protein's former ``reed`` section
    RENAMED: ClassVar[dict[str, str]] = {
        "diffusion_warmup_epochs": "reed.curriculum.w_diff (a schedule; reed.curriculum.unit=epoch)",
        "align_decay_epochs": "reed.curriculum.w_align (a schedule; reed.curriculum.unit=epoch)",
        "projector_hidden": "reed.targets.<name>.projector_hidden",
        "projector_layers": "reed.targets.<name>.projector_layers",
    }

    def __post_init__(self) -> None:
        bad = [name for name in self.targets if not _NAME.match(name)]
        if bad:
            raise ValueError(
                f"reed.targets: target names must be identifiers (letters, digits, _ and -), got {bad}"
            )
        if self.align_scale < 0:
            raise ValueError(f"reed.align_scale: must be >= 0, got {self.align_scale}")
        unknown = sorted(set(self.curriculum.per_target) - set(self.targets))
        if unknown:
            raise ValueError(
                f"reed.curriculum.per_target: no target named {unknown}; targets: {list(self.targets)}"
            )

    @property
    def enabled(self) -> dict[str, TargetConfig]:
        """The targets trained (``enabled``), in order."""
        return {name: t for name, t in self.targets.items() if t.enabled}


def alignment_targets(cfg: ReedConfig, target_dims: Mapping[str, int] | None = None) -> list[AlignmentTarget]:
    """The enabled targets as :class:`AlignmentTarget` s, ``lambda_k = align_scale * weight``.

    A :class:`reed_core.config.ConfigError` names the key of a width that is missing or disagrees.
    ``target_dims`` gives the width of ``z_k`` read from a store or an encoder: it is used where
    ``dim`` is 0 and must agree with ``dim`` where both are given.
    """
    target_dims = target_dims or {}
    out = []
    for name, t in cfg.enabled.items():
        found = target_dims.get(name, 0)
        if t.dim and found and found != t.dim:
            raise ConfigError(f"reed.targets.{name}.dim: is {t.dim}, but its store or encoder gives {found}")
        dim = t.dim or found
        if dim <= 0:
            raise ConfigError(
                f"reed.targets.{name}.dim: 0 (read from the store or encoder), but none gave a width"
            )
        out.append(
            AlignmentTarget(
                name,
                t.depth,
                dim,
                pooling=t.pooling,
                weight=cfg.align_scale * t.weight,
                alpha=t.alpha,
                projector_hidden=t.projector_hidden,
                projector_layers=t.projector_layers,
            )
        )
    return out


@dataclass
class Assembled:
    """What :func:`assemble` builds: the model to train, the curriculum, the objective and the
    enabled targets (``lambda_k`` scaled)."""

    model: ReedModel
    curriculum: Curriculum
    objective: ReedObjective
    targets: list[AlignmentTarget]


def assemble(
    denoiser: nn.Module,
    cfg: ReedConfig,
    target_dims: Mapping[str, int] | None = None,
    hidden_dims: Mapping[str, int] | None = None,
) -> Assembled:
    """``denoiser`` with taps and projectors (:class:`ReedModel`), the curriculum and the objective.

    Disabled targets are left out (also from ``reed.curriculum.per_target``); each depth must be
    one of the denoiser's tap points or module paths. ``target_dims``: widths of ``z_k`` (see
    :func:`alignment_targets`); ``hidden_dims``: widths of the tapped hidden states where the
    denoiser has no ``tap_dims()`` and the tapped module does not end in an ``nn.Linear``.
    """
    targets = alignment_targets(cfg, target_dims)
    for t in targets:
        try:
            resolve_depth(denoiser, t.depth)
        except ValueError as err:
            raise ConfigError(f"reed.targets.{t.name}.depth: {str(err).removeprefix('depth: ')}") from None
    names = [t.name for t in targets]
    per_target = {name: s for name, s in cfg.curriculum.per_target.items() if name in names}
    curriculum = Curriculum(replace(cfg.curriculum, per_target=per_target), names)
    model = ReedModel(denoiser, targets, dict(hidden_dims) if hidden_dims is not None else None)
    return Assembled(model, curriculum, ReedObjective(curriculum, {t.name: t for t in targets}), targets)
