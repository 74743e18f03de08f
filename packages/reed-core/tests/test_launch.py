"""reed_core.launch without a cluster: config validation, flags, the dry-run script, the job wrapper.

The real submissions (a training run, a requeue that resumes) are in the workspace's
tests/test_slurm.py, against the local cluster of tools/slurm_local.sh.
"""

from __future__ import annotations

import argparse
import os
import pickle

import cloudpickle
import pytest
import submitit
from submitit.helpers import Checkpointable, DelayedSubmission

from reed_core.launch import (
    ResumableJob,
    SlurmConfig,
    SlurmConfigError,
    add_slurm_args,
    launch_or_run,
    sbatch_parameters,
    sbatch_script,
    slurm_config_from_args,
    submit,
)


def parse(*argv: str) -> argparse.Namespace:
    return add_slurm_args(argparse.ArgumentParser()).parse_args(list(argv))


def sbatch_lines(script: str) -> dict[str, str]:
    """``#SBATCH --key=value`` lines of a script as {key: value} (value "" for bare flags)."""
    out = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH --"):
            key, _, value = line[len("#SBATCH --") :].partition("=")
            out[key] = value
    return out


# --- SlurmConfig ----------------------------------------------------------------------------------


def test_tasks_per_node_defaults_to_one_per_gpu():
    assert SlurmConfig().tasks_per_node == 1
    assert SlurmConfig(gpus_per_node=4).tasks_per_node == 4
    assert SlurmConfig(gpus_per_node=4, nodes=2).num_tasks == 8
    assert SlurmConfig(gpus_per_node=4, tasks_per_node=1).tasks_per_node == 1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"nodes": 0}, "nodes"),
        ({"gpus_per_node": -1}, "gpus_per_node"),
        ({"cpus_per_task": 0}, "cpus_per_task"),
        ({"tasks_per_node": 0}, "tasks_per_node"),
        ({"time_min": 0}, "time_min"),
        ({"nodes": 1.5}, "nodes"),
        ({"nodes": True}, "nodes"),
        ({"mem_gb": 0}, "mem_gb"),
        ({"mem_gb": "8"}, "mem_gb"),
        ({"partition": ""}, "partition"),
        ({"account": "a b"}, "account"),
        ({"extra": {"--mail-type": "END"}}, "extra"),
        ({"extra": ["exclusive"]}, "extra"),
        ({"max_timeouts": 0}, "max_timeouts"),
    ],
)
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(SlurmConfigError, match=f"^{field}: "):
        SlurmConfig(**kwargs)


def test_config_is_frozen_and_extra_is_copied():
    extra = {"exclusive": True}
    cfg = SlurmConfig(extra=extra)
    extra["mail-type"] = "END"
    assert cfg.extra == {"exclusive": True}
    with pytest.raises(AttributeError):
        cfg.nodes = 2  # type: ignore[misc]


# --- flags ----------------------------------------------------------------------------------------


def test_no_slurm_flag_runs_locally():
    assert slurm_config_from_args(parse()) is None


def test_flags_fill_the_config():
    args = parse(
        "--slurm", "--slurm-partition", "gpu", "--slurm-nodes", "2", "--slurm-gpus-per-node", "8",
        "--slurm-cpus-per-task", "10", "--slurm-time", "1440", "--slurm-mem-gb", "480",
        "--slurm-account", "proj", "--slurm-qos", "high", "--slurm-job-name", "sit-xl",
        "--slurm-folder", "logs/%j",
    )  # fmt: skip
    cfg = slurm_config_from_args(args)
    assert cfg == SlurmConfig(
        partition="gpu", nodes=2, gpus_per_node=8, cpus_per_task=10, tasks_per_node=8,
        time_min=1440, mem_gb=480.0, account="proj", qos="high", job_name="sit-xl",
        folder="logs/%j",
    )  # fmt: skip


