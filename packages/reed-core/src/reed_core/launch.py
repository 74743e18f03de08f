"""Run a training entry point locally or as a Slurm job (through submitit) that survives requeues.

A job submitted here is a :class:`ResumableJob`, a ``submitit.helpers.Checkpointable``: when Slurm
preempts it or its time limit nears, submitit sends ``SIGUSR2`` (``signal_delay_s`` = 90 s before
the limit), calls :meth:`ResumableJob.checkpoint`, which resubmits the same call, and requeues the
job (``scontrol requeue``). The training itself needs no state in the pickle: the reed-core
``Trainer`` writes ``run_dir/checkpoints/last.pt`` every ``ckpt_every`` steps and resumes from it
when it exists, and a task's ``batch(step)`` is a function of the step, so the requeued job
continues exactly (at most ``ckpt_every`` steps are recomputed). An administrator's
``scontrol requeue`` resumes the same way. The run folder must therefore be fixed before the
job is submitted; :func:`launch_or_run` checks that.

With several tasks (``nodes * tasks_per_node > 1``) each task exports the ``torch.distributed``
variables (``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``) as ``torchrun`` would, so the trainer's DDP path runs unchanged; the trainer
picks ``cuda:LOCAL_RANK`` itself, so ``CUDA_VISIBLE_DEVICES`` is left as Slurm set it.

Command line (added by :func:`add_slurm_args`)::

    python -m reed_<domain>.train --preset X --slurm --slurm-partition gpu --slurm-gpus-per-node 8 \\
        --slurm-nodes 2 --slurm-time 1440 --slurm-account proj [KEY=VALUE ...]
    python -m reed_<domain>.train ... --slurm-dry-run     # print the sbatch script, submit nothing
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
from submitit.helpers import Checkpointable, DelayedSubmission
from submitit.slurm.slurm import _make_sbatch_string

from reed_core.cli import UserError, exit_with_error
from reed_core.config import add_config_args, config_from_args

# The dataclass field each --slurm-* flag sets; errors from SlurmConfig name the flag.
FLAG_OF_FIELD = {
    "partition": "--slurm-partition",
    "nodes": "--slurm-nodes",
    "gpus_per_node": "--slurm-gpus-per-node",
    "cpus_per_task": "--slurm-cpus-per-task",
    "time_min": "--slurm-time",
    "mem_gb": "--slurm-mem-gb",
    "account": "--slurm-account",
    "qos": "--slurm-qos",
    "job_name": "--slurm-job-name",
    "folder": "--slurm-folder",
}


TORCH_DISTRIBUTED_VARS = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
)


class SlurmConfigError(ValueError):
    """A bad Slurm setting; ``str(err)`` starts with the field (or flag) it concerns."""

    def __init__(self, name: str, message: str):
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


@dataclass(frozen=True)
class SlurmConfig:
    """Resources of one Slurm job (``sbatch`` options).

    ``tasks_per_node`` defaults to ``gpus_per_node`` (one task per GPU, DDP) or 1 without GPUs.
    ``folder`` holds submitit's pickles and the job logs (``%j`` expands to the job id); ``None``
    lets :func:`launch_or_run` put it in the run folder. ``extra`` adds any other ``sbatch``
    option, e.g. ``{"exclusive": True, "mail-type": "END"}``. A run longer than ``time_min``
    continues over up to ``max_timeouts`` requeues (submitit's default of 3 would end a long
    training early); each resumes from the last checkpoint.
    """

    partition: str | None = None
    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int | None = None
    tasks_per_node: int | None = None
    time_min: int = 60
    mem_gb: float | None = None
    account: str | None = None
    qos: str | None = None
    job_name: str = "reed"
    folder: str | None = None
    constraint: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    max_timeouts: int = 30  # requeues after reaching the time limit (preemptions are not counted)

    def __post_init__(self) -> None:
        for name in ("nodes", "time_min", "max_timeouts"):
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("gpus_per_node", self.gpus_per_node, minimum=0)
        for name in ("cpus_per_task", "tasks_per_node"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), minimum=1)
        if self.mem_gb is not None:
            if isinstance(self.mem_gb, bool) or not isinstance(self.mem_gb, (int, float)):
                raise SlurmConfigError("mem_gb", f"expected a number of GB, got {self.mem_gb!r}")
            if not self.mem_gb > 0:
                raise SlurmConfigError("mem_gb", f"must be > 0, got {self.mem_gb}")
        for name in ("partition", "account", "qos", "job_name", "folder", "constraint"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, str) or not value.strip():
                raise SlurmConfigError(name, f"expected a non-empty string, got {value!r}")
            if name != "folder" and any(c.isspace() for c in value):
                raise SlurmConfigError(name, f"must not contain whitespace, got {value!r}")
        if not isinstance(self.extra, Mapping):
            raise SlurmConfigError("extra", f"expected a mapping of sbatch options, got {self.extra!r}")
        for key in self.extra:
            if not isinstance(key, str) or not key or key.startswith("-") or " " in key:
                raise SlurmConfigError(
                    "extra", f"sbatch option names look like 'mail-type' (no leading --), got {key!r}"
                )
        if self.tasks_per_node is None:
            object.__setattr__(self, "tasks_per_node", self.gpus_per_node or 1)
        object.__setattr__(self, "extra", dict(self.extra))

    @property
    def num_tasks(self) -> int:
        return self.nodes * self.tasks_per_node


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SlurmConfigError(name, f"expected an integer, got {value!r}")
    if value < minimum:
        raise SlurmConfigError(name, f"must be >= {minimum}, got {value}")


# --- command line ------------------------------------------------------------------------------


def add_slurm_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--slurm``, ``--slurm-dry-run`` and the ``--slurm-*`` resource flags to ``parser``."""
    g = parser.add_argument_group("Slurm (submitit)")
    g.add_argument(
        "--slurm", action="store_true", help="submit this run as a Slurm job instead of running it here"
    )
    g.add_argument(
        "--slurm-dry-run",
        action="store_true",
        help="print the sbatch script that --slurm would submit, and exit",
    )
    g.add_argument("--slurm-partition", metavar="NAME", help="partition (default: the cluster's)")
    g.add_argument("--slurm-nodes", type=int, metavar="N", help="nodes (default: 1)")
    g.add_argument(
        "--slurm-gpus-per-node",
        type=int,
        metavar="N",
        help="GPUs per node; one task (DDP rank) per GPU (default: 0)",
    )
    g.add_argument("--slurm-cpus-per-task", type=int, metavar="N", help="CPUs per task")
    g.add_argument(
        "--slurm-time",
        type=int,
        metavar="MIN",
        help="time limit in minutes; the job requeues itself when it runs out (default: 60)",
    )
    g.add_argument("--slurm-mem-gb", type=float, metavar="GB", help="memory per node in GB")
    g.add_argument("--slurm-account", metavar="NAME", help="account to charge")
    g.add_argument("--slurm-qos", metavar="NAME", help="quality of service")
    g.add_argument("--slurm-job-name", metavar="NAME", help="job name (default: reed)")
    g.add_argument(
        "--slurm-folder",
        metavar="DIR",
        help="submitit folder for pickles and logs; %%j is the job id (default: RUN_DIR/slurm/%%j)",
    )
    return parser


