"""tools/compare_runs.py on tiny hand-made runs: interpolated steps to reach, seeds, bench files."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "compare_runs.py"
_spec = importlib.util.spec_from_file_location("compare_runs", TOOL)
compare_runs = importlib.util.module_from_spec(_spec)
sys.modules["compare_runs"] = compare_runs  # dataclasses look their module up there
_spec.loader.exec_module(compare_runs)


def write_run(folder: Path, evals: list[dict], train: list[dict] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evals))
    if train is not None:
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    return folder


def fd_run(folder: Path, fds: list[float], steps=(100, 200, 300, 400)) -> Path:
    return write_run(folder, [{"step": s, "ema/fd": f} for s, f in zip(steps, fds)])


def test_steps_to_reach_interpolates_the_first_crossing(tmp_path, capsys):
    base = fd_run(tmp_path / "vanilla", [10.0, 6.0, 4.0, 3.0])
    reed = fd_run(tmp_path / "reed", [8.0, 4.0, 2.5, 2.0])
    out = compare_runs.main([f"vanilla={base}", f"reed={reed}", "--metric", "ema/fd", "--lower-is-better"])
    s = out["variants"]["reed"]
    # vanilla ends at 3.0; reed crosses it between step 200 (4.0) and step 300 (2.5)
    assert out["baseline_final"] == 3.0
    assert s["reach_x"] == pytest.approx(200 + 100 * (4.0 - 3.0) / (4.0 - 2.5))
    assert s["reach_first_evaluated_x"] == 300
    assert s["speedup"] == pytest.approx(400 / s["reach_x"])
    assert (s["best"], s["best_x"]) == (2.0, 400)
    assert out["variants"]["vanilla"]["reach_x"] == 400
    table = capsys.readouterr().out
    assert "| reed | 1 | 2 (step 400) | 2 (400) | 267 (300) | 1.50x |" in table


def test_mean_and_spread_over_three_seeds(tmp_path):
    base = fd_run(tmp_path / "base", [4.0, 3.0])
    for seed, final in enumerate([1.0, 2.0, 4.0]):
        fd_run(tmp_path / f"reed-seed{seed}", [5.0, final], steps=(100, 200))
    spec = [f"base={base}", f"reed={tmp_path}/reed-seed*", "--metric", "ema/fd", "--lower-is-better"]
    out = compare_runs.main(spec + ["--plot", str(tmp_path / "fd.png")])
    s = out["variants"]["reed"]
    assert len(s["runs"]) == 3 and sorted(s["final"]) == [1.0, 2.0, 4.0]
    assert s["curve"][-1] == {"x": 200, "mean": pytest.approx(7 / 3), "low": 1.0, "high": 4.0}
    assert "| reed | 3 | 2.333 (1-4) (step 200) |" in out["table"]
    assert "mean (min-max)" in out["table"]
    assert (tmp_path / "fd.png").stat().st_size > 0
    out = compare_runs.main(spec + ["--spread", "std"])
    assert "| reed | 3 | 2.333 ± 1.5 (step 200) |" in out["table"]  # sample std of 1, 2, 4: 1.528
    assert out["variants"]["reed"]["curve"][-1]["high"] == pytest.approx(7 / 3 + 1.5275252)


def test_lower_is_better_decides_best_and_reach(tmp_path):
    a = fd_run(tmp_path / "a", [3.0, 2.0, 1.0, 2.0])
    b = fd_run(tmp_path / "b", [1.5, 1.5, 3.0, 3.0])
    low = compare_runs.main([f"a={a}", f"b={b}", "--metric", "ema/fd", "--lower-is-better"])
    high = compare_runs.main([f"a={a}", f"b={b}", "--metric", "ema/fd"])
    assert (low["variants"]["a"]["best"], low["variants"]["a"]["best_x"]) == (1.0, 300)
    assert (high["variants"]["a"]["best"], high["variants"]["a"]["best_x"]) == (3.0, 100)
    assert low["variants"]["b"]["reach_x"] == 100  # at or below a's final 2.0 from the start
    assert high["variants"]["b"]["reach_x"] == pytest.approx(200 + 100 / 3)  # 1.5 -> 3.0 crosses 2.0 at 1/3


def test_epochs_and_the_baselines_best_from_metrics_jsonl(tmp_path):
    """Protein-style: eval records in metrics.jsonl carry ``eval/epoch``; reach the baseline's best."""

    def run(name, values):
        folder = tmp_path / name
        folder.mkdir()
        recs = [{"step": 9 * e, "epoch": float(e), "loss": 1.0, "steps_per_s": 2.0} for e in (10, 20, 30, 40)]
        recs += [
            {"step": 90 * (i + 1), "eval/epoch": 10.0 * (i + 1), "eval/raw/test/recovery": v}
            for i, v in enumerate(values)
        ]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"step": 4')
        return folder

    base, reed = run("base", [0.10, 0.20, 0.25, 0.24]), run("reed", [0.15, 0.22, 0.26, 0.23])
    key = "eval/raw/test/recovery"
    out = compare_runs.main([f"b={base}", f"r={reed}", "--metric", key, "--x", "epoch", "--reach", "best"])
    assert out["baseline_best"] == 0.25
    assert out["variants"]["r"]["reach_x"] == pytest.approx(27.5)
    assert out["variants"]["r"]["speedup"] == pytest.approx(30 / 27.5)
    assert out["variants"]["r"]["median_steps_per_s"] == [2.0]


