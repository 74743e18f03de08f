"""End to end on CPU: REED and baseline training through reed-core, CLIs, targets, encoder."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from reed_molecule.configs import PRESETS, MoleculeConfig, tiny


@pytest.fixture(scope="module")
def chemnet_store(qm9_small_path, tmp_path_factory):
    from reed_molecule.data.arrays import MoleculeArrays
    from reed_molecule.targets import build_target_store

    out = tmp_path_factory.mktemp("features") / "chemnet"
    build_target_store(
        MoleculeArrays.load(qm9_small_path),
        "chemnet",
        out,
        MoleculeArrays.load(qm9_small_path).split("train"),
    )
    return out


def _cfg(qm9_small_path, store, run_dir, aligned=True, **train) -> MoleculeConfig:
    cfg = tiny()
    cfg = replace(
        cfg,
        data=replace(cfg.data, path=str(qm9_small_path)),
        train=replace(cfg.train, run_dir=str(run_dir), **train),
    )
    if aligned:
        chemnet = replace(cfg.reed.targets["chemnet"], store=str(store))
        return replace(cfg, reed=replace(cfg.reed, targets={"chemnet": chemnet}))
    return replace(cfg, reed=replace(cfg.reed, targets={}))


def test_reed_training_logs_alignment_and_resumes(qm9_small_path, chemnet_store, tmp_path):
    from reed_core.train import Trainer, read_metrics
    from reed_molecule.task import MoleculeTask

    cfg = _cfg(qm9_small_path, chemnet_store, tmp_path / "run", steps=2, eval_every=2)
    out = Trainer(cfg.train, MoleculeTask(cfg), experiment_config=cfg).fit()
    assert 0.0 <= out["cos/chemnet"] <= 1.0 and out["w_diff"] == 0.5  # warm-up over 2 steps
    assert "eval/mol_stability" in out
    cfg2 = replace(cfg, train=replace(cfg.train, steps=4))
    Trainer(cfg2.train, MoleculeTask(cfg2), experiment_config=cfg2).fit()
    steps = [r["step"] for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert steps == [2, 4]  # resumed from step 2, not restarted
    evals = [json.loads(ln) for ln in (tmp_path / "run" / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [2, 4] and evals[0]["num_molecules"] == 4


def test_target_store_must_cover_the_training_split(qm9_small_path, chemnet_store, tmp_path):
    from reed_molecule.task import MoleculeTask

    cfg = _cfg(qm9_small_path, chemnet_store, tmp_path / "r")
    wide = {"chemnet": replace(cfg.reed.targets["chemnet"], dim=256)}
    with pytest.raises(ValueError, match="reed.targets.chemnet.dim: is 256, but store"):
        MoleculeTask(replace(cfg, reed=replace(cfg.reed, targets=wide)))
    read = {"chemnet": replace(cfg.reed.targets["chemnet"], dim=0)}  # 0: the store's width
    assert MoleculeTask(replace(cfg, reed=replace(cfg.reed, targets=read))).targets[0].dim == 512
    off = {"chemnet": replace(cfg.reed.targets["chemnet"], enabled=False)}
    assert MoleculeTask(replace(cfg, reed=replace(cfg.reed, targets=off))).model.aligner is None
    cfg = replace(cfg, data=replace(cfg.data, train_split="test"))
    with pytest.raises(ValueError, match="reed.targets.chemnet.store: .* has no entry"):
        MoleculeTask(cfg)


def test_alignment_loss_is_rotation_invariant(qm9_small_path, chemnet_store, tmp_path):
    from e3nn import o3

    from reed_molecule.objective import corrupt
    from reed_molecule.task import MoleculeTask

    task = MoleculeTask(_cfg(qm9_small_path, chemnet_store, tmp_path / "r"))
    b = task.batch(0, 0, 1, torch.device("cpu"))
    tau = torch.full((len(b),), 0.4)
    noisy = corrupt(b, tau, task.num_classes, torch.Generator().manual_seed(0))
    z = task.z_targets(b.index)
    masks = {"chemnet": b.mask}
    _, al = task.model(
        noisy.x, noisy.a, noisy.c, noisy.e, b.mask, tau, tau=tau, z_targets=z, align_masks=masks
    )
    torch.manual_seed(0)
    R = o3.rand_matrix()
    _, al_r = task.model(
        noisy.x @ R.T, noisy.a, noisy.c, noisy.e, b.mask, tau, tau=tau, z_targets=z, align_masks=masks
    )
    assert al["chemnet"].loss.shape == (len(b),)
    assert torch.allclose(al["chemnet"].loss, al_r["chemnet"].loss, atol=1e-4)


def test_cli_train_sample_evaluate(qm9_small_path, tmp_path, capsys):
    from reed_molecule import evaluate, sample, train

    run = tmp_path / "base"
    train.main(
        [
            "--preset",
            "tiny",
            f"data.path={qm9_small_path}",
            "reed.targets={}",
            "--run-dir",
            str(run),
            "train.steps=2",
            "model.self_condition=true",
        ]
    )
    sdf = tmp_path / "gen.sdf"
    grid = tmp_path / "gen.png"
    sample.main(
        ["--run-dir", str(run), "--num", "3", "--steps", "2", "--out", str(sdf), "--device", "cpu"]
        + ["--grid", str(grid), "--grid-num", "2"]
    )
    assert sdf.read_text().count("$$$$") == 3
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "the first 2 to" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # a grid depicts an SDF's molecules
        sample.main(["--run-dir", str(run), "--out", str(tmp_path / "gen.npz"), "--grid", str(grid)])
    assert "--grid: depicts the molecules of an .sdf --out" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--num-atoms: impossible atom count 0"):
        sample.main(["--run-dir", str(run), "--num-atoms", "5,0", "--out", str(sdf), "--device", "cpu"])
    with pytest.raises(SystemExit, match="impossible atom count 99"):
        sample.main(["--run-dir", str(run), "--num-atoms", "99", "--out", str(sdf), "--device", "cpu"])
    m = evaluate.main(
        ["--sdf", str(sdf), "--data", str(qm9_small_path), "--no-mmff", "--out", str(tmp_path / "m.json")]
    )
    assert m == json.loads((tmp_path / "m.json").read_text())
    assert m["num_molecules"] == 3 and 0.0 <= m["validity"] <= 1.0
    bad = tmp_path / "bad.sdf"
    bad.write_text("not\nan\nsdf\n")
    with pytest.raises(SystemExit, match="bad.sdf"):
        evaluate.main(["--sdf", str(bad)])


def test_tiny_preset_needs_no_preparation(tmp_path, monkeypatch):
    """`python -m reed_molecule.train --preset tiny` from a clean state (no prepared data, no store,
    an empty working folder): it trains on the packaged 64 molecules, builds its ChemNet store in
    the run folder on first use, writes a checkpoint that `python -m reed_molecule.sample` reads, and
    saves a config without a path of this machine. A second call resumes and reuses the store."""
    from reed_core.features import FeatureStore
    from reed_core.train import read_metrics
    from reed_molecule import sample, train
    from reed_molecule.data.arrays import MoleculeArrays

    monkeypatch.chdir(tmp_path)  # nothing prepared under data/ here
    run = tmp_path / "runs" / "tiny"
    out = train.main(["--preset", "tiny", f"train.run_dir={run}"])
    assert (run / "checkpoints" / "last.pt").is_file()
    store = run / "features" / "chemnet"
    assert 0.0 <= out["cos/chemnet"] <= 1.0
    built = (store / "meta.json").stat().st_mtime_ns
    assert len(FeatureStore.open(store)) == len(MoleculeArrays.load("packaged:qm9_64").split("train")) == 48
    saved = (run / "config.yaml").read_text()
    assert "packaged:qm9_64" in saved and "qm9_64.npz" not in saved  # resolved when loaded, not saved

    train.main(["--preset", "tiny", f"train.run_dir={run}", "train.steps=6"])
    assert [r["step"] for r in read_metrics(run) if "loss" in r] == [2, 4, 6]  # resumed
    assert (store / "meta.json").stat().st_mtime_ns == built  # the store was reused, not rebuilt

    sdf = tmp_path / "gen.sdf"
    sample.main(["--run-dir", str(run), "--num", "3", "--steps", "2", "--out", str(sdf), "--device", "cpu"])
    assert sdf.read_text().count("$$$$") == 3


def test_cli_help_errors_and_slurm_dry_run(tmp_path, capsys):
    from reed_molecule import evaluate, pretrain_encoder, sample, targets, train

    for mod in (train, sample, evaluate, pretrain_encoder, targets):
        with pytest.raises(SystemExit) as exit_:
            mod.main(["--help"])
        assert exit_.value.code == 0 and "usage" in capsys.readouterr().out, mod.__name__
    with pytest.raises(SystemExit, match="model.num_layers"):
        train.main(["--preset", "tiny", "model.num_layers=zero"])
    script = train.main(
        [
            "--preset",
            "qm9_reed",
            "--run-dir",
            str(tmp_path),
            "--slurm",
            "--slurm-dry-run",
            "--slurm-gpus-per-node",
            "1",
        ]
    )
    assert "#SBATCH" in str(script) + capsys.readouterr().out


def test_presets_resolve_and_round_trip(tmp_path):
    from reed_core.config import ConfigError, load_config, load_config_file, save_config
    from reed_core.schedules import linear_warmup

    for name in PRESETS:
        cfg = load_config(MoleculeConfig, PRESETS, name)
        path = save_config(cfg, tmp_path / f"{name}.yaml")
        assert load_config_file(MoleculeConfig, path) == cfg
    reed = load_config(MoleculeConfig, PRESETS, "qm9_reed", overrides=["reed.targets.chemnet.weight=0.5"])
    t = reed.reed.targets["chemnet"]
    assert (t.depth, t.dim, t.pooling, t.weight, t.projector_hidden) == (5, 512, "mean", 0.5, 1024)
    curriculum = reed.reed.curriculum
    assert curriculum.w_diff == linear_warmup(0, 30) and curriculum.unit == "epoch"
    with pytest.raises(ConfigError, match="targets was renamed reed.targets"):
        load_config(MoleculeConfig, PRESETS, "qm9_reed", overrides=["targets.chemnet.weight=0.5"])
    with pytest.raises(ConfigError, match="curriculum was renamed reed.curriculum"):
        load_config(MoleculeConfig, PRESETS, "qm9_reed", overrides=["curriculum.diffusion_warmup=30"])


def test_pretrained_3d_encoder_as_a_target(qm9_small_path, tmp_path):
    from reed_core.train import Trainer
    from reed_molecule.data.arrays import MoleculeArrays
    from reed_molecule.pretrain_encoder import PRESETS as ENC
    from reed_molecule.pretrain_encoder import EncoderTask, embed, load_encoder
    from reed_molecule.targets import build_target_store

    cfg = ENC["tiny"]()
    cfg = replace(
        cfg,
        data=replace(cfg.data, path=str(qm9_small_path)),
        train=replace(cfg.train, run_dir=str(tmp_path / "enc")),
    )
    Trainer(cfg.train, EncoderTask(cfg), experiment_config=cfg).fit()
    ckpt = tmp_path / "enc" / "checkpoints" / "last.pt"
    model, vocab = load_encoder(ckpt)
    arrays = MoleculeArrays.load(qm9_small_path)
    mols = [arrays.get(i) for i in range(4)]
    z = embed(model, mols)
    assert z.shape == (4, 16)
    R = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0)))[0]
    z_r = embed(model, [(x @ R.numpy().T + 3.0, a, c, e) for x, a, c, e in mols])
    assert torch.allclose(z, z_r, atol=1e-4)  # a 3-D target must not depend on the pose
    store = build_target_store(arrays, f"checkpoint:{ckpt}", tmp_path / "store", np.arange(6))
    assert len(store) == 6 and store.meta.shape == (16,)
    bad = tmp_path / "bad.pt"
    torch.save({"model": {}, "config": {"nope": 1}}, bad)
    with pytest.raises(ValueError, match="not a reed_molecule.pretrain_encoder run"):
        load_encoder(bad)


def test_descriptor_fingerprint_and_unimol_targets(qm9_small):
    from reed_molecule.targets import DescriptorEncoder, MorganEncoder, make_encoder

    smiles = qm9_small.smiles[:8]
    d = DescriptorEncoder().fit(qm9_small.smiles)(smiles)
    assert d.shape[0] == 8 and torch.isfinite(d).all()
    assert MorganEncoder()(smiles).shape == (8, 2048)
    try:
        import unimol_tools  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="unimol_tools"):
            make_encoder("unimol", vocab=qm9_small.vocab)
    with pytest.raises(ValueError, match="--target: unknown"):
        make_encoder("dinov2")