def slurm_config_from_args(args: argparse.Namespace) -> SlurmConfig | None:
    """The :class:`SlurmConfig` of ``--slurm``/``--slurm-dry-run``, or ``None`` to run locally.

    Raises :class:`SlurmConfigError` naming the flag for a bad value, and for ``--slurm-*``
    resource flags given without ``--slurm`` or ``--slurm-dry-run`` (they would be ignored).
    """
    given = {name: getattr(args, flag[2:].replace("-", "_"), None) for name, flag in FLAG_OF_FIELD.items()}
    given = {name: value for name, value in given.items() if value is not None}
    if not (getattr(args, "slurm", False) or getattr(args, "slurm_dry_run", False)):
        if given:
            flag = FLAG_OF_FIELD[next(iter(given))]
            raise SlurmConfigError(flag, "given without --slurm or --slurm-dry-run")
        return None
    try:
        return SlurmConfig(**given)
    except SlurmConfigError as err:
        raise SlurmConfigError(FLAG_OF_FIELD.get(err.name, err.name), err.message) from None


# --- the job ------------------------------------------------------------------------------------


class ResumableJob(Checkpointable):
    """``fn(*args)`` as a Slurm job that requeues itself on preemption or timeout.

    On ``SIGUSR2`` submitit calls :meth:`checkpoint`, pickles the call it returns and requeues the
    job; the new run calls ``fn(*args)`` again, and the trainer resumes from
    ``run_dir/checkpoints/last.pt``.
    """

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn

    def __call__(self, *args: Any) -> Any:
        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            # MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE as torchrun sets them;
            # overwrite: values inherited from the submitting shell are not this task's.
            submitit.helpers.TorchDistributedEnvironment().export(
                set_cuda_visible_devices=False, overwrite=True
            )
        else:  # sbatch exports the submitting shell's environment; a single task is no DDP group
            for key in TORCH_DISTRIBUTED_VARS:
                os.environ.pop(key, None)
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        if restarts and env.global_rank == 0:
            print(f"[reed.launch] job {env.job_id} restarted ({restarts}x); resuming", flush=True)
        return self.fn(*args)

    def checkpoint(self, *args: Any) -> DelayedSubmission:
        """Resubmit the same call: the run folder's checkpoint carries the training state."""
        return DelayedSubmission(self, *args)


