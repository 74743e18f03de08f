"""`python -m reed_molecule.train --slurm` submits a real job (local cluster of tools/slurm_local.sh).

Skipped when no Slurm cluster answers, unless REED_REQUIRE_SLURM=1 (then it fails).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slurm


def _cluster_problem():
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "Slurm is not installed; start it with `tools/slurm_local.sh start`"
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15)
    if out.returncode != 0 or not any(s.startswith(("idle", "mix", "alloc")) for s in out.stdout.split()):
        return f"no Slurm node is up ({out.stdout.strip() or out.stderr.strip()})"
    return None


@pytest.fixture
def cluster():
    problem = _cluster_problem()
    if problem is not None:
        if os.environ.get("REED_REQUIRE_SLURM") == "1":
            pytest.fail(f"REED_REQUIRE_SLURM=1 but {problem}", pytrace=False)
        pytest.skip(problem)


def test_train_slurm_submits_a_real_job(cluster, qm9_small_path, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "reed_molecule.train",
            "--preset",
            "tiny",
            f"data.path={qm9_small_path}",
            "reed.targets={}",
            "train.steps=2",
            "--run-dir",
            str(run),
            "--slurm",
            "--slurm-job-name",
            "reed-molecule-test",
            "--slurm-time",
            "10",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    job_id = re.search(r"submitted Slurm job (\d+)", out.stdout).group(1)
    try:
        deadline = time.monotonic() + 400
        state = ""
        while time.monotonic() < deadline:
            state = subprocess.run(
                ["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout.strip()
            if state and not state.startswith(("PENDING", "RUNNING", "REQUEUED")):
                break
            time.sleep(2)
        logs = "\n".join(p.read_text()[-2000:] for p in (run / "slurm").rglob("*.err"))
        assert state == "COMPLETED", f"job {job_id} ended {state!r}\n{logs}"
        records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records if "loss" in r] == [2]
        assert (run / "checkpoints" / "last.pt").exists()
    finally:
        subprocess.run(["scancel", job_id], capture_output=True, timeout=30)
