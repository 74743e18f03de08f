"""Bad input to ``python -m reed_molecule.train``: one ``error:`` line naming the key or file (and
the command that prepares a missing input), exit status 2, and no run folder written."""

from __future__ import annotations

import pytest

from reed_molecule import train

CASES = [
    # (arguments, texts the error line must contain)
    (["--preset", "qm9_baseline", "data.path=MISSING"], ["data.path", "python -m reed_molecule.data.qm9"]),
    (["--preset", "qm9_baseline", "data.path=GARBAGE"], ["data.path", "garbage.npz"]),
    (
        ["--preset", "qm9_reed", "data.path=DATA", "reed.targets.chemnet.store=NOSTORE"],
        ["reed.targets.chemnet.store", "python -m reed_molecule.targets"],
    ),
    (["--preset", "tiny", "data.path=DATA", "model.num_layers=zero"], ["model.num_layers"]),
    (["--preset", "tiny", "data.path=DATA", "--steps", "-1"], ["--steps"]),
    (["--preset", "tiny", "--config", "MISSING"], ["--config"]),
    (["--preset", "tiny", "data.path=packaged:nope"], ["data.path", "packaged:nope", "qm9_64"]),
]


@pytest.mark.parametrize("argv,names", CASES, ids=[" ".join(c[0][1:]) for c in CASES])
def test_bad_input_is_one_error_line(argv, names, qm9_small_path, tmp_path, capsys):
    garbage = tmp_path / "garbage.npz"
    garbage.write_text("a text file, not an .npz\n")
    swap = {
        "MISSING": str(tmp_path / "missing" / "qm9.npz"),
        "GARBAGE": str(garbage),
        "NOSTORE": str(tmp_path / "no_store"),
        "DATA": str(qm9_small_path),
    }
    argv = [next((a.replace(k, v) for k, v in swap.items() if k in a), a) for a in argv]
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        train.main([*argv, f"train.run_dir={run_dir}"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for name in names:
        assert name in lines[0], lines[0]
    assert not run_dir.exists()  # nothing half-written
