"""End to end on CPU: a tiny REED run on real structures, then the design command on a real PDB."""

import json
import subprocess
import sys

import pytest
import torch

from reed_core.config import ConfigError, load_config, load_config_file, save_config
from reed_core.features import FeatureStore
from reed_protein.cli import main as cli_main
from reed_protein.configs import PRESETS, ProteinConfig
from reed_protein.data.datasets import load_files, save_proteins
from reed_protein.targets import ProteinMPNNTargets, build_target_stores
from reed_protein.train import main as train_main

LETTERS = set("ACDEFGHIKLMNPQRSTVWY")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_pdbs, data_dir):
    """2 epochs of the tiny preset with precomputed ProteinMPNN targets (feature stores)."""
    root = tmp_path_factory.mktemp("run")
    train = load_files(small_pdbs[:2])
    held = load_files([data_dir / "dssp" / "2cviA.pdb.gz"])
    npz = save_proteins(
        root / "set.npz",
        train + held,
        {"train": [p.name for p in train], "validation": [held[0].name], "test": [held[0].name]},
    )
    build_target_stores(train, ProteinMPNNTargets(), root / "targets", k=30)
    cfg_file = root / "cfg.yaml"
    cfg = load_config(
        ProteinConfig,
        PRESETS,
        "tiny",
        overrides=[
            "data.source=npz",
            f"data.path={npz}",
            "data.max_tokens=1000",
            f"train.run_dir={root / 'reed'}",
            f"reed.targets.structure.store={root / 'targets' / 'structure'}",
            f"reed.targets.pair.store={root / 'targets' / 'pair'}",
        ],
    )
    save_config(cfg, cfg_file)
    result = train_main(["--config", str(cfg_file)])
    return root, result


def test_training_runs_and_logs_alignment(trained):
    root, result = trained
    run = root / "reed"
    assert (run / "checkpoints" / "last.pt").exists() and (run / "config.yaml").exists()
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train_rec = [r for r in records if "loss_gen" in r]
    assert train_rec and all("cos/pair" in r and "cos/structure" in r for r in train_rec)
    assert train_rec[0]["w_diff"] < 1.0  # diffusion warm-up active at the start
    evals = [r for r in records if "eval/test/recovery" in r]
    assert evals and 0.0 <= evals[-1]["eval/test/recovery"] <= 1.0
    assert evals[-1]["eval/test/perplexity"] > 1.0
    split = json.loads((run / "split.json").read_text())
    assert set(split["train"]).isdisjoint(split["test"])
    cfg = load_config_file(ProteinConfig, run / "config.yaml")
    assert cfg.reed.targets["pair"].pooling == "edge"
    assert cfg.train.steps == cfg.epochs == 2  # both chains fit one batch: 1 step per epoch


def test_design_command_writes_valid_fasta(trained, data_dir, tmp_path, capsys):
    root, _ = trained
    out = tmp_path / "designs.fasta"
    pdb = data_dir / "dssp" / "1ahsA.pdb.gz"
    rc = cli_main(
        [
            "design",
            str(pdb),
            "--chain",
            "A",
            "--num",
            "3",
            "--temperature",
            "0.1",
            "--steps",
            "5",
            "--fix",
            "1-10",
            "--checkpoint",
            str(root / "reed"),
            "-o",
            str(out),
        ]
    )
    assert rc == 0
    lines = out.read_text().splitlines()
    headers = [i for i, ln in enumerate(lines) if ln.startswith(">")]
    assert len(headers) == 4  # native + 3 designs
    seqs = []
    for a, b in zip(headers, headers[1:] + [len(lines)]):
        seqs.append("".join(lines[a + 1 : b]))
    native = seqs[0]
    assert len(native) == 126
    for h, s in zip(headers[1:], seqs[1:]):
        assert set(s) <= LETTERS and len(s) == len(native)
        assert s[:10] == native[:10]  # --fix 1-10 keeps the native residues
        fields = dict(f.split("=") for f in lines[h].split()[1:])
        assert float(fields["score"]) > 0 and 0 <= float(fields["recovery"]) <= 1


