"""``experiments/molecule/run_molecule_gpu.sh`` end to end on the CPU with the tiny preset: both
trainings stopped by the time limit (and checkpointed there), the comparison, and the final
samples as SDF, 2-D grid and metrics. A broken driver otherwise shows only on the GPU."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("rdkit")
pytest.importorskip("fcd_torch")

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.timeout(600)
def test_driver_trains_both_runs_and_writes_the_final_samples(tmp_path):
    out, runs = tmp_path / "out", tmp_path / "runs"
    env = os.environ | {
        "RUNS_DIR": str(runs),
        "DEVICE": "cpu",
        "BASE_PRESET": "tiny",
        "REED_PRESET": "tiny",
        "FINAL_SAMPLES": "6",
        "SAMPLE_STEPS": "3",
    }
    script = ROOT / "experiments" / "molecule" / "run_molecule_gpu.sh"
    cmd = ["bash", str(script), "packaged:qm9_64", "", str(out), "20", "train.eval_every=2"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for run in ("baseline", "reed"):
        # stopped by the time limit: the step reached is checkpointed, so a second call resumes
        assert "stopped by SIGTERM" in (out / f"{run}.log").read_text()
        assert (runs / run / "checkpoints" / "last.pt").exists()
        assert (out / f"{run}.sdf").read_text().count("$$$$") == 6
        assert (out / f"{run}.png").read_bytes()[:4] == b"\x89PNG"
        assert json.loads((out / f"{run}_final.json").read_text())["num_molecules"] == 6
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["variants"]) == {"baseline", "reed"}