def test_common_x_and_gap(tmp_path):
    base = write_run(
        tmp_path / "one", [{"step": s, "mol_stability": v} for s, v in [(500, 0.1), (1000, 0.2)]]
    )
    reed = write_run(
        tmp_path / "two",
        [{"step": s, "mol_stability": v} for s, v in [(500, 0.1), (1000, 0.15), (1500, 0.3)]],
    )
    args = [f"one={base}", f"two={reed}", "--metric", "mol_stability", "--common-x", "--gap"]
    out = compare_runs.main(args)
    s = out["variants"]["two"]
    assert s["final_x"] == 1000 and s["reach_x"] is None  # 1500 is not a step both reached
    assert s["gap_rel_max"] == pytest.approx(0.25) and s["gap_rel_mean"] == pytest.approx(0.125)


def test_a_missing_file_or_metric_is_a_clear_error(tmp_path):
    missing = tmp_path / "nowhere" / "eval.jsonl"
    with pytest.raises(SystemExit, match=f"no such file or folder: {missing}"):
        compare_runs.main([f"a={missing}"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="metrics.jsonl nor .*eval.jsonl exists"):
        compare_runs.main([f"a={tmp_path / 'empty'}"])
    with pytest.raises(SystemExit, match="nothing matches"):
        compare_runs.main([f"a={tmp_path}/seed*"])
    run = fd_run(tmp_path / "run", [2.0, 1.0])
    with pytest.raises(SystemExit, match=f"{run / 'eval.jsonl'}: no records with 'ema/is'.*ema/fd"):
        compare_runs.main([f"a={run}", "--metric", "ema/is"])
    with pytest.raises(SystemExit, match="--baseline 'c' is not a variant"):
        compare_runs.main([f"a={run}", "--metric", "ema/fd", "--baseline", "c"])


def test_bench_files(tmp_path, capsys):
    result = {"arch": "SiT-XL/2", "device": "H100", "images_per_s": 500.0, "step_ms": 128.0}
    (tmp_path / "v1.json").write_text(json.dumps(result))
    runs = {f"c{i}-pr": {**result, "images_per_s": v} for i, v in enumerate([600.0, 606.0, 603.0])}
    runs["c9-p1"] = {**result, "images_per_s": 590.0}
    (tmp_path / "sweep.json").write_text(json.dumps({"what": "a sweep", "runs": runs}))
    out = compare_runs.main(
        [
            "--bench",
            f"v1={tmp_path}/v1.json",
            f"pr={tmp_path}/sweep.json#-pr$",
            "--plot",
            str(tmp_path / "s.png"),
        ]
    )
    assert out["variants"]["pr"]["values"] == [600.0, 606.0, 603.0]
    assert "| pr | 3 | 603 (600-606) | 128 (128-128) | 1.206x | H100 |" in capsys.readouterr().out
    assert (tmp_path / "s.png").exists()
    with pytest.raises(SystemExit, match="no result with 'images_per_s'"):
        compare_runs.main(["--bench", f"x={tmp_path}/sweep.json#nothing"])