@pytest.mark.parametrize(
    "case,match",
    [
        ("chain", "no chain 'Q'"),
        ("empty", "empty"),
        ("wrong_format", "cannot be read as mmCIF"),
        ("checkpoint", "does not exist"),
        ("fix", "--fix"),
    ],
)
def test_design_command_errors(case, match, trained, data_dir, tmp_path, capsys):
    root, _ = trained
    pdb = data_dir / "dssp" / "1ahsA.pdb.gz"
    args = ["design", str(pdb), "--checkpoint", str(root / "reed"), "-o", str(tmp_path / "o.fa")]
    if case == "chain":
        args += ["--chain", "Q"]
    elif case == "empty":
        (tmp_path / "e.pdb").write_text("")
        args[1] = str(tmp_path / "e.pdb")
    elif case == "wrong_format":
        (tmp_path / "w.cif").write_text("HEADER    not a cif\nATOM      1  N   ALA A   1\n")
        args[1] = str(tmp_path / "w.cif")
    elif case == "checkpoint":
        args[3] = str(tmp_path / "missing.pt")
    else:
        args += ["--fix", "5-1000"]
    with pytest.raises(SystemExit) as exit_:
        cli_main(args)
    assert exit_.value.code == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "o.fa").exists()


def test_a_run_saved_with_the_former_reed_keys_names_them(trained, tmp_path):
    from reed_protein.cli import CLIError, load_denoiser

    root, _ = trained
    state = torch.load(root / "reed" / "checkpoints" / "last.pt", weights_only=False)
    load_denoiser(root / "reed")  # the current run loads
    reed = state["config"]["reed"]
    state["config"]["reed"] = {  # reed-protein's former section
        "targets": [{"name": name, **t} for name, t in reed["targets"].items()],
        "align_scale": 0.2,
        "diffusion_warmup_epochs": 1.0,
        "align_decay_epochs": 2.0,
        "projector_hidden": 32,
        "projector_layers": 3,
    }
    torch.save(state, tmp_path / "old.pt")
    with pytest.raises(CLIError, match=r"older version: reed.align_decay_epochs was renamed reed.curriculum"):
        load_denoiser(tmp_path / "old.pt")


def test_presets_round_trip_and_bad_values(tmp_path):
    for name, preset in PRESETS.items():
        cfg = preset()
        path = save_config(cfg, tmp_path / f"{name}.yaml")
        assert load_config_file(ProteinConfig, path) == cfg
    bad_target = "reed.targets.x={encoder: proteinmpnn, feature: pair, depth: encoder.0.node_out}"
    with pytest.raises(ConfigError, match=r"reed.targets.x.depth: a pair target aligns edge states"):
        load_config(ProteinConfig, PRESETS, "reed", overrides=[bad_target])
    with pytest.raises(ConfigError, match=r"reed.targets.pair.pooling: a pair target needs pooling 'edge'"):
        load_config(ProteinConfig, PRESETS, "reed", overrides=["reed.targets.pair.pooling=token"])
    with pytest.raises(ConfigError, match=r"reed.targets.single.encoder: unknown 'esm3'"):
        load_config(ProteinConfig, PRESETS, "reed_esm", overrides=["reed.targets.single.encoder=esm3"])
    old = ["reed.diffusion_warmup_epochs=50"]
    with pytest.raises(ConfigError, match=r"reed.diffusion_warmup_epochs was renamed reed.curriculum.w_diff"):
        load_config(ProteinConfig, PRESETS, "reed", overrides=old)
    with pytest.raises(ConfigError, match="data.source"):
        load_config(ProteinConfig, PRESETS, "reed", overrides=["data.source=pdbbind"])


def test_train_help_runs():
    out = subprocess.run(
        [sys.executable, "-m", "reed_protein.train", "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "--preset" in out.stdout and "--config" in out.stdout


def test_checkpoint_store_shapes(trained):
    root, _ = trained
    store = FeatureStore.open(root / "targets" / "pair")
    assert store.meta.shape == (30, 128)
    state = torch.load(root / "reed" / "checkpoints" / "last.pt", weights_only=False)
    assert any(k.startswith("aligner.projectors.pair") for k in state["model"])


def test_slurm_dry_run_prints_sbatch_script(tmp_path, capsys):
    script = train_main(
        [
            "--preset",
            "tiny",
            "--slurm",
            "--slurm-dry-run",
            "--slurm-partition",
            "gpu",
            "--slurm-gpus-per-node",
            "1",
            f"train.run_dir={tmp_path / 'run'}",
        ]
    )
    text = script if isinstance(script, str) else capsys.readouterr().out
    assert "#SBATCH" in text and "gpu" in text


def test_esmfold_offline_is_skipped_with_a_clear_message():
    import importlib.util

    from reed_protein.metrics import ESMFold, ESMFoldUnavailable

    if importlib.util.find_spec("openfold") is not None:
        pytest.skip("ESMFold's dependencies are installed; loading would download weights")
    with pytest.raises(ESMFoldUnavailable, match="ESMFold is unavailable.*skipped"):
        ESMFold("cpu")
