"""The speed options of training (``train.speed``), and where the trainer applies them.

None of them changes the objective; each changes how a step runs:

* ``compile``, ``compile_mode``, ``compile_regions``: ``torch.compile`` of the whole model, or in
  place of the submodules named by ``fnmatch`` patterns (identical blocks then share one graph);
* ``fused_update``: clipping + AdamW + EMA as one compiled pass (:mod:`reed_core.optim`); ``auto``
  is on when compiling on CUDA, and whenever an option below needs it;
* ``float8``, ``float8_modules``: FP8 matmuls for the named ``nn.Linear`` layers (:mod:`reed_core.float8`);
* ``param_dtype``: ``bfloat16`` keeps bf16 weights in the model (no per-step casts, bf16
  gradients) and float32 master weights in the fused update, which checkpoints store;
* ``cuda_graph``, ``cuda_graph_warmup``: the whole step (forward, backward, fused update)
  recorded as one CUDA graph and replayed (:mod:`reed_core.cuda_graph`), after that many eager
  steps before each capture.

:class:`SpeedSetup` applies them to the model being trained, in the order they need: first what
changes the model itself (:meth:`SpeedSetup.prepare`, before the optimiser sees its parameters),
then the update (:meth:`SpeedSetup.update`), then how the step runs (:meth:`SpeedSetup.wrap`,
:meth:`SpeedSetup.graph`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import torch
import torch.nn as nn

from reed_core.cuda_graph import GraphedStep
from reed_core.float8 import FLOAT8_RECIPES, convert_to_float8
from reed_core.objective import ObjectiveOutput
from reed_core.optim import FusedUpdate

FUSED_UPDATE = ("auto", "on", "off")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
PARAM_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class SpeedConfig:
    """``train.speed``: see the module docstring."""

    compile: bool = False
    compile_mode: str = "default"  # torch.compile mode: default | max-autotune-no-cudagraphs | ...
    compile_regions: tuple[str, ...] = ()  # empty: the whole model as one graph
    fused_update: str = "auto"  # auto | on | off
    float8: str = "off"  # off | tensorwise | rowwise | rowwise_with_gw_hp
    float8_modules: tuple[str, ...] = ("*",)
    param_dtype: str = "float32"  # float32 | bfloat16 (needs bf16 autocast and the fused update)
    cuda_graph: bool = False  # needs one CUDA process, the fused update and a task with graph_key
    cuda_graph_warmup: int = 3

    def __post_init__(self) -> None:
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(
                f"train.speed.compile_mode: unknown {self.compile_mode!r}; choose one of {COMPILE_MODES}"
            )
        if self.fused_update not in FUSED_UPDATE:
            raise ValueError(
                f"train.speed.fused_update: unknown {self.fused_update!r}; choose one of {FUSED_UPDATE}"
            )
        if self.param_dtype not in PARAM_DTYPES:
            raise ValueError(
                f"train.speed.param_dtype: unknown {self.param_dtype!r}; choose one of {tuple(PARAM_DTYPES)}"
            )
        if self.param_dtype != "float32" and self.fused_update == "off":
            raise ValueError(
                f"train.speed.param_dtype={self.param_dtype} needs bf16 autocast and the fused update, "
                "which keeps the float32 master weights (train.speed.fused_update auto or on)"
            )
        if self.cuda_graph and self.fused_update == "off":
            raise ValueError(
                "train.speed.cuda_graph needs the fused update (train.speed.fused_update auto or on): "
                "the reference update reads its learning rate on the host"
            )
        if self.cuda_graph and self.compile_mode in ("reduce-overhead", "max-autotune"):
            raise ValueError(
                f"train.speed.cuda_graph: train.speed.compile_mode={self.compile_mode} records CUDA "
                "graphs of its own, which cannot nest in the step's graph; use default or "
                "max-autotune-no-cudagraphs"
            )
        if self.cuda_graph_warmup <= 0:
            raise ValueError(f"train.speed.cuda_graph_warmup: must be > 0, got {self.cuda_graph_warmup}")
        if self.float8 not in FLOAT8_RECIPES:
            raise ValueError(f"train.speed.float8: unknown {self.float8!r}; choose one of {FLOAT8_RECIPES}")
        if isinstance(self.float8_modules, str) or not self.float8_modules:
            raise ValueError(
                "train.speed.float8_modules: expected a non-empty list of name patterns, "
                f"got {self.float8_modules!r}"
            )


def compile_regions(model: nn.Module, patterns: tuple[str, ...], mode: str = "default") -> list[str]:
    """Compile, in place, each submodule whose qualified name matches one of ``patterns``.

    Only outermost matches are compiled (a match inside a compiled module is part of its graph).
    Returns the compiled names; raises ``ValueError`` naming the patterns when nothing matches.
    """
    names: list[str] = []
    for name, module in model.named_modules():
        if not name or not any(fnmatchcase(name, p) for p in patterns):
            continue
        if any(name.startswith(parent + ".") for parent in names):
            continue
        module.compile(mode=mode)
        names.append(name)
    if not names:
        raise ValueError(f"train.speed.compile_regions: no submodule of the model matches {list(patterns)}")
    return names


class SpeedSetup:
    """``train.speed`` applied to one trained model on ``device`` (``bf16``: under bf16 autocast).

    After :meth:`prepare`: ``float8_layers`` (names converted to FP8), ``master_params`` (float32
    masters of bf16 parameters, or ``None``), ``compiled_regions`` (names compiled in place).
    """

    def __init__(self, cfg: SpeedConfig, device: torch.device, bf16: bool):
        if cfg.param_dtype != "float32" and not bf16:
            raise ValueError(
                f"train.speed.param_dtype={cfg.param_dtype} needs bf16 autocast: train.precision=bf16, "
                "or auto on a GPU"
            )
        self.cfg, self.device = cfg, device
        self.on_cuda = device.type == "cuda"
        self.float8_layers: list[str] = []
        self.master_params: list[torch.Tensor] | None = None
        self.compiled_regions: list[str] = []

    def prepare(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        """What changes the model itself, before an optimiser holds its parameters: FP8 layers,
        bf16 parameters (their float32 masters kept here), compiled regions. Returns the trained
        parameters ``(name, parameter)``."""
        cfg = self.cfg
        if cfg.float8 != "off":
            self.float8_layers = convert_to_float8(model, cfg.float8, cfg.float8_modules)
        trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if cfg.param_dtype != "float32":
            self.master_params = [p.detach().float().clone() for _, p in trained]
            for _, p in trained:  # requires_grad: floating point
                p.data = p.data.to(PARAM_DTYPES[cfg.param_dtype])
        if cfg.compile and cfg.compile_regions:  # in place, before DDP wraps the model
            self.compiled_regions = compile_regions(model, cfg.compile_regions, cfg.compile_mode)
        return trained

    @property
    def fused(self) -> bool:
        """Whether the update runs as one fused pass (needed by bf16 masters and CUDA graphs)."""
        cfg = self.cfg
        auto = cfg.fused_update == "auto" and cfg.compile and self.on_cuda
        return cfg.fused_update == "on" or auto or self.master_params is not None or cfg.cuda_graph

    def update(
        self, optimizer: torch.optim.AdamW, ema_params: list[torch.Tensor], grad_clip: float
    ) -> FusedUpdate | None:
        """The fused clip + AdamW + EMA update of ``optimizer``'s parameters, or ``None`` (the
        reference update: ``clip_grad_norm_``, ``optimizer.step()``, a foreach EMA)."""
        if not self.fused:
            return None
        return FusedUpdate(
            optimizer,
            ema_params,
            grad_clip,
            compile=self.cfg.compile and self.on_cuda,
            master_params=self.master_params,
        )

    def wrap(self, model: nn.Module, world: int) -> nn.Module:
        """The module the step calls: ``model``, in DDP over ``world`` > 1 processes, compiled as
        a whole unless regions were compiled."""
        out = model
        if world > 1:
            out = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.on_cuda else None
            )
        if self.cfg.compile and not self.cfg.compile_regions:
            out = torch.compile(out, mode=self.cfg.compile_mode)
        return out

    def graph(
        self,
        step: Callable[[Any, int | torch.Tensor], ObjectiveOutput],
        task: Any,
        world: int,
        before_capture: Callable[[], None],
    ) -> GraphedStep | None:
        """``step`` (the device work of a training step) recorded and replayed as a CUDA graph
        under ``cuda_graph``, keyed by ``task.graph_key``; else ``None``."""
        if not self.cfg.cuda_graph:
            return None
        problems = []
        if not self.on_cuda:
            problems.append("a CUDA device")
        if world > 1:
            problems.append(f"one process (this run has {world})")
        graph_key: Callable[[int], Hashable] | None = getattr(task, "graph_key", None)
        if graph_key is None:
            problems.append(f"a task with graph_key(step) ({type(task).__name__} has none)")
        if problems:
            raise ValueError("train.speed.cuda_graph needs " + " and ".join(problems))
        # the graph hands the loss the step as a device tensor
        return GraphedStep(step, graph_key, self.cfg.cuda_graph_warmup, before_capture=before_capture)
