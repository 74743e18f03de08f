"""The shipped pretrained checkpoint: it loads, it is small, ``design`` uses it without --checkpoint;
the exporter keeps exactly the denoiser's weights."""

import pytest
import torch

from reed_core.config import config_to_dict
from reed_protein.cli import CLIError, load_denoiser
from reed_protein.cli import main as cli_main
from reed_protein.configs import tiny
from reed_protein.data.batch import collate
from reed_protein.data.datasets import load_files
from reed_protein.models.mpnn import DiffusionMPNN
from reed_protein.pretrained import DEFAULT_WEIGHTS, export_design_checkpoint

LETTERS = set("ACDEFGHIKLMNPQRSTVWY")


def fasta_records(text: str) -> list[tuple[str, str]]:
    records = []
    for line in text.splitlines():
        if line.startswith(">"):
            records.append([line, ""])
        else:
            records[-1][1] += line
    return [(h, s) for h, s in records]


def test_the_shipped_checkpoint_loads_and_is_small():
    assert DEFAULT_WEIGHTS.is_file(), f"{DEFAULT_WEIGHTS.name} is missing from the package"
    assert DEFAULT_WEIGHTS.stat().st_size <= 2_000_000
    state = torch.load(DEFAULT_WEIGHTS, map_location="cpu", weights_only=True)  # no pickled code
    assert all(v.dtype in (torch.float16, torch.int64) for v in state["denoiser"].values())
    model = load_denoiser()  # None: the shipped file
    assert isinstance(model, DiffusionMPNN) and not model.training
    assert sum(p.numel() for p in model.parameters()) == sum(v.numel() for v in state["denoiser"].values())
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    with pytest.raises(CLIError, match="holds only the ema weights"):
        load_denoiser(DEFAULT_WEIGHTS, weights="raw")


def test_design_without_checkpoint_uses_the_shipped_model(small_pdbs, tmp_path, capsys):
    out = tmp_path / "designs.fasta"
    rc = cli_main(
        ["design", str(small_pdbs[0]), "--num", "2", "--steps", "4", "--device", "cpu", "-o", str(out)]
    )
    assert rc == 0
    assert "using REED-small" in capsys.readouterr().err
    records = fasta_records(out.read_text())
    assert len(records) == 3  # native + 2 designs
    (native_head, native), *designs = records
    assert "native" in native_head and len(native) > 50
    for head, seq in designs:
        assert set(seq) <= LETTERS and len(seq) == len(native)
        fields = dict(f.split("=") for f in head.split()[1:])
        assert 0 <= float(fields["recovery"]) <= 1 and fields["steps"] == "4"
    # 2xcjA is a training chain of the shipped model: trained weights recover well above chance
    # (about 5%; 19-23% measured with these settings), an untrained model would not
    assert max(float(dict(f.split("=") for f in h.split()[1:])["recovery"]) for h, _ in designs) > 0.12


def test_design_help_names_the_default_model(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["design", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "REED-small" in text and "held-out test recovery 22.0%" in text and "reed_small.pt" in text


def test_export_keeps_the_denoiser_and_drops_the_rest(small_pdbs, tmp_path):
    cfg = tiny()
    model = DiffusionMPNN(cfg.model).eval()
    ema = {f"denoiser.{k}": v for k, v in model.state_dict().items()}
    ema["aligner.projectors.pair.0.weight"] = torch.zeros(3, 3)  # training-only, dropped
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    state = {"model": {k: v + 1 for k, v in ema.items()}, "ema": ema, "optimizer": {"x": 1}, "step": 7}
    torch.save({**state, "config": config_to_dict(cfg)}, run / "checkpoints" / "last.pt")
    out = export_design_checkpoint(run, tmp_path / "small.pt", dtype=torch.float32)
    saved = torch.load(out, weights_only=True)
    assert set(saved["denoiser"]) == set(model.state_dict()) and saved["step"] == 7
    loaded = load_denoiser(out)
    batch = collate(load_files(small_pdbs[:1]))
    args = (batch.X, batch.S, torch.full((1,), 0.5), batch.mask, batch.residue_index)
    args += (batch.chain_labels, batch.segment)
    torch.testing.assert_close(loaded(*args), model(*args))
    # float16 (the default) changes the outputs only at float16 precision
    half = load_denoiser(export_design_checkpoint(run, tmp_path / "half.pt"))
    torch.testing.assert_close(half(*args), model(*args), atol=2e-2, rtol=2e-2)
