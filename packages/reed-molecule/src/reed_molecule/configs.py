"""Typed experiment configs and named presets for 3-D molecule generation.

Presets (``--preset NAME``):

    qm9_baseline        flow matching only (the baseline of the comparison)
    qm9_reed            + ChemNet SMILES embedding at layer 5, masked mean pooling, weight 0.2,
                        diffusion warm-up over 30 epochs (the paper's molecule recipe)
    qm9_budget_baseline / qm9_budget_reed
                        the same at a few-minute GPU budget (6 layers, evaluation every 500
                        steps). The paper's 30-epoch diffusion warm-up is longer than this whole
                        budget (a few epochs), so it is scaled down to 150 steps.
    tiny                a CPU smoke configuration
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from reed_core.decomposition import AlphaSpec
from reed_core.train import TrainConfig
from reed_molecule.models.equivariant import DenoiserConfig
from reed_molecule.objective import FlowConfig

CURRICULUM_UNITS = ("step", "epoch")


@dataclass(frozen=True)
class DataConfig:
    """``path``: a MoleculeArrays ``.npz`` (``python -m reed_molecule.data.qm9 --out FILE``)."""

    path: str = "data/qm9.npz"
    train_split: str = "train"
    eval_split: str = "test"
    limit: int = 0  # > 0: use only the first N training molecules (smoke tests)


@dataclass(frozen=True)
class TargetConfig:
    """One alignment target ``z_k``: a FeatureStore built by ``python -m reed_molecule.targets``."""

    store: str = ""  # FeatureStore folder (keyed by molecule id)
    depth: int = 5  # 1-based layer of the denoiser
    dim: int = 512
    pooling: str = "mean"  # masked mean over real atoms -> one vector per molecule
    weight: float = 0.2  # lambda_k
    alpha: AlphaSpec = field(default_factory=AlphaSpec)
    projector_hidden: int = 1024
    projector_layers: int = 3


@dataclass(frozen=True)
class CurriculumSpec:
    """``w_diff``: 0 -> 1 linearly over ``diffusion_warmup`` (in ``unit``); ``w_align``: constant,
    or cosine-decayed to 0 at ``align_decay_end`` when > 0."""

    unit: str = "epoch"
    diffusion_warmup: float = 0.0
    align_decay_end: float = 0.0

    def __post_init__(self) -> None:
        if self.unit not in CURRICULUM_UNITS:
            raise ValueError(f"curriculum.unit: unknown {self.unit!r}; choose one of {CURRICULUM_UNITS}")
        if self.diffusion_warmup < 0 or self.align_decay_end < 0:
            raise ValueError("curriculum: diffusion_warmup and align_decay_end must be >= 0")


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
    targets: dict[str, TargetConfig] = field(default_factory=dict)
    curriculum: CurriculumSpec = field(default_factory=CurriculumSpec)
    eval: EvalConfig = field(default_factory=EvalConfig)


def qm9_baseline() -> MoleculeConfig:
    return MoleculeConfig()


def qm9_reed() -> MoleculeConfig:
    cfg = qm9_baseline()
    return replace(
        cfg,
        train=replace(cfg.train, run_dir="runs/qm9_reed"),
        targets={
            "chemnet": TargetConfig(
                store="data/features/qm9_chemnet", depth=5, dim=512, pooling="mean", weight=0.2
            )
        },
        curriculum=CurriculumSpec(unit="epoch", diffusion_warmup=30.0),
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
    return replace(cfg, curriculum=CurriculumSpec(unit="step", diffusion_warmup=150.0))


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
        model=DenoiserConfig(scalars=16, vectors=4, edge_dim=8, num_layers=3, num_rbf=8),
        targets={"chemnet": replace(cfg.targets["chemnet"], depth=2, projector_hidden=32)},
        curriculum=CurriculumSpec(unit="step", diffusion_warmup=2.0),
        eval=EvalConfig(num_samples=4, sample_steps=3, batch_size=4, mmff=False),
    )


PRESETS = {
    "qm9_baseline": qm9_baseline,
    "qm9_reed": qm9_reed,
    "qm9_budget_baseline": qm9_budget_baseline,
    "qm9_budget_reed": qm9_budget_reed,
    "tiny": tiny,
}
