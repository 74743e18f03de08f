"""reed_core.cli: bad input ends in one ``error:`` line and exit status 2, a bug keeps its traceback;
the toy entry point as the example, and the message of a run that is already complete."""

from __future__ import annotations

import errno

import pytest
import torch

from reed_core.cli import ErrorExit, UserError, UserFileError, error_line, main_guard
from reed_core.config import ConfigError
from reed_core.examples.toy2d import main as toy_main


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize(
    "error",
    [
        UserError("data.limit: must be > 0"),
        UserFileError("data.path: /x does not exist"),
        ConfigError("train.lr: expected a number"),
        FileNotFoundError("data.path: /x does not exist; prepare it with ..."),  # ours: no errno
    ],
)
def test_user_errors_exit_2_with_one_line(error, capsys):
    @main_guard
    def main(argv=None):
        raise error

    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == 2 and isinstance(exit_.value, ErrorExit)
    assert one_error_line(capsys) == f"error: {error}"


@pytest.mark.parametrize(
    "error",
    [
        KeyError("a bug"),
        RuntimeError("a bug"),
        ValueError("a plain ValueError is not a user error"),
        FileNotFoundError(errno.ENOENT, "No such file or directory", "/internal/file"),
    ],  # from the OS
)
def test_bugs_keep_their_traceback(error):
    @main_guard
    def main(argv=None):
        raise error

    with pytest.raises(type(error)):
        main([])


def test_the_line_is_one_line_without_a_doubled_prefix():
    assert error_line("error: a\n  b\n") == "error: a b"
    assert error_line(UserError("x: y")) == "error: x: y"


@pytest.mark.parametrize(
    "argv,name",
    [
        (["align_weight=lots"], "align_weight"),
        (["no_such_key=1"], "no_such_key"),
        (["train.lr=-1"], "train.lr"),
        (["--steps", "0"], "--steps"),
        (["--config", "MISSING"], "missing.toml"),
        (["--preset", "nope"], None),  # argparse's own usage error (also exit status 2)
        (["--slurm-nodes", "2"], "--slurm-nodes"),
        (["--slurm-dry-run", "--slurm-nodes", "0"], "--slurm-nodes"),
        (["train.device=tpu"], "train.device"),
        pytest.param(
            ["train.device=cuda"],
            "train.device=cuda",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device"),
        ),
    ],
)
def test_toy_entry_point_bad_input(argv, name, tmp_path, capsys):
    run_dir = tmp_path / "run"
    argv = [a.replace("MISSING", str(tmp_path / "missing.toml")) for a in argv]
    with pytest.raises(SystemExit) as exit_:
        toy_main([*argv, "--run-dir", str(run_dir)])
    assert exit_.value.code == 2
    if name is not None:
        assert name in one_error_line(capsys)
    assert not run_dir.exists()  # nothing half-written


def test_a_finished_run_says_so_and_how_to_start_afresh(tmp_path, capsys):
    run_dir = tmp_path / "run"
    argv = ["--run-dir", str(run_dir), "--steps", "3", "train.progress_bar=false", "eval_samples=16"]
    first = toy_main(argv)
    checkpoint = run_dir / "checkpoints" / "last.pt"
    mtime = checkpoint.stat().st_mtime_ns
    capsys.readouterr()
    # what the finished run returned (so a requeued job that had finished still returns it)
    assert first["step"] == 3 and "eval/swd" in first
    assert toy_main(argv) == pytest.approx(first)
    out = capsys.readouterr().out
    assert "already complete at step 3" in out and str(run_dir.resolve()) in out
    assert "train.run_dir" in out and "train.resume=false" in out and "train.steps" in out
    assert checkpoint.stat().st_mtime_ns == mtime
    toy_main([*argv[:3], "4", *argv[4:]])  # more steps: resumes
    assert "resumed from" in capsys.readouterr().out
