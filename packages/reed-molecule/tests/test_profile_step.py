"""experiments/molecule/profile_step.py on the CPU: both architectures, without RDKit."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "experiments" / "molecule" / "profile_step.py"


@pytest.mark.skipif(not SCRIPT.is_file(), reason="the experiments folder is not in this checkout")
def test_profile_compares_both_architectures_without_rdkit(tmp_path, monkeypatch):
    for name in ("rdkit", "fcd_torch"):  # the GPU machine may have neither
        monkeypatch.setitem(sys.modules, name, None)
    spec = importlib.util.spec_from_file_location("profile_step", SCRIPT)
    profile_step = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(profile_step)
    out = tmp_path / "profile.json"
    argv = ["--device", "cpu", "--variants", "tiny", "--variant", "semla", "tiny_semla",
            "model.self_condition=true", "--warmup", "1", "--steps", "1", "--breakdown-steps", "1",
            "--profile-steps", "1", "--out", str(out)]  # fmt: skip
    profile_step.main(argv)
    report = json.loads(out.read_text())
    tiny, semla = report["variants"]["tiny"], report["variants"]["semla"]
    assert (tiny["arch"], semla["arch"]) == ("e3nn", "semla")
    assert semla["self_condition"] and semla["overrides"] == ["model.self_condition=true"]
    for r in (tiny, semla):
        assert r["ms_per_step"] > 0 and r["random_targets"] == ["chemnet"] and len(r["top_ops"]) > 0
        assert set(r["phases_ms"]) >= {"backward", "update (clip + AdamW + EMA)"}
    assert "layers.*.tp (TensorProduct)" in tiny["forward_by_module_ms"]
    assert "layers.*.coord_attn (CoordAttention)" in semla["forward_by_module_ms"]
