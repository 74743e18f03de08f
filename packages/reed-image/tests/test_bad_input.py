"""Bad input to the image entry points: one ``error:`` line naming the key, exit status 2, and no
run folder written; a finished run says so and where its sample grid is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from reed_core.config import save_config
from reed_image import train

CASES = [
    # (overrides, text the error line must contain)
    (["data.limit=-10"], "data.limit"),
    (["data.limit=0"], "data.limit"),
    (["data.path=/nonexistent/fmnist"], "data.path"),
    (["model.depth=-1"], "model.depth"),
    (["model.num_heads=0"], "model.num_heads"),
    (["--steps", "-5"], "--steps"),
    (["train.lr=-1"], "train.lr"),
    (["data.source=imagefolder", "data.path=/nonexistent/images"], "data.path"),
    (["data.source=latents", "data.path=GARBAGE"], "data.path"),
    (["data.source=latents", "data.path=/nonexistent/latents.npz"], "data.path"),
    (["no_such_key=1"], "no_such_key"),
]


def run_main(argv: list[str], capsys) -> str:
    """``train.main(argv)`` must exit with status 2 and one ``error:`` line; returns that line."""
    with pytest.raises(SystemExit) as exit_:
        train.main(argv)
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    return lines[0]


@pytest.mark.parametrize("overrides,names", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_input_is_one_error_line(overrides, names, make_cfg, tmp_path, capsys):
    cfg = make_cfg("run", vision=False, caption=False)
    config = save_config(cfg, tmp_path / "cfg.yaml")
    garbage = tmp_path / "garbage.npz"
    garbage.write_text("this is a text file, not an .npz\n")
    overrides = [o.replace("GARBAGE", str(garbage)) for o in overrides]
    line = run_main(["--config", str(config), *overrides], capsys)
    assert names in line
    run_dir = Path(cfg.train.run_dir)
    assert not run_dir.exists(), sorted(p.name for p in run_dir.rglob("*"))  # nothing half-written


def test_a_real_bug_keeps_its_traceback(make_cfg, tmp_path, monkeypatch):
    cfg = make_cfg("run", vision=False, caption=False)
    config = save_config(cfg, tmp_path / "cfg.yaml")

    def broken(*args, **kwargs):
        raise KeyError("a bug, not bad input")

    monkeypatch.setattr(train, "ImageTask", broken)
    with pytest.raises(KeyError):
        train.main(["--config", str(config)])


def test_the_sample_grid_is_printed_and_a_finished_run_says_so(make_cfg, tmp_path, capsys):
    cfg = make_cfg("run", vision=False, caption=False)
    config = save_config(cfg, tmp_path / "cfg.yaml")
    train.main(["--config", str(config)])
    out = capsys.readouterr().out
    grid = Path(cfg.train.run_dir).resolve() / "samples" / f"ema_step{cfg.train.steps:07d}.png"
    assert grid.exists() and f"sample grid: {grid}" in out
    assert "{}" not in out.splitlines()  # no empty metrics line
    checkpoint = Path(cfg.train.run_dir) / "checkpoints" / "last.pt"
    mtime = checkpoint.stat().st_mtime_ns

    train.main(["--config", str(config)])  # again: nothing left to train
    out = capsys.readouterr().out
    assert f"already complete at step {cfg.train.steps}" in out
    assert "train.run_dir" in out and "train.resume=false" in out
    assert f"sample grid: {grid}" in out
    assert checkpoint.stat().st_mtime_ns == mtime  # not rewritten


def test_a_latent_file_of_the_wrong_content_names_data_path(tmp_path):
    from reed_core.cli import UserError
    from reed_image.data.latents import load_latents

    path = tmp_path / "x.npz"
    np.savez(path, something=np.zeros(3))
    with pytest.raises(UserError, match="data.path"):
        load_latents(path)
