"""The training loop shared by every domain.

``Trainer(cfg, task).fit()`` reads top to bottom: set up (device, model, EMA, speed options,
optimiser and update, DDP / compile / CUDA graph), resume from ``run_dir/checkpoints/last.pt``
if it exists, then a loop of ``train_step`` with periodic logging, evaluation and atomic
checkpoints. A domain implements :class:`Task`:

* ``model``: the ``nn.Module`` that is trained (e.g. a :class:`reed_core.model.ReedModel`);
* ``steps_per_epoch``;
* ``batch(step, rank, world, device)``: the batch of ``step`` for this rank, a pure function of
  the step (use :class:`EpochSampler`), so a resumed run sees the same data;
* ``loss(model, batch, step) -> ObjectiveOutput``: calls ``model`` (the DDP / compiled wrapper)
  once and combines the terms (:class:`reed_core.objective.ReedObjective`);
* optionally ``evaluate(model, ema_model, step, run_dir) -> dict`` and ``state_dict`` /
  ``load_state_dict`` for task state outside the model;
* optionally ``graph_key(step)``, which opts in to ``train.speed.cuda_graph``: ``loss`` is then given
  ``step`` as a 0-d float64 tensor on the device (a curriculum evaluates on it,
  :mod:`reed_core.schedules`), and ``graph_key`` returns a hashable of every host value ``loss``
  still derives from ``step`` (``()`` when none); a recorded step is replayed while it is unchanged.

Speed: bf16 autocast, fused AdamW on CUDA, a foreach EMA; the options of ``train.speed``
(``torch.compile``, the fused clip + AdamW + EMA pass, FP8 matmuls, bf16 parameters with float32
masters, the whole step as one CUDA graph) are applied in one place, :mod:`reed_core.speed`.
Logged terms are summed on the device and read back once per ``log_every`` steps (no per-step sync).
Exact resume: model, EMA, optimiser, step and every RNG state are checkpointed together.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm.auto import tqdm

from reed_core.best import BestTracker
from reed_core.config import config_to_dict, save_config
from reed_core.cuda_graph import GraphedStep
from reed_core.objective import ObjectiveOutput
from reed_core.optim import FusedUpdate
from reed_core.speed import SpeedConfig, SpeedSetup

PRECISIONS = ("auto", "bf16", "fp32")


@dataclass(frozen=True)
class TrainConfig:
    run_dir: str = "runs/default"
    steps: int = 1000
    batch_size: int = 64  # global batch, split over ranks
    lr: float = 1e-4
    lr_warmup_steps: int = 0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    ema_decay: float = 0.9999
    ema_warmup: bool = True  # decay_t = min(ema_decay, (1 + t) / (10 + t))
    precision: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    speed: SpeedConfig = field(default_factory=SpeedConfig)  # compile, fused update, FP8, CUDA graph
    log_every: int = 50
    ckpt_every: int = 1000
    eval_every: int = 0  # 0: evaluate only at the end (if the task can)
    # keep checkpoints/best.pt at the best value of this evaluation metric (e.g.
    # "eval/ema/validation/recovery"); patience > 0: stop after that many evaluations without a new
    # best (reed_core.best)
    best_metric: str = ""
    best_mode: str = "max"  # max | min
    patience: int = 0
    seed: int = 0
    device: str = "auto"
    resume: bool = True
    tensorboard: bool = True
    progress_bar: bool = True

    # the speed options moved into train.speed; ema_overlap measured slower and was removed
    RENAMED: ClassVar[dict[str, str]] = {
        **{name: f"train.speed.{name}" for name in (f.name for f in dataclass_fields(SpeedConfig))},
        "ema_overlap": "",
    }

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every", "ckpt_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"train.{name}: must be > 0, got {getattr(self, name)}")
        for name in ("lr", "weight_decay", "grad_clip", "lr_warmup_steps", "eval_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name}: must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"train.ema_decay: must lie in [0, 1), got {self.ema_decay}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"train.precision: unknown {self.precision!r}; choose one of {PRECISIONS}")
        if self.best_mode not in ("max", "min"):
            raise ValueError(f"train.best_mode: unknown {self.best_mode!r}; choose max or min")
        if self.patience < 0:
            raise ValueError(f"train.patience: must be >= 0, got {self.patience}")
        if self.patience and not self.best_metric:
            raise ValueError("train.patience: needs train.best_metric (the metric whose best it waits for)")
        if self.speed.param_dtype != "float32" and self.precision == "fp32":
            raise ValueError(
                f"train.speed.param_dtype={self.speed.param_dtype} needs bf16 autocast (train.precision "
                "auto or bf16)"
            )


@runtime_checkable
class Task(Protocol):
    model: nn.Module
    steps_per_epoch: int

    def batch(self, step: int, rank: int, world: int, device: torch.device) -> Any: ...

    def loss(self, model: nn.Module, batch: Any, step: int) -> ObjectiveOutput: ...


class EpochSampler:
    """Indices of the global batch of ``step``: a fresh seeded permutation every epoch.

    ``indices(step, rank, world)`` is a pure function of its arguments, so a resumed run and an
    uninterrupted one draw the same data, and ``world`` ranks split one global batch (rank ``r``
    takes every ``world``-th example) exactly as a single process would see it.
    """

    def __init__(self, num_examples: int, batch_size: int, seed: int = 0):
        if num_examples < batch_size:
            raise ValueError(f"batch_size {batch_size} exceeds the {num_examples} examples")
        self.n, self.batch_size, self.seed = num_examples, batch_size, seed
        self.steps_per_epoch = num_examples // batch_size
        self._epoch, self._perm = -1, np.arange(0)

    def indices(self, step: int, rank: int = 0, world: int = 1) -> np.ndarray:
        epoch, i = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        batch = self._perm[i * self.batch_size : (i + 1) * self.batch_size]
        return batch[rank::world]


# ---------------------------------------------------------------------------------------------
# distributed + checkpoint helpers


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> DistInfo:
    """Join the process group when launched by torchrun / Slurm (``WORLD_SIZE`` > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), NumPy and Python: call before building a model."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore :func:`rng_state`; the generator states may have been loaded onto a GPU (a checkpoint
    read with ``map_location`` cuda), the setters take CPU byte tensors."""
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """``torch.save`` to a temporary file, fsync, then ``os.replace``: never a torn checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class CheckpointError(RuntimeError):
    pass


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`; a clear error if it is not one."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # truncated zip, wrong format, pickle errors
        raise CheckpointError(f"checkpoint {path} is corrupt or not a REED checkpoint: {err}") from err
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"checkpoint {path} is not a REED checkpoint (no 'model' entry)")
    return state


def unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DDP


# ---------------------------------------------------------------------------------------------


class Trainer:
    """Set up in the order each part needs: device and processes, the model and its EMA, the
    speed options that change the model (``train.speed``), the optimiser and update, then how
    the step runs (DDP, compile, CUDA graph). :meth:`fit` resumes and runs the loop."""

    def __init__(self, cfg: TrainConfig, task: Task, experiment_config: Any = None):
        self.cfg, self.task = cfg, task
        self.experiment_config = experiment_config if experiment_config is not None else cfg
        kind = (
            ("cuda" if torch.cuda.is_available() else "cpu")
            if cfg.device == "auto"
            else torch.device(cfg.device).type
        )
        self.dist = init_distributed(kind)
        if kind == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        else:
            self.device = torch.device(cfg.device if cfg.device != "auto" else "cpu")
        use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and kind == "cuda")
        self.autocast_dtype = torch.bfloat16 if use_bf16 else None
        self.run_dir = Path(cfg.run_dir)
        self.ckpt_path = self.run_dir / "checkpoints" / "last.pt"
        self.best = (
            BestTracker(self.ckpt_path.parent, cfg.best_metric, cfg.best_mode, cfg.patience, cfg.resume)
            if cfg.best_metric
            else None
        )
        self.step = 0
        seed_everything(cfg.seed + self.dist.rank)

        # the model, and its EMA (which keeps plain layers and float32 weights: it samples)
        self.model = task.model.to(self.device)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        # speed options that change the model: FP8 layers, bf16 weights + float32 masters, regions
        self.speed = SpeedSetup(cfg.speed, self.device, use_bf16)
        self._trained = self.speed.prepare(self.model)
        # optimiser and update (fused: clip + AdamW + EMA in one pass)
        self.optimizer = torch.optim.AdamW(
            [p for _, p in self._trained],
            lr=cfg.lr,
            betas=cfg.betas,
            weight_decay=cfg.weight_decay,
            fused=self.device.type == "cuda",
        )
        self._ema_params = list(self.ema.parameters())
        self._model_params = list(self.model.parameters())
        ema_trained = [e for e, p in zip(self._ema_params, self._model_params) if p.requires_grad]
        self.fused_update: FusedUpdate | None = self.speed.update(self.optimizer, ema_trained, cfg.grad_clip)
        # how the step runs: DDP, compiled, recorded as a CUDA graph
        self.train_model = self.speed.wrap(self.model, self.dist.world)
        self.graphed_step: GraphedStep | None = self.speed.graph(
            self._device_step,
            task,
            self.dist.world,
            before_capture=lambda: self.optimizer.zero_grad(set_to_none=True),
        )

    @property
    def master_params(self) -> list[torch.Tensor] | None:
        """float32 master weights of bf16 parameters (``train.speed.param_dtype``), else ``None``."""
        return self.speed.master_params

    @property
    def float8_layers(self) -> list[str]:
        return self.speed.float8_layers

    @property
    def compiled_regions(self) -> list[str]:
        return self.speed.compiled_regions

    # -- state ---------------------------------------------------------------------------------
    def model_state_dict(self) -> dict[str, Any]:
        """The model's ``state_dict``, with the float32 master weights where the model holds bf16."""
        state = self.model.state_dict()
        if self.master_params is not None:
            for (name, _), master in zip(self._trained, self.master_params):
                state[name] = master
        return state

    def state_dict(self) -> dict[str, Any]:
        state = {
            "step": self.step,
            "model": self.model_state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng_state(),
            "config": config_to_dict(self.experiment_config),
        }
        if hasattr(self.task, "state_dict"):
            state["task"] = self.task.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.graphed_step is not None:  # the optimizer's state tensors are about to be replaced
            self.graphed_step.reset()
        self.model.load_state_dict(state["model"])  # rounds into bf16 parameters where they are
        self.ema.load_state_dict(state["ema"])
        if self.master_params is None:
            self.optimizer.load_state_dict(state["optimizer"])
        else:
            with torch.no_grad():
                for (name, _), master in zip(self._trained, self.master_params):
                    master.copy_(state["model"][name])
            # AdamW.load_state_dict would cast the moments to the (bf16) parameters' dtype
            saved = state["optimizer"]
            self.optimizer.load_state_dict({**saved, "state": {}})
            for index, values in saved["state"].items():  # indices follow the trained parameters
                self.optimizer.state[self._trained[int(index)][1]] = {
                    k: v.to(self.device, torch.float32) for k, v in values.items()
                }
        self.step = int(state["step"])
        if "task" in state and hasattr(self.task, "load_state_dict"):
            self.task.load_state_dict(state["task"])
        per_rank = state.get("rng_per_rank")
        if per_rank is not None and len(per_rank) == self.dist.world:
            set_rng_state(per_rank[self.dist.rank])
        elif self.dist.rank == 0:
            set_rng_state(state["rng"])
        else:  # resumed on a different world size: re-derive from (seed, rank, step)
            torch.manual_seed(self.cfg.seed + self.dist.rank + 1_000_003 * self.step)

    def save(self) -> None:
        per_rank = None
        if self.dist.world > 1:  # every rank's RNG, so each resumes its own stream
            per_rank = [None] * self.dist.world
            dist.all_gather_object(per_rank, rng_state())
        if self.dist.is_main:
            state = self.state_dict()
            if per_rank is not None:
                state["rng_per_rank"] = per_rank
            save_checkpoint(state, self.ckpt_path)
        if self.dist.world > 1:
            dist.barrier()

    # -- one step ------------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        if self.cfg.lr_warmup_steps and step < self.cfg.lr_warmup_steps:
            return self.cfg.lr * (step + 1) / self.cfg.lr_warmup_steps
        return self.cfg.lr

    def ema_decay_at(self, step: int) -> float:
        if not self.cfg.ema_warmup:
            return self.cfg.ema_decay
        return min(self.cfg.ema_decay, (1.0 + step) / (10.0 + step))

    def train_step(self, batch: Any) -> ObjectiveOutput:
        """One step on ``batch``: loss, backward, clip + AdamW + EMA (replayed from a CUDA graph
        under ``train.speed.cuda_graph``)."""
        lr, ema_decay = self.lr_at(self.step), self.ema_decay_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.fused_update is not None:
            self.fused_update.set_rates(lr, ema_decay)
        if self.graphed_step is not None:
            return self.graphed_step(batch, self.step)
        return self._device_step(batch, self.step)

    def _device_step(self, batch: Any, step: int | torch.Tensor) -> ObjectiveOutput:
        """The device work of one step; with the fused update it reads no host state but
        ``step`` (through the task; a device tensor under ``train.speed.cuda_graph``) and can be
        recorded as a CUDA graph."""
        with torch.autocast(
            self.device.type,
            dtype=self.autocast_dtype or torch.float32,
            enabled=self.autocast_dtype is not None,
        ):
            out = self.task.loss(self.train_model, batch, step)
        out.loss.backward()
        if self.fused_update is not None:  # the same update as below, in one pass
            grad_norm = self.fused_update.apply()
        else:
            grad_norm = None
            if self.cfg.grad_clip > 0:
                grad_norm = nn.utils.clip_grad_norm_(self._model_params, self.cfg.grad_clip)
            self.optimizer.step()
            with torch.no_grad():
                rate = 1.0 - self.ema_decay_at(step)
                torch._foreach_lerp_(self._ema_params, self._model_params, rate)
        self.optimizer.zero_grad(set_to_none=True)
        if grad_norm is not None:
            out.terms["grad_norm"] = grad_norm.detach()
        return out

    # -- the loop ------------------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        cfg, is_main = self.cfg, self.dist.is_main
        if cfg.resume and self.ckpt_path.exists():
            self.load_state_dict(load_checkpoint(self.ckpt_path, self.device))
            if is_main and self.step >= cfg.steps:
                print(
                    f"run {self.run_dir} is already complete at step {self.step} (train.steps={cfg.steps}): "
                    f"nothing to train. Its outputs are in {self.run_dir.resolve()} (checkpoints/last.pt, "
                    "metrics.jsonl, config.yaml). To train again, choose a new run folder "
                    "(train.run_dir=DIR or --run-dir DIR), or set train.resume=false to start over here "
                    "(overwrites its checkpoint); raise train.steps to continue this run.",
                    flush=True,
                )
            elif is_main:
                print(f"resumed from {self.ckpt_path} at step {self.step}", flush=True)
        if is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.experiment_config, self.run_dir / "config.yaml")
        logger = MetricsLogger(self.run_dir, enabled=is_main, tensorboard=cfg.tensorboard)
        logger.truncate_after(self.step)  # drop lines logged after the checkpoint we resumed from
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            disable=not (is_main and cfg.progress_bar) or self.step >= cfg.steps,
            desc=self.run_dir.name,
            dynamic_ncols=True,
            mininterval=1.0,
        )
        sums: dict[str, torch.Tensor] = {}
        host: dict[str, float] = {}
        count, t_last = 0, time.perf_counter()
        # a run resumed at its end (a requeued job that had finished) returns what it logged there
        last = final_record(self.run_dir, self.step) if self.step >= cfg.steps else {}
        steps_per_epoch = max(int(self.task.steps_per_epoch), 1)
        self.model.train()
        if self.best is not None and self.best.stopped and is_main:
            r = self.best.record
            print(f"run {self.run_dir} stopped early (train.patience): best {r.metric} {r.value} at {r.step}")
        with _TerminationFlag(enabled=self.dist.world == 1) as terminated:
            while self.step < cfg.steps and not (self.best is not None and self.best.stopped):
                t_batch = time.perf_counter()
                batch = self.task.batch(self.step, self.dist.rank, self.dist.world, self.device)
                host["host/batch_ms"] = 1000 * (time.perf_counter() - t_batch)  # a stall shows here first
                out = self.train_step(batch)
                for name, value in out.terms.items():
                    if isinstance(value, torch.Tensor):
                        value = value.detach().float()
                        # always a new tensor: a term may live in a CUDA graph's output buffer
                        # (compile_mode=reduce-overhead), which the next step overwrites
                        sums[name] = sums[name] + value if name in sums else value.clone()
                    else:
                        host[name] = float(value)
                count += 1
                self.step += 1
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    names = list(sums)
                    stacked = torch.stack([sums[n] for n in names]) / count
                    if self.dist.world > 1:
                        dist.all_reduce(stacked)
                        stacked /= self.dist.world
                    values = dict(zip(names, stacked.tolist()))  # the one host sync per interval
                    values.update(host)
                    now = time.perf_counter()
                    values.update(
                        step=self.step,
                        epoch=self.step / steps_per_epoch,
                        lr=self.lr_at(self.step - 1),
                        steps_per_s=count / (now - t_last),
                    )
                    if not all(math.isfinite(v) for k, v in values.items() if k.startswith("loss")):
                        raise FloatingPointError(f"non-finite loss at step {self.step}: {values}")
                    logger.log(values)
                    bar.set_postfix(loss=f"{values.get('loss', float('nan')):.4f}")
                    last, sums, host, count, t_last = values, {}, {}, 0, now
                at_checkpoint = self.step % cfg.ckpt_every == 0 or self.step == cfg.steps
                if at_checkpoint:
                    self.save()
                if (cfg.eval_every and self.step % cfg.eval_every == 0) or self.step == cfg.steps:
                    results = self.evaluate(logger)
                    last.update(results)
                    if self.best is not None and self.track_best(results):
                        self.save()  # stopped early: last.pt at this step, so a resumed run stays stopped
                if terminated.is_set:
                    if not at_checkpoint:
                        self.save()
                    print(
                        f"run {self.run_dir}: stopped by SIGTERM at step {self.step}; checkpoint saved "
                        f"to {self.ckpt_path} (run the same command again to resume)",
                        flush=True,
                    )
                    break
        bar.close()
        logger.close()
        return last

    def track_best(self, results: dict[str, float]) -> bool:
        """Rank 0 updates ``best.json`` (and ``best.pt`` on a new best); every rank learns whether
        training stops here (``train.patience``)."""
        improved = False
        if self.dist.is_main:
            improved = self.best.update(results, self.step)
            if improved:
                save_checkpoint(self.state_dict(), self.best.checkpoint)
            self.best.save()
        if self.dist.world > 1:
            flag = torch.tensor([float(self.best.stopped)], device=self.device)
            dist.broadcast(flag, 0)
            self.best.record.stopped = bool(flag.item())
        return self.best.stopped

    def evaluate(self, logger: MetricsLogger) -> dict[str, float]:
        if not hasattr(self.task, "evaluate"):
            return {}
        results: dict[str, float] = {}
        if self.dist.is_main:
            self.model.eval()
            # bf16 parameters need autocast to meet float32 inputs (the EMA then runs under it too)
            low_precision = torch.autocast(
                self.device.type, torch.bfloat16, enabled=self.master_params is not None
            )
            with torch.no_grad(), low_precision:
                results = {
                    f"eval/{k}": float(v)
                    for k, v in self.task.evaluate(self.model, self.ema, self.step, self.run_dir).items()
                }
            self.model.train()
            logger.log({"step": self.step, **results})
        if self.dist.world > 1:
            dist.barrier()
        return results


class _TerminationFlag:
    """Set by SIGTERM (``timeout``, ``kill``, a scheduler's preemption) while ``fit`` runs, so the
    loop checkpoints after the current step and returns instead of dying with the steps since the
    last checkpoint. Single-process runs in the main thread only: a multi-rank run would need the
    ranks to agree on the step to stop at. A handler installed before (submitit's, which ignores
    Slurm's SIGTERM and checkpoints on SIGUSR2 before a requeue) is left in place."""

    def __init__(self, enabled: bool):
        self.is_set = False
        self._previous = None
        if not enabled or threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):  # nobody else handles it
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        self.is_set = True

    def __enter__(self) -> _TerminationFlag:
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


class MetricsLogger:
    """JSON lines in ``run_dir/metrics.jsonl`` (+ TensorBoard when installed), rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"))
            except ImportError:
                self.tb = None

    def truncate_after(self, step: int) -> None:
        """Keep only records up to ``step`` (atomically), so a resumed run logs each step once."""
        if not (self.enabled and self.path.exists()):
            return
        lines = self.path.read_text().splitlines()
        kept = [ln for ln in lines if ln.strip() and json.loads(ln).get("step", 0) <= step]
        if len(kept) != len(lines):
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text("".join(ln + "\n" for ln in kept))
            os.replace(tmp, self.path)

    def log(self, values: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(dict(values)) + "\n")
        if self.tb is not None:
            step = int(values["step"])
            for key, value in values.items():
                if key != "step":
                    self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, float]]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def final_record(run_dir: str | Path, step: int) -> dict[str, float]:
    """The records ``metrics.jsonl`` holds for ``step`` (training terms, then evaluation) merged
    into one, as ``Trainer.fit`` returned them when it reached that step; ``{}`` without a log."""
    if not (Path(run_dir) / "metrics.jsonl").exists():
        return {}
    merged: dict[str, float] = {}
    for record in read_metrics(run_dir):
        if record.get("step") == step:
            merged.update(record)
    return merged