def test_dry_run_alone_gives_a_config():
    cfg = slurm_config_from_args(parse("--slurm-dry-run", "--slurm-time", "5"))
    assert cfg is not None and cfg.time_min == 5


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--slurm", "--slurm-nodes", "0"], "--slurm-nodes"),
        (["--slurm", "--slurm-time", "0"], "--slurm-time"),
        (["--slurm", "--slurm-gpus-per-node", "-2"], "--slurm-gpus-per-node"),
        (["--slurm", "--slurm-cpus-per-task", "0"], "--slurm-cpus-per-task"),
        (["--slurm", "--slurm-mem-gb", "-1"], "--slurm-mem-gb"),
        (["--slurm", "--slurm-qos", "two words"], "--slurm-qos"),
        (["--slurm-partition", "gpu"], "--slurm-partition"),  # would be silently ignored
    ],
)
def test_bad_flags_name_the_flag(argv, flag):
    with pytest.raises(SlurmConfigError, match=f"^{flag}: "):
        slurm_config_from_args(parse(*argv))


def test_non_integer_flag_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit):
        parse("--slurm", "--slurm-nodes", "two")
    assert "--slurm-nodes" in capsys.readouterr().err


# --- the sbatch script ----------------------------------------------------------------------------


def test_dry_run_script_holds_every_resource(tmp_path, capsys):
    cfg = SlurmConfig(
        partition="gpu", nodes=2, gpus_per_node=4, cpus_per_task=8, time_min=90, mem_gb=32,
        account="proj", qos="high", job_name="reed-test", folder=str(tmp_path / "sub" / "%j"),
        constraint="h100", extra={"exclusive": True, "mail-type": "END"},
    )  # fmt: skip
    script = submit(print, ("unused",), cfg, dry_run=True)
    assert capsys.readouterr().out.strip() == script.strip()
    flags = sbatch_lines(script)
    assert flags["partition"] == "gpu"
    assert flags["nodes"] == "2"
    assert flags["ntasks-per-node"] == "4"
    assert flags["gpus-per-node"] == "4"
    assert flags["cpus-per-task"] == "8"
    assert flags["time"] == "90"
    assert flags["mem"] == "32GB"
    assert flags["account"] == "proj"
    assert flags["qos"] == "high"
    assert flags["job-name"] == "reed-test"
    assert flags["constraint"] == "h100"
    assert flags["exclusive"] == "" and flags["mail-type"] == "END"
    assert flags["signal"] == "USR2@90"  # the preemption/timeout signal submitit checkpoints on
    assert flags["output"].startswith(str(tmp_path / "sub"))
    assert "-m submitit.core._submit" in script
    # a dry run submits nothing: submitit has not even created its folder
    assert not (tmp_path / "sub").exists()


def test_cpu_only_job_asks_for_no_gpus(tmp_path):
    flags = sbatch_lines(sbatch_script(SlurmConfig(folder=str(tmp_path))))
    assert "gpus-per-node" not in flags and "partition" not in flags
    assert flags["ntasks-per-node"] == "1" and flags["nodes"] == "1"


def test_fractional_memory_in_megabytes(tmp_path):
    flags = sbatch_lines(sbatch_script(SlurmConfig(mem_gb=1.5, folder=str(tmp_path))))
    assert flags["mem"] == "1536MB"


def test_dry_run_matches_what_submitit_submits(tmp_path, monkeypatch):
    """The printed script is the text SlurmExecutor writes for the real submission."""
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 2))  # "srun found"
    cfg = SlurmConfig(partition="p", gpus_per_node=2, time_min=7, mem_gb=3, folder=str(tmp_path))
    executor = submitit.SlurmExecutor(folder=tmp_path)
    executor.update_parameters(**sbatch_parameters(cfg))
    expected = executor._make_submission_file_text(executor._submitit_command_str, "uid")
    assert sbatch_script(cfg) == expected


