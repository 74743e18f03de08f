"""Typed experiment configs and named presets for 3-D molecule generation.

Presets (``--preset NAME``):

    qm9_baseline        flow matching only (the baseline of the comparison)
    qm9_reed            + ChemNet SMILES embedding at layer 5, masked mean pooling, weight 0.2,
                        diffusion warm-up over 30 epochs (the paper's molecule recipe)
    qm9_budget_baseline / qm9_budget_reed
                        the same at a few-minute GPU budget (6 layers, evaluation every 500
                        steps). The paper's 30-epoch diffusion warm-up is longer than this whole
                        budget (a few epochs), so it is scaled down to 150 steps.
    qm9_semla           the Semla architecture of SemlaFlow (``model.arch=semla``, 10 layers,
                        d_model 384, 64 coordinate sets, 19.8 M parameters) with self-conditioning,
                        tau ~ Beta(1, 2) (more weight near the data, as SemlaFlow samples its time),
                        batch 256 of molecules of similar size (``data.batching=size``: less
                        padding), checkpoints every 1,000 steps (a run resumes across GPU calls),
                        evaluation of 1,000 molecules sampled with ``eval.sample_steps`` (100) steps
    qm9_semla_reed      the same + ChemNet at layer 5 (the paper's molecule recipe)
    tiny                a CPU smoke test that needs no preparation: trains 4 steps on the 64 QM9
                        molecules shipped with the package (``data.path=packaged:qm9_64``), aligned
                        to ChemNet through a store built into the run folder on first use
    tiny_semla          the same with a 3-layer Semla network

The REED recipe is reed-core's ``reed`` section (:class:`reed_core.recipe.ReedConfig`): each
target ``z_k`` is read from a FeatureStore (``reed.targets.<name>.store``, keyed by molecule id,
built by ``python -m reed_molecule.targets``; ``encoder`` names what built it; an empty ``store``
means ``RUN_DIR/features/<name>``, built from the training split on first use), and the
curriculum is ``reed.curriculum`` (``w_diff``, ``w_align``, ``unit`` step | epoch).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

from reed_core.curriculum import CurriculumConfig
from reed_core.recipe import ReedConfig, TargetConfig
from reed_core.schedules import linear_warmup
from reed_core.train import TrainConfig
from reed_molecule.models.config import DenoiserConfig
from reed_molecule.objective import FlowConfig

BATCHINGS = ("random", "size")


@dataclass(frozen=True)
class DataConfig:
    """``path``: a MoleculeArrays ``.npz`` (``python -m reed_molecule.data.qm9 --out FILE``), or
    ``packaged:NAME`` for a file shipped with the package (``packaged:qm9_64``: 64 QM9 molecules,
    the ``tiny`` preset's data; resolved when the data is loaded). ``batching=size`` fills each
    batch with molecules of similar size (:class:`reed_molecule.data.batch.SizeBucketSampler`)."""

    path: str = "data/qm9.npz"
    train_split: str = "train"
    eval_split: str = "test"
    limit: int = 0  # > 0: use only the first N training molecules (smoke tests)
    batching: str = "random"  # random | size: molecules of similar size per batch (less padding)
    bucket_chunk: int = 64  # batching=size: batches per sorted chunk of the epoch's permutation

    def __post_init__(self) -> None:
        if self.batching not in BATCHINGS:
            raise ValueError(f"data.batching: unknown {self.batching!r}; choose one of {BATCHINGS}")
        if self.bucket_chunk < 1:
            raise ValueError(f"data.bucket_chunk: must be >= 1, got {self.bucket_chunk}")


@dataclass(frozen=True)
class EvalConfig:
    num_samples: int = 512
    sample_steps: int = 100
    batch_size: int = 512
    mmff: bool = True
    mmff_max: int = 200  # molecules MMFF-relaxed per evaluation
    fcd: bool = False  # needs fcd-torch; flagged when ChemNet is also a target
    use_ema: bool = True


@dataclass(frozen=True)
class MoleculeConfig:
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            run_dir="runs/qm9_baseline",
            steps=300_000,
            batch_size=128,
            lr=3e-4,
            lr_warmup_steps=1000,
            weight_decay=0.0,
            grad_clip=1.0,
            ema_decay=0.999,
            log_every=100,
            ckpt_every=5000,
            eval_every=10_000,
        )
    )
    data: DataConfig = field(default_factory=DataConfig)
    model: DenoiserConfig = field(default_factory=DenoiserConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    reed: ReedConfig = field(default_factory=lambda: ReedConfig(curriculum=CurriculumConfig(unit="epoch")))
    eval: EvalConfig = field(default_factory=EvalConfig)

    RENAMED: ClassVar[dict[str, str]] = {"targets": "reed.targets", "curriculum": "reed.curriculum"}


def chemnet_target(store: str = "data/features/qm9_chemnet", depth: int = 5) -> TargetConfig:
    """The paper's molecule target: the ChemNet SMILES embedding (512-d) at denoiser layer
    ``depth``, masked mean over real atoms -> one vector per molecule, lambda 0.2."""
    return TargetConfig(
        encoder="chemnet",
        store=store,
        depth=depth,
        dim=512,
        pooling="mean",
        weight=0.2,
        projector_hidden=1024,
    )


def qm9_baseline() -> MoleculeConfig:
    return MoleculeConfig()


def qm9_reed() -> MoleculeConfig:
    cfg = qm9_baseline()
    return replace(
        cfg,
        train=replace(cfg.train, run_dir="runs/qm9_reed"),
        reed=ReedConfig(
            targets={"chemnet": chemnet_target()},
            curriculum=CurriculumConfig(w_diff=linear_warmup(0, 30), unit="epoch"),
        ),
    )


def _budget(cfg: MoleculeConfig, run_dir: str) -> MoleculeConfig:
    return replace(
        cfg,
        train=replace(
            cfg.train,
            run_dir=run_dir,
            steps=3000,
            batch_size=128,
            lr=5e-4,
            lr_warmup_steps=200,
            ema_decay=0.999,
            log_every=50,
            ckpt_every=1000,
            eval_every=500,
        ),
        model=replace(cfg.model, scalars=128, vectors=32, edge_dim=64, num_layers=6),
        eval=EvalConfig(num_samples=512, sample_steps=50, mmff=True, mmff_max=100, fcd=True),
    )


def qm9_budget_baseline() -> MoleculeConfig:
    return _budget(qm9_baseline(), "runs/qm9_budget_baseline")


def qm9_budget_reed() -> MoleculeConfig:
    cfg = _budget(qm9_reed(), "runs/qm9_budget_reed")
    curriculum = CurriculumConfig(w_diff=linear_warmup(0, 150), unit="step")
    return replace(cfg, reed=replace(cfg.reed, curriculum=curriculum))


def tiny() -> MoleculeConfig:
    cfg = qm9_reed()
    return replace(
        cfg,
        train=replace(
            cfg.train,
            run_dir="runs/tiny",
            steps=4,
            batch_size=4,
            log_every=2,
            ckpt_every=2,
            eval_every=0,
            device="cpu",
            progress_bar=False,
            tensorboard=False,
            lr_warmup_steps=0,
        ),
        data=replace(cfg.data, path="packaged:qm9_64"),  # shipped with the package: no preparation
        model=DenoiserConfig(scalars=16, vectors=4, edge_dim=8, num_layers=3, num_rbf=8),
        reed=ReedConfig(
            # store "": RUN_DIR/features/chemnet, built on first use (48 SMILES, a second on a CPU)
            targets={"chemnet": replace(cfg.reed.targets["chemnet"], store="", depth=2, projector_hidden=32)},
            curriculum=CurriculumConfig(w_diff=linear_warmup(0, 2), unit="step"),
        ),
        eval=EvalConfig(num_samples=4, sample_steps=3, batch_size=4, mmff=False),
    )


def semla_model(self_condition: bool = True) -> DenoiserConfig:
    """SemlaFlow's layer sizes (d_model 384, 64 coordinate sets, 32 heads, d_message 128, d_edge
    128) at 10 layers instead of 12: 19.8 M parameters with self-conditioning."""
    return DenoiserConfig(
        arch="semla",
        scalars=384,
        vectors=64,
        edge_dim=128,
        num_layers=10,
        heads=32,
        message_dim=128,
        message_hidden=128,
        self_condition=self_condition,
    )


def qm9_semla() -> MoleculeConfig:
    cfg = qm9_baseline()
    return replace(
        cfg,
        train=replace(
            cfg.train,
            run_dir="runs/qm9_semla",
            steps=200_000,
            batch_size=256,
            lr=3e-4,
            lr_warmup_steps=2000,
            ema_decay=0.999,
            log_every=100,
            ckpt_every=1000,
            eval_every=5000,
        ),
        data=replace(cfg.data, batching="size"),
        model=semla_model(),
        flow=replace(cfg.flow, tau_sampling="beta"),
        eval=EvalConfig(num_samples=1000, sample_steps=100, batch_size=500, mmff=True, mmff_max=200),
    )


def qm9_semla_reed() -> MoleculeConfig:
    cfg = qm9_semla()
    reed = qm9_reed().reed
    return replace(cfg, train=replace(cfg.train, run_dir="runs/qm9_semla_reed"), reed=reed)


def tiny_semla() -> MoleculeConfig:
    cfg = tiny()
    model = DenoiserConfig(
        arch="semla",
        scalars=16,
        vectors=4,
        edge_dim=8,
        num_layers=3,
        heads=4,
        message_dim=8,
        message_hidden=16,
    )
    return replace(cfg, train=replace(cfg.train, run_dir="runs/tiny_semla"), model=model)


PRESETS = {
    "qm9_baseline": qm9_baseline,
    "qm9_reed": qm9_reed,
    "qm9_budget_baseline": qm9_budget_baseline,
    "qm9_budget_reed": qm9_budget_reed,
    "qm9_semla": qm9_semla,
    "qm9_semla_reed": qm9_semla_reed,
    "tiny": tiny,
    "tiny_semla": tiny_semla,
}
