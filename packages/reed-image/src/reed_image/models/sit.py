"""SiT: Scalable Interpolant Transformer (Ma et al., 2024), the denoiser of REED's image domain.

A DiT backbone (Peebles & Xie, 2023): patchify -> fixed 2-D sin-cos positions -> N blocks with
adaLN-Zero conditioning on ``c = t_emb(tau) + y_emb(y)`` -> final adaLN layer -> unpatchify. The
network knows nothing of noise or losses; it maps ``(x_tau, tau, y)`` to a velocity. Each block

    x = x + gate_msa * Attn(modulate(LN(x), shift_msa, scale_msa))
    x = x + gate_mlp * MLP(modulate(LN(x), shift_mlp, scale_mlp))

with ``(shift, scale, gate)_{msa, mlp} = Linear(SiLU(c))`` initialised to zero (adaLN-Zero).
The label table has one extra row, ``y = num_classes``, the null label of classifier-free
guidance. Hidden states after any block are alignment taps (``tap_points()``, 1-based depth).

This is the plain PyTorch model. ``model.kernels`` picks ``sit_fused.FusedSiT`` instead (the
same parameters and checkpoints, hand-written kernels; ``reed_image.models.build_sit``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# name -> (depth, hidden_size, num_heads); patch size comes from the suffix (DiT/SiT table 1)
SIZES = {
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}
PATCHES = (2, 4, 8)
RESIDUAL_DTYPES = ("float32", "autocast")  # SiTConfig.residual_dtype
KERNELS = ("none", "fused", "fused-fa4")  # SiTConfig.kernels


@dataclass(frozen=True)
class SiTConfig:
    """Architecture of one SiT. ``arch`` such as ``"SiT-XL/2"`` sets depth/width/heads/patch.

    ``depth``/``hidden_size``/``num_heads`` override the named size (tests use tiny widths).
    """

    arch: str = "SiT-S/2"
    input_size: int = 32  # H = W of the model input (latent or pixel grid)
    in_channels: int = 4
    num_classes: int = 1000
    mlp_ratio: float = 4.0
    qk_norm: bool = False
    # the residual stream (every block's x, and its gradient): "float32", what autocast's type
    # promotion makes it (bf16 patches + float32 positions), as in SiT's and REPA's code; or
    # "autocast": the autocast dtype (bf16), as Megatron-LM keeps it by default. Without autocast
    # both are the same. SiT-XL/2 with kernels: +11.5 to +14 images/s on an H100 (docs/results/image.md)
    residual_dtype: str = "float32"
    # "none": this module's PyTorch model. "fused": sit_fused.FusedSiT (reed-kernels: fused adaLN
    # chain, cuBLASLt MLP and Linears); "fused-fa4": that and the packed FlashAttention-4 attention
    # (Hopper GPUs). The same parameters and checkpoints; pip install 'reed-image[kernels]' / '[fa4]'
    kernels: str = "none"
    # a cuBLASLt plan file (reed_kernels.cublaslt_plans; tools/bench_image.py --save-cublaslt-plans):
    # read and checked when the task is built, installed on a CUDA device, so that the fused model's
    # GEMMs run those algorithms instead of autotuning (the same ones after a restart). "" = autotune
    cublaslt_plans: str = ""
    depth: int | None = None
    hidden_size: int | None = None
    num_heads: int | None = None

    # keys of earlier versions (reed_core.config names them when a saved config still has one)
    RENAMED: ClassVar[dict[str, str]] = {
        "attention": "",
        "fused_adaln": "model.kernels",
        "fused_gelu": "model.kernels",
        "fused_mlp": "model.kernels",
    }

    def resolved(self) -> tuple[int, int, int, int]:
        """``(depth, hidden_size, num_heads, patch_size)``; checks the whole config."""
        size, patch = parse_arch(self.arch)
        for name in ("depth", "hidden_size", "num_heads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"model.{name}: must be >= 1 (or unset: {self.arch}'s), got {value}")
        depth, hidden, heads = SIZES[size]
        depth = self.depth or depth
        hidden = self.hidden_size or hidden
        heads = self.num_heads or heads
        if self.residual_dtype not in RESIDUAL_DTYPES:
            raise ValueError(
                f"model.residual_dtype: unknown {self.residual_dtype!r}; choose from {list(RESIDUAL_DTYPES)}"
            )
        if self.kernels not in KERNELS:
            raise ValueError(f"model.kernels: unknown {self.kernels!r}; choose from {list(KERNELS)}")
        if self.cublaslt_plans and self.kernels == "none":
            raise ValueError(
                "model.cublaslt_plans: the plain model (model.kernels=none) runs no cuBLASLt GEMMs; "
                "set model.kernels=fused or fused-fa4, or leave the plan file out"
            )
        if hidden % heads:
            raise ValueError(f"model.hidden_size {hidden} is not divisible by num_heads {heads}")
        if self.input_size % patch:
            raise ValueError(
                f"model.input_size {self.input_size} is not divisible by the patch size {patch} "
                f"of {self.arch}"
            )
        return depth, hidden, heads, patch


def parse_arch(arch: str) -> tuple[str, int]:
    """``"SiT-XL/2" -> ("XL", 2)``; a clear error for anything else."""
    try:
        prefix, patch_s = arch.split("/")
        family, size = prefix.split("-")
        patch = int(patch_s)
    except ValueError:
        raise ValueError(f"model.arch: cannot parse {arch!r}; expected 'SiT-<S|B|L|XL>/<2|4|8>'") from None
    if family != "SiT" or size not in SIZES or patch not in PATCHES:
        raise ValueError(f"model.arch: unknown {arch!r}; choose SiT-{{{','.join(SIZES)}}}/{{2,4,8}}")
    return size, patch


SiT_models = [f"SiT-{s}/{p}" for s in SIZES for p in PATCHES]


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TimestepEmbedder(nn.Module):
    """``tau -> MLP(sinusoid(tau))``; frequencies as in DiT/SiT (``tau`` is fed unscaled, as in SiT)."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(
            -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
        )
        args = t[:, None].float() * freqs[None]  # (B, half)
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t_freq = self.timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(t_freq.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class embedding with one extra row: label ``num_classes`` is the null label (CFG)."""

    def __init__(self, num_classes: int, hidden_size: int):
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(y)


class Attention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention`` (PyTorch picks the
    kernel), with optional per-head LayerNorms of q and k (qk-norm)."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qk_norm = qk_norm
        self.qkv = nn.Linear(dim, dim * 3)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, nh, N, hs)
        q, k = self.q_norm(q), self.k_norm(k)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    """``fc2(gelu_tanh(fc1(x)))``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SiTBlock(nn.Module):
    """Transformer block with adaLN-Zero conditioning."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, qk_norm: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads, qk_norm=qk_norm)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        modulation = self.adaLN_modulation(c)  # (B, 6D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation.chunk(6, dim=-1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


def get_2d_sincos_pos_embed(embed_dim: int, grid_h: int, grid_w: int) -> np.ndarray:
    """Fixed 2-D sin-cos positions ``[grid_h * grid_w, embed_dim]`` (MAE/DiT), row-major tokens."""
    if embed_dim % 4:
        raise ValueError(f"2-D sin-cos positions need hidden_size divisible by 4, got {embed_dim}")
    gh = np.arange(grid_h, dtype=np.float64)
    gw = np.arange(grid_w, dtype=np.float64)
    ww, hh = np.meshgrid(gw, gh)  # (grid_h, grid_w) each; DiT puts w first

    def one_d(dim: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([one_d(embed_dim // 2, ww), one_d(embed_dim // 2, hh)], axis=1)


class SiT(nn.Module):
    """``v_theta(x_tau, tau, y)``: image ``[B, C, H, W]`` -> velocity ``[B, C, H, W]``.

    ``tap_points()`` lists the blocks (1-based depth ``d`` is ``blocks.{d-1}``) whose outputs
    ``[B, N, D]`` alignment reads through forward hooks.
    """

    block_class: type[SiTBlock] = SiTBlock  # FusedSiT's blocks: the same parameters, other forward

    def __init__(self, cfg: SiTConfig):
        super().__init__()
        depth, hidden, heads, patch = cfg.resolved()
        self.cfg = cfg
        self.depth, self.hidden_size, self.num_heads, self.patch_size = depth, hidden, heads, patch
        self.in_channels = self.out_channels = cfg.in_channels
        self.input_size = cfg.input_size
        self.num_classes = cfg.num_classes
        self.grid = cfg.input_size // patch
        self.x_embedder = nn.Conv2d(cfg.in_channels, hidden, kernel_size=patch, stride=patch)
        self.t_embedder = TimestepEmbedder(hidden)
        self.y_embedder = LabelEmbedder(cfg.num_classes, hidden)
        pos = get_2d_sincos_pos_embed(hidden, self.grid, self.grid)
        self.register_buffer("pos_embed", torch.from_numpy(pos).float().unsqueeze(0), persistent=False)
        self.blocks = nn.ModuleList(
            [self.block_class(hidden, heads, cfg.mlp_ratio, cfg.qk_norm) for _ in range(depth)]
        )
        self.final_layer = FinalLayer(hidden, patch, self.out_channels)
        self.initialize_weights()

    @property
    def null_label(self) -> int:
        return self.num_classes

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid

    def tap_points(self) -> list[str]:
        """Module paths of the alignable hidden states; depth ``d`` (1-based) is block ``d``."""
        return [f"blocks.{i}" for i in range(self.depth)]

    def tap_dims(self) -> dict[str, int]:
        return {path: self.hidden_size for path in self.tap_points()}

    def initialize_weights(self) -> None:
        """DiT initialisation: xavier linears, zeroed adaLN modulations and output layer."""

        def _basic(m: nn.Module) -> None:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

        self.apply(_basic)
        w = self.x_embedder.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def check_input(self, x: torch.Tensor) -> None:
        want = (self.in_channels, self.input_size, self.input_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(
                f"SiT input: expected images [B, {want[0]}, {want[1]}, {want[2]}] "
                f"(model.in_channels, model.input_size), got {tuple(x.shape)}"
            )

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, N, p*p*C] -> [B, C, H, W]``."""
        p, c, g = self.patch_size, self.out_channels, self.grid
        x = x.reshape(x.shape[0], g, g, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, g * p, g * p)

    def residual_dtype(self, patches: torch.Tensor) -> torch.dtype:
        """The residual stream's dtype for the patch embedding ``patches`` (``model.residual_dtype``):
        ``patches + pos_embed``'s (float32 under autocast), or the autocast dtype with "autocast"."""
        device_type = patches.device.type
        if self.cfg.residual_dtype == "autocast" and torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
        return torch.promote_types(self.pos_embed.dtype, patches.dtype)

    def embed(self, tau: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The conditioning ``c = t_emb(tau) + y_emb(y)`` ``[B, D]``, at least float32 (also with
        bf16 parameters, train.speed.param_dtype: every block adds to its gradient)."""
        c = self.t_embedder(tau) + self.y_embedder(y)
        return c.to(torch.promote_types(c.dtype, torch.float32))

    def forward(self, x: torch.Tensor, tau: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``x [B, C, H, W]``, ``tau [B]`` in [0, 1], ``y [B]`` long (``num_classes`` = null).

        Returns the velocity ``[B, C, H, W]``. Block outputs ``[B, N, D]`` are read by forward
        hooks (:class:`reed_core.taps.FeatureTaps` through ``tap_points()``).
        """
        self.check_input(x)
        patches = self.x_embedder(x).flatten(2).transpose(1, 2)  # (B, N, D)
        x = (patches + self.pos_embed).to(self.residual_dtype(patches))
        c = self.embed(tau, y)  # (B, D)
        for block in self.blocks:
            x = block(x, c)
        return self.unpatchify(self.final_layer(x, c))  # (B, C, H, W)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