def test_submit_pickles_a_requeueable_job(tmp_path, monkeypatch):
    """submit() end to end against stand-in sbatch/srun: the script it hands to sbatch is the dry
    run's, and the pickled call is the checkpointable wrapper with the requeue budget."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(
        f'#!/bin/sh\ncp "$1" {tmp_path}/submitted.sh\necho "Submitted batch job 4242"\n'
    )
    for tool in ("srun", "sbatch"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    cfg = SlurmConfig(time_min=7, max_timeouts=5, folder=str(tmp_path / "sub" / "%j"))

    job = submit(sbatch_script, (cfg,), cfg)

    assert job.job_id == "4242"
    assert (tmp_path / "submitted.sh").read_text() == sbatch_script(cfg)
    delayed = DelayedSubmission.load(tmp_path / "sub" / "4242" / "4242_submitted.pkl")
    assert isinstance(delayed.function, ResumableJob) and delayed.function.fn is sbatch_script
    assert delayed.args == (cfg,)
    assert delayed._timeout_min == 7 and delayed._timeout_countdown == 5


def test_submit_needs_a_folder():
    with pytest.raises(SlurmConfigError, match="^folder: "):
        submit(print, (), SlurmConfig(), dry_run=True)


# --- launch_or_run --------------------------------------------------------------------------------


class _Cfg:
    def __init__(self, run_dir):
        self.train = argparse.Namespace(run_dir=run_dir)


def test_launch_or_run_runs_locally_without_slurm():
    calls = []
    result = launch_or_run(lambda cfg: calls.append(cfg) or "done", _Cfg("runs/x"), parse())
    assert result == "done" and len(calls) == 1


def test_launch_or_run_dry_run_prints_and_does_not_run(tmp_path, capsys):
    calls = []
    args = parse("--slurm-dry-run", "--slurm-time", "3")
    script = launch_or_run(calls.append, _Cfg(str(tmp_path / "run")), args)
    assert calls == []
    assert "#SBATCH --time=3" in capsys.readouterr().out
    # the submitit folder defaults to the run folder, so logs sit next to the checkpoints
    assert sbatch_lines(script)["output"] == str(tmp_path / "run" / "slurm" / "%j" / "%j_0_log.out")


def test_launch_or_run_bad_flag_exits_with_the_flag(capsys):
    with pytest.raises(SystemExit, match="--slurm-nodes"):
        launch_or_run(print, _Cfg("runs/x"), parse("--slurm", "--slurm-nodes", "0"))


def test_launch_or_run_needs_a_run_dir():
    with pytest.raises(SystemExit, match="run_dir"):
        launch_or_run(print, _Cfg(""), parse("--slurm-dry-run"))


# --- the job wrapper --------------------------------------------------------------------------------


def _record_env(tag: str) -> dict:
    keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    return {"tag": tag, **{k: os.environ.get(k) for k in keys}}


def _slurm_task_env(monkeypatch, ntasks: int, procid: int):
    # the job exports into os.environ itself: give it a copy, so nothing leaks into later tests
    monkeypatch.setattr(os, "environ", os.environ.copy())
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.setenv("SLURM_JOB_ID", "1234")
    monkeypatch.setenv("SLURM_NTASKS", str(ntasks))
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "1")
    monkeypatch.setenv("SLURM_NODEID", "0")
    monkeypatch.setenv("SLURM_PROCID", str(procid))
    monkeypatch.setenv("SLURM_LOCALID", str(procid))
    monkeypatch.setenv("SLURM_JOB_NODELIST", "node[07-08]")


def test_job_exports_torch_distributed_env_under_several_tasks(monkeypatch):
    _slurm_task_env(monkeypatch, ntasks=2, procid=1)
    monkeypatch.setenv("RANK", "5")  # inherited from the submitting shell: must be replaced
    env = ResumableJob(_record_env)("x")
    assert env["tag"] == "x"
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"]) == (
        "1",
        "2",
        "1",
        "2",
    )
    assert env["MASTER_ADDR"] == "node07" and env["MASTER_PORT"] is not None


def test_single_task_job_drops_inherited_torch_distributed_env(monkeypatch):
    _slurm_task_env(monkeypatch, ntasks=1, procid=0)
    monkeypatch.setenv("WORLD_SIZE", "4")  # from a torchrun shell that submitted the job
    monkeypatch.setenv("RANK", "3")
    env = ResumableJob(_record_env)("y")
    assert env["RANK"] is None and env["WORLD_SIZE"] is None


def test_checkpoint_resubmits_the_same_call():
    job = ResumableJob(_record_env)
    assert isinstance(job, Checkpointable)
    delayed = job.checkpoint("again")
    assert isinstance(delayed, DelayedSubmission)
    assert delayed.function is job and delayed.args == ("again",)


def test_job_survives_the_pickle_round_trip():
    """submitit pickles the job (cloudpickle) and the job process unpickles it."""
    job = ResumableJob(sbatch_script)
    restored = pickle.loads(cloudpickle.dumps(job))
    assert isinstance(restored, ResumableJob) and restored.fn is sbatch_script
