"""Fixtures for the cross-package tests: the local Slurm cluster of ``tools/slurm_local.sh``.

Tests marked ``slurm`` are skipped (with the reason) when ``sinfo`` is missing or the cluster is
down, unless ``REED_REQUIRE_SLURM=1`` (set by ``.ci/run``), which turns the skip into a failure so
CI cannot pass without having run them.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

START_HINT = "start it with `tools/slurm_local.sh start` (as root)"


def _cluster_problem() -> str | None:
    """Why Slurm tests cannot run here, or None when a node is ready for jobs."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return f"Slurm is not installed (no sinfo/sbatch on PATH); {START_HINT}"
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15, check=False
        )
    except subprocess.TimeoutExpired:
        return f"sinfo timed out: the Slurm controller is not answering; {START_HINT}"
    if out.returncode != 0:
        return f"the Slurm cluster is down (sinfo: {out.stderr.strip()}); {START_HINT}"
    states = out.stdout.split()
    if not any(s.rstrip("*~#").startswith(("idle", "mixed", "allocated")) for s in states):
        return f"no Slurm node is up (node states: {states or 'none'}); {START_HINT}"
    if subprocess.run(["sacct", "-n", "-X", "-j", "1"], capture_output=True, timeout=15).returncode:
        return f"Slurm accounting (sacct) is down, which submitit needs; {START_HINT}"
    return None


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    problem = _cluster_problem()
    if problem is None:
        return
    if os.environ.get("REED_REQUIRE_SLURM") == "1":
        pytest.fail(f"REED_REQUIRE_SLURM=1 but {problem}", pytrace=False)
    pytest.skip(problem)


@pytest.fixture
def submitit_folder(tmp_path):
    """A fresh submitit folder per test: job ids restart when the cluster state is wiped, so a
    reused folder could hand back another job's result."""
    return tmp_path / "submitit" / "%j"


@pytest.fixture
def slurm_jobs():
    """Register submitted jobs here; any still queued or running at teardown is cancelled."""
    jobs: list = []
    yield jobs
    for job in jobs:
        subprocess.run(["scancel", str(job.job_id)], capture_output=True, timeout=30, check=False)
