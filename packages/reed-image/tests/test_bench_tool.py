"""tools/bench_image.py runs the real REED step (two stored targets) end to end at tiny width."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_bench_tool_tiny_cpu(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "bench_image.py"),
            "--tiny",
            "--device",
            "cpu",
            "--no-compile",
            "--batch",
            "4",
            "--examples",
            "8",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--fused-update",
            "on",
            "--kernels",
            "fused-fa4",
            "--float8",
            "tensorwise",
            "--json",
            str(out),
        ],
        check=True,
        cwd=ROOT,
        capture_output=True,
        timeout=300,
    )
    result = json.loads(out.read_text())
    assert result["images_per_s"] > 0 and result["final_loss"] > 0
    assert result["block_matmul_TFLOP_per_s"] >= 0 and result["batch"] == 4
    assert result["fused_update"] is True and result["kernels"] == "fused-fa4"
    assert result["model_class"] == "FusedSiT" and result["kernels_source"].endswith("cublaslt_plans.py")
    # FP8 layers in the fused model: converted Linears keep their own forward (CPU: kernel references)
    assert result["float8"] == "tensorwise" and result["float8_layers"] == 4 * 4  # qkv, proj, fc1, fc2


def test_block_flops_formula():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from bench_image import block_matmul_flops
    finally:
        sys.path.pop(0)
    # SiT-XL/2 at 256 tokens: DiT reports 118.6 GMACs for the whole forward; the blocks' matmuls
    # are nearly all of it (2 FLOPs per multiply-add)
    assert 2 * 112e9 < block_matmul_flops(28, 1152, 256) < 2 * 119e9