def sbatch_parameters(cfg: SlurmConfig) -> dict[str, Any]:
    """``submitit.SlurmExecutor`` parameters (sbatch option names) of ``cfg``."""
    params: dict[str, Any] = {
        "job_name": cfg.job_name,
        "time": cfg.time_min,
        "nodes": cfg.nodes,
        "ntasks_per_node": cfg.tasks_per_node,
    }
    optional = {
        "partition": cfg.partition,
        "cpus_per_task": cfg.cpus_per_task,
        "gpus_per_node": cfg.gpus_per_node or None,
        "mem": _mem(cfg.mem_gb) if cfg.mem_gb is not None else None,
        "account": cfg.account,
        "qos": cfg.qos,
        "constraint": cfg.constraint,
        "additional_parameters": dict(cfg.extra) or None,
    }
    params.update({k: v for k, v in optional.items() if v is not None})
    return params


def _mem(mem_gb: float) -> str:
    return f"{int(mem_gb)}GB" if float(mem_gb).is_integer() else f"{int(mem_gb * 1024)}MB"


def sbatch_script(cfg: SlurmConfig) -> str:
    """The sbatch script that :func:`submit` would submit for ``cfg`` (needs no Slurm install)."""
    folder = _folder(cfg)
    # the command submitit.SlurmExecutor puts in every script (SlurmExecutor._submitit_command_str)
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    return _make_sbatch_string(command=command, folder=folder, **sbatch_parameters(cfg))


def _folder(cfg: SlurmConfig) -> Path:
    if cfg.folder is None:
        raise SlurmConfigError("folder", "no submitit folder (set --slurm-folder)")
    return Path(cfg.folder).expanduser().absolute()


def submit(
    fn: Callable[..., Any], args: tuple = (), slurm_cfg: SlurmConfig | None = None, dry_run: bool = False
) -> Any:
    """Submit ``fn(*args)`` as a requeueable Slurm job; returns the ``submitit`` job.

    ``dry_run`` prints the sbatch script and returns it as a string, submitting nothing.
    """
    if slurm_cfg is None:
        raise SlurmConfigError("slurm_cfg", "a SlurmConfig is required")
    if not isinstance(args, tuple):
        raise TypeError(f"submit: args must be a tuple of fn's arguments, got {type(args).__name__}")
    if dry_run:
        script = sbatch_script(slurm_cfg)
        print(script)
        return script
    if shutil.which("sbatch") is None:
        raise RuntimeError("--slurm: sbatch not found; is this a Slurm login node?")
    executor = submitit.SlurmExecutor(folder=_folder(slurm_cfg), max_num_timeout=slurm_cfg.max_timeouts)
    executor.update_parameters(**sbatch_parameters(slurm_cfg))
    return executor.submit(ResumableJob(fn), *args)


