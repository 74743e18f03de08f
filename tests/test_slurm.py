"""Real Slurm jobs through ``reed_core.launch`` on the one-node cluster of ``tools/slurm_local.sh``.

The training is the worked toy domain ``reed_core.examples.toy2d`` at a tiny size. Each test has
a hard timeout: a Slurm failure shows up as a job that never finishes.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import torch
from submitit.slurm.slurm import SlurmJobEnvironment

from reed_core.config import load_config
from reed_core.examples import toy2d
from reed_core.launch import SlurmConfig, submit

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

# A tiny toy run: ~100 steps/s on one loaded CPU core, so the training dominates no test.
TINY = [
    "train.batch_size=64", "width=32", "num_examples=2048", "eval_samples=256", "sample_steps=8",
    "train.tensorboard=false", "train.progress_bar=false",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread_per_task(monkeypatch):
    # sbatch exports the submitting environment to the job. Two OpenMP threads per process on an
    # oversubscribed 2-core machine run this tiny model 10-50x slower than one.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def metrics_lines(run_dir: Path) -> list[str]:
    path = run_dir / "metrics.jsonl"
    return [ln for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []


def train_steps(lines: list[str]) -> list[int]:
    """Steps of the training records (evaluation records have no loss)."""
    records = [json.loads(ln) for ln in lines]
    return [int(r["step"]) for r in records if "loss" in r]


def checkpoint_step(run_dir: Path) -> int:
    return int(torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["step"])


def wait_until(predicate, timeout: float, what: str, job=None, poll: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if job is not None and job.done():
            raise AssertionError(f"job {job.job_id} ended ({job.state}) before {what}:\n{job_logs(job)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def sacct_state(job) -> str:
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-o", "State", "-j", job.job_id],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return out.stdout.strip()


def wait_completed(job) -> None:
    """Accounting agrees the job ended well (it lags the result file by a moment)."""
    wait_until(lambda: sacct_state(job) == "COMPLETED", 60, f"sacct to report job {job.job_id} COMPLETED")


def job_logs(job) -> str:
    out = []
    for path in (job.paths.stdout, job.paths.stderr):
        if path.exists():
            out.append(f"--- {path.name}\n{path.read_text()[-3000:]}")
    return "\n".join(out)


@pytest.mark.timeout(240)
def test_train_through_the_domain_cli(tmp_path, submitit_folder, slurm_jobs):
    """``python -m reed_core.examples.toy2d --slurm ...`` submits a job that trains to the end."""
    run_dir = tmp_path / "run"
    steps, log_every = 120, 20
    argv = ["--run-dir", str(run_dir), "--steps", str(steps), *TINY]
    argv += [f"train.log_every={log_every}", "train.ckpt_every=50"]
    argv += ["--slurm", "--slurm-time", "10", "--slurm-job-name", "reed-test-train"]
    argv += ["--slurm-folder", str(submitit_folder)]
    job = toy2d.main(argv)
    slurm_jobs.append(job)
    assert job.job_id.isdigit(), job

    result = job.result()

    wait_completed(job)
    assert checkpoint_step(run_dir) == steps
    lines = metrics_lines(run_dir)
    assert train_steps(lines) == list(range(log_every, steps + 1, log_every))
    records = [json.loads(ln) for ln in lines]
    # (the total loss rises while w_diff warms up; its terms fall)
    for term in ("loss_gen", "align/mode"):
        values = [r[term] for r in records if term in r]
        assert values[-1] < values[0], f"{term} did not fall: {values}"
    # the job returned the trainer's last record, evaluation included
    assert result["step"] == steps and result["eval/swd"] == records[-1]["eval/swd"]
    assert (run_dir / "config.yaml").exists()
    assert Path(job.paths.stdout).exists()  # logs went to the submitit folder


def _requeue(job, how: str) -> None:
    if how == "preempt":
        # what Slurm does on preemption: SIGTERM, then the signal submitit checkpoints on (USR2).
        # submitit calls ResumableJob.checkpoint, pickles the call and runs `scontrol requeue`.
        # Two `scancel --signal` calls may be delivered in either order (submitit's own
        # job._interrupt sends them back to back), and a late SIGTERM kills that `scontrol
        # requeue`; so USR2 goes only once the job has taken the SIGTERM (submitit logs it).
        scancel = ["scancel", job.job_id, "--signal"]
        subprocess.run([*scancel, "SIGTERM"], check=True, timeout=30)
        stderr = Path(job.paths.stderr)
        wait_until(
            lambda: stderr.exists() and "Bypassing signal SIGTERM" in stderr.read_text(),
            60,
            "the job to take SIGTERM",
            job=job,
            poll=0.05,
        )
        subprocess.run([*scancel, SlurmJobEnvironment.USR_SIG], check=True, timeout=30)
    else:  # an administrator's requeue: the job is killed, then started again
        subprocess.run(["scontrol", "requeue", job.job_id], check=True, timeout=30)


@pytest.mark.timeout(420)
@pytest.mark.parametrize("how", ["preempt", "scontrol"])
def test_requeued_job_resumes_from_its_checkpoint(how, tmp_path, submitit_folder, slurm_jobs):
    run_dir = tmp_path / "run"
    # ckpt_every is a tenth of the run: we interrupt at the first checkpoint, so the remaining
    # nine tenths are the window in which the job is certainly still running, however loaded
    # the machine is.
    steps, log_every, ckpt_every = 1000, 50, 100
    overrides = [*TINY, f"train.steps={steps}", f"train.log_every={log_every}"]
    overrides += [f"train.ckpt_every={ckpt_every}", f"train.run_dir={run_dir}"]
    cfg = load_config(toy2d.Toy2DConfig, toy2d.presets(), "reed", None, overrides)
    slurm_cfg = SlurmConfig(time_min=15, job_name=f"reed-test-{how}", folder=str(submitit_folder))
    job = submit(toy2d.run, (cfg,), slurm_cfg)
    slurm_jobs.append(job)

    ckpt = run_dir / "checkpoints" / "last.pt"
    wait_until(ckpt.exists, 180, "the first checkpoint", job=job, poll=0.05)
    s_ckpt = checkpoint_step(run_dir)
    before = [ln for ln in metrics_lines(run_dir) if json.loads(ln)["step"] <= s_ckpt]
    _requeue(job, how)
    assert 0 < s_ckpt < steps, "training ended before the requeue; lengthen the run"
    assert train_steps(before) == list(range(log_every, s_ckpt + 1, log_every))

    result = job.result()

    wait_completed(job)
    stdout = Path(job.paths.stdout).read_text()
    assert "restarted (1x); resuming" in stdout, job_logs(job)  # printed by ResumableJob
    if how == "preempt":
        # submitit called ResumableJob.checkpoint and requeued the job itself
        assert "Calling checkpoint method" in stdout and f"Requeued job {job.job_id}" in stdout, stdout
    lines = metrics_lines(run_dir)
    # Resumed, not restarted: the records up to the checkpoint are the first run's, byte for byte
    # (a restart from step 0 truncates them and logs new ones with new timings); every later
    # step is logged once, in order, up to the end.
    assert lines[: len(before)] == before
    assert train_steps(lines) == list(range(log_every, steps + 1, log_every))
    assert checkpoint_step(run_dir) == steps
    assert result["step"] == steps and "eval/swd" in result


@pytest.mark.timeout(240)
def test_two_tasks_train_with_ddp(tmp_path, submitit_folder, slurm_jobs):
    """``tasks_per_node=2``: each task gets the torch.distributed variables and the trainer's
    DDP path runs over gloo; the checkpoint holds both ranks' RNG states."""
    run_dir = tmp_path / "run"
    steps = 40
    overrides = [*TINY, f"train.steps={steps}", "train.log_every=20", f"train.run_dir={run_dir}"]
    cfg = load_config(toy2d.Toy2DConfig, toy2d.presets(), "reed", None, overrides)
    slurm_cfg = SlurmConfig(
        tasks_per_node=2, cpus_per_task=1, time_min=10, job_name="reed-test-ddp", folder=str(submitit_folder)
    )
    job = submit(toy2d.run, (cfg,), slurm_cfg)
    slurm_jobs.append(job)

    results = job.results()
    wait_completed(job)

    assert len(results) == 2 and all(r["step"] == steps for r in results), job_logs(job)
    assert results[0]["loss"] == pytest.approx(results[1]["loss"])  # all-reduced over ranks
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert state["step"] == steps
    assert len(state["rng_per_rank"]) == 2
    assert train_steps(metrics_lines(run_dir)) == [20, 40]
