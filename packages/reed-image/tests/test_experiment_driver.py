"""``experiments/image/image_experiment.sh``, the GPU study's driver, end to end on the CPU at tiny
widths: feature stores, side-by-side trainings, the comparison table, and a second call that
resumes the runs. A broken driver otherwise shows only on the GPU, where its time is scarce."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reed_image.targets.vision import efficientnet_lite0_weights

ROOT = Path(__file__).resolve().parents[3]
DRIVER = ROOT / "experiments" / "image" / "image_experiment.sh"
TINY = (
    "model.hidden_size=32 model.depth=2 model.num_heads=2 train.speed.compile=false train.device=cpu "
    "reed.targets.vision.options.input_size=32 reed.targets.vision.depth=1 reed.targets.caption.depth=2 "
    "reed.targets.vision.projector_hidden=32 reed.targets.caption.projector_hidden=32 eval.batch_size=16"
)


def run_driver(carry: Path, work: Path, out: Path, steps: int) -> subprocess.CompletedProcess:
    env = os.environ | {
        "CARRY": str(carry),
        "WORK": str(work),
        "OUT": str(out),
        "PY": sys.executable,
        "STEPS": str(steps),
        "EVAL_EVERY": "2",
        "CKPT_EVERY": "2",
        "STOP_AT": "2",
        "NUM_SAMPLES": "16",
        "EVAL_STEPS": "2",
        "EVAL_WEIGHTS": "raw",
        "BATCH": "8",
        "SEEDS": "0",
        "VARIANTS": "repa repa-stop",
        "PARALLEL": "2",
        "OMP_NUM_THREADS": "1",
        "ALSO": "raw/precision",
        "EXTRA": TINY,
    }
    return subprocess.run(
        ["bash", str(DRIVER)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.timeout(900)
def test_driver_trains_compares_and_resumes(fmnist_dir, caption_table_file, tmp_path):
    carry = tmp_path / "carry"
    (carry / "pylib").mkdir(parents=True)
    (carry / "fashion-mnist").symlink_to(fmnist_dir)
    (carry / "efficientnet-lite0.pth").symlink_to(efficientnet_lite0_weights())
    (carry / "captions.npz").symlink_to(caption_table_file)
    work, out = tmp_path / "work", tmp_path / "out"

    first = run_driver(carry, work, out, steps=4)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    # each variant holds its own seed's run only: "repa" must not take repa-stop's runs as seeds
    runs = {name: [Path(r).name for r in v["runs"]] for name, v in results["variants"].items()}
    assert runs == {"repa": ["repa-s0"], "repa-stop": ["repa-stop-s0"]}
    assert all(v["final_x"] == 4 for v in results["variants"].values())
    for name in ("results.md", "image_fd.png", "experiment.log", "runs.tgz"):
        assert (out / name).stat().st_size > 0, name
    assert "sha256" in (out / "experiment.log").read_text()  # the classifier's hash is on record

    # HASTE-style stop: alignment on before STOP_AT, off after
    def w_align(run: str) -> list[float]:
        lines = (work / "runs" / run / "metrics.jsonl").read_text().splitlines()
        return [r["w_align/vision"] for r in map(json.loads, lines) if "w_align/vision" in r]

    assert w_align("repa-s0")[-1] == 1.0 and w_align("repa-stop-s0")[-1] == 0.0

    # a second call with a longer budget resumes every run from its checkpoint
    second = run_driver(carry, work, out, steps=6)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    for run in ("repa-s0", "repa-stop-s0"):
        assert "resumed from" in (work / "results" / f"train_{run}.log").read_text()
        lines = (work / "runs" / run / "eval.jsonl").read_text().splitlines()
        evals = [json.loads(ln)["step"] for ln in lines]
        assert evals == [2, 4, 6]  # each evaluation once: the resumed run did not start over
    results = json.loads((out / "results.json").read_text())
    assert all(v["final_x"] == 6 for v in results["variants"].values())