# --- entry points ---------------------------------------------------------------------------------


def find_run_dir(cfg: Any) -> Any:
    """``cfg.run_dir`` or ``cfg.train.run_dir`` (the run folder of a domain config), else ``None``."""
    for owner in (cfg, getattr(cfg, "train", None)):
        if owner is not None and hasattr(owner, "run_dir"):
            return owner.run_dir
    return None


def launch_or_run(
    main_fn: Callable[[Any], Any], cfg: Any, args: argparse.Namespace, run_dir: str | Path | None = None
) -> Any:
    """Run ``main_fn(cfg)`` here, or submit it with ``--slurm`` (print its script with
    ``--slurm-dry-run``). Domain CLIs call this after resolving ``cfg``.

    The run folder (``run_dir`` or found in ``cfg``) must be set: a requeued job resumes from its
    checkpoint there. The submitit folder defaults to ``RUN_DIR/slurm/%j``. Returns ``main_fn``'s
    result, the submitted job, or the dry-run script. Bad flags exit with a message naming them.
    """
    try:
        slurm_cfg = slurm_config_from_args(args)
    except SlurmConfigError as err:
        exit_with_error(err)
    if slurm_cfg is None:
        check_local_device(cfg)
        return main_fn(cfg)
    run_dir = run_dir if run_dir is not None else find_run_dir(cfg)
    if not run_dir:
        exit_with_error(
            "--slurm: the config has no run_dir; set it so that a requeued job "
            "resumes from its checkpoint there"
        )
    if slurm_cfg.folder is None:
        slurm_cfg = dataclasses.replace(slurm_cfg, folder=str(Path(run_dir) / "slurm" / "%j"))
    dry_run = bool(getattr(args, "slurm_dry_run", False))
    job = submit(main_fn, (cfg,), slurm_cfg, dry_run=dry_run)
    if not dry_run:
        print(f"submitted Slurm job {job.job_id}: run {run_dir}, logs {job.paths.stdout}", flush=True)
    return job


def check_local_device(cfg: Any) -> None:
    """``train.device`` of a run about to start here names a device this machine has (checked
    before anything is written; a Slurm job's node is not this machine, so submissions skip it)."""
    device = getattr(getattr(cfg, "train", None), "device", None)
    if not isinstance(device, str) or device == "auto":
        return
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise UserError(f"train.device: unknown device {device!r}; use auto, cpu or cuda[:N]") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"train.device={device}: this machine has no usable CUDA device (torch.cuda.is_available() "
            "is false); use train.device=cpu (or auto), or run on a GPU node (--slurm)"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"train.device={device}: this machine has {torch.cuda.device_count()} CUDA devices")


def add_train_args(parser: argparse.ArgumentParser, presets: Mapping[str, Any]) -> argparse.ArgumentParser:
    """The command line every training entry point shares: ``--preset``, ``--config FILE``,
    ``KEY=VALUE`` overrides, ``--run-dir``/``--steps`` shorthands and the ``--slurm*`` flags."""
    add_config_args(parser, presets)
    parser.add_argument("--run-dir", default=None, help="shorthand for train.run_dir=DIR")
    parser.add_argument("--steps", type=int, default=None, help="shorthand for train.steps=N")
    return add_slurm_args(parser)


def train_config_from_args(
    cls: type, presets: Mapping[str, Callable[[], Any]], args: argparse.Namespace
) -> Any:
    """Resolve the experiment config of :func:`add_train_args`' flags (exits naming a bad field)."""
    cfg = config_from_args(cls, presets, args)
    shorthands = {"run_dir": args.run_dir, "steps": args.steps}
    changes = {name: value for name, value in shorthands.items() if value is not None}
    if changes:
        try:
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **changes))
        except ValueError as err:
            flags = ", ".join(f"--{name.replace('_', '-')}" for name in changes)
            exit_with_error(f"{flags}: {err}")
    return cfg
