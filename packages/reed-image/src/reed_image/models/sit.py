"""SiT: Scalable Interpolant Transformer (Ma et al., 2024), the denoiser of REED's image domain.

A DiT backbone (Peebles & Xie, 2023): patchify -> fixed 2-D sin-cos positions -> N blocks with
adaLN-Zero conditioning on ``c = t_emb(tau) + y_emb(y)`` -> final adaLN layer -> unpatchify. The
network knows nothing of noise or losses; it maps ``(x_tau, tau, y)`` to a velocity. Each block

    x = x + gate_msa * Attn(modulate(LN(x), shift_msa, scale_msa))
    x = x + gate_mlp * MLP(modulate(LN(x), shift_mlp, scale_mlp))

with ``(shift, scale, gate)_{msa, mlp} = Linear(SiLU(c))`` initialised to zero (adaLN-Zero).
The label table has one extra row, ``y = num_classes``, the null label of classifier-free
guidance. Hidden states after any block are alignment taps (``tap_points()``, 1-based depth).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from reed_image.models.cublaslt_linear import cublaslt_linear
from reed_image.models.flash_attention import packed_attention
from reed_image.models.fused_adaln import add_norm_modulate
from reed_image.models.fused_gelu import bias_gelu
from reed_image.models.fused_mlp import mlp_gelu

# name -> (depth, hidden_size, num_heads); patch size comes from the suffix (DiT/SiT table 1)
SIZES = {
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}
PATCHES = (2, 4, 8)
# attention kernels of F.scaled_dot_product_attention; "auto" keeps PyTorch's own choice
ATTENTION_BACKENDS = {
    "auto": None,
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}
# model.attention: an SDPA kernel above, or "fa4": FlashAttention-4 on the packed qkv, its backward
# writing the qkv gradient in place of autograd's stack (models/flash_attention.py; Hopper GPUs)
ATTENTION_CHOICES = (*ATTENTION_BACKENDS, "fa4")
# the residual stream's dtype (SiTConfig.residual_dtype)
RESIDUAL_DTYPES = ("float32", "autocast")


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
    attention: str = "auto"  # preferred SDPA kernel: auto | flash | cudnn | efficient | math; or fa4
    # each residual add + the LayerNorm + modulate after it as one Triton kernel each way, the blocks
    # chained (models/fused_adaln.py) on CUDA; the same equations in PyTorch elsewhere. Opt-in:
    # -7 ms of GPU kernel time a SiT-XL/2 step with fused_gelu (H100; docs/results/image.md).
    fused_adaln: bool = False
    # the MLP's fc1 bias add + tanh-GELU as one Triton kernel each way, the bias gradient summed in
    # the backward kernel (models/fused_gelu.py) on CUDA; the same equations in PyTorch elsewhere.
    # Opt-in (-0.6 ms of kernel time on SiT-XL/2, H100). An fc1 swapped for another Linear class
    # (FP8) keeps the unfused path.
    fused_gelu: bool = False
    # the whole MLP as one op each way: fc1's bias + tanh-GELU in its GEMM's cuBLASLt epilogue, and
    # the GELU backward in the epilogue of the GEMM that forms its input gradient; all six GEMMs
    # autotuned (models/fused_mlp.py) on CUDA; the same equations in PyTorch elsewhere. Opt-in
    # (-2.0 ms a SiT-XL/2 training step against fused_gelu, H100, docs/results/image.md);
    # not with fused_gelu. An fc1/fc2 swapped for another Linear class
    # (FP8) keeps the unfused path.
    fused_mlp: bool = False
    # the residual stream (every block's x, and its gradient): "float32", what autocast's type
    # promotion makes it (bf16 patches + float32 positions), as in SiT's and REPA's code; or
    # "autocast": the autocast dtype (bf16), as Megatron-LM keeps it by default (its
    # --fp32-residual-connection off). Each residual add still computes in float32 and rounds
    # once. Without autocast both are the same. With fused_adaln it takes a third of the adaLN
    # kernels' traffic (SiT-XL/2: 12 -> 8 bytes an element forward, 18 -> 12 backward).
    residual_dtype: str = "float32"
    # a cuBLASLt plan file (models/cublaslt_plans.py: cublaslt_plans.save_plans, or
    # tools/bench_image.py --save-cublaslt-plans): read and checked when the task is built, and its
    # plans installed on a CUDA device, so that the GEMMs of fused_mlp and the cuBLASLt Linears run
    # those algorithms instead of autotuning (the same algorithms after a restart). "" = autotune
    cublaslt_plans: str = ""
    depth: int | None = None
    hidden_size: int | None = None
    num_heads: int | None = None

    def resolved(self) -> tuple[int, int, int, int]:
        """``(depth, hidden_size, num_heads, patch_size)``."""
        size, patch = parse_arch(self.arch)
        depth, hidden, heads = SIZES[size]
        depth = self.depth or depth
        hidden = self.hidden_size or hidden
        heads = self.num_heads or heads
        if self.attention not in ATTENTION_CHOICES:
            raise ValueError(
                f"model.attention: unknown {self.attention!r}; choose one of {list(ATTENTION_CHOICES)}"
            )
        if self.residual_dtype not in RESIDUAL_DTYPES:
            raise ValueError(
                f"model.residual_dtype: unknown {self.residual_dtype!r}; choose from {list(RESIDUAL_DTYPES)}"
            )
        if hidden % heads:
            raise ValueError(f"model.hidden_size {hidden} is not divisible by num_heads {heads}")
        if self.fused_gelu and self.fused_mlp:
            raise ValueError(
                "model.fused_gelu and model.fused_mlp are two fusions of the same MLP GELU; set one of them"
            )
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


# with model.fused_mlp (autotuned cuBLASLt GEMMs in the MLP) the attention's qkv and proj Linears
# run through autotuned cuBLASLt GEMMs too (models/cublaslt_linear.py); False for A/B timings
CUBLASLT_ATTENTION_LINEARS = True
# with model.fused_mlp and fused_adaln the chained blocks' adaLN Linears (SiLU(c) -> 6D) run through
# autotuned cuBLASLt GEMMs too; PyTorch's cuBLAS picks a kernel for their weight gradient that is
# preceded by a workspace memset (about 7 us of idle GPU a block inside the step's CUDA graph);
# False for A/B timings
CUBLASLT_ADALN_LINEARS = True
# model.attention=fa4 without qk-norm: the qkv bias gradient from the attention backward's own passes
# (models/flash_attention.py) in place of a reduction of the whole qkv gradient; False for A/B timings
FOLD_QKV_BIAS_GRAD = True


class Attention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``, or ``packed_attention``.

    ``backend`` (a key of ``ATTENTION_BACKENDS``) is tried first, the others after it where it
    cannot run the inputs; ``"auto"`` leaves the order to PyTorch. ``"fa4"`` runs
    ``models/flash_attention.packed_attention`` on the qkv projection's output viewed as
    ``[B, N, 3, H, d]`` (with qk-norm, on the normalised q and k stacked back with v; without it
    the qkv bias's gradient comes from that op, ``FOLD_QKV_BIAS_GRAD``). ``cublaslt_gemms`` (SiT:
    with ``model.fused_mlp``) runs the qkv and proj Linears through ``cublaslt_linear``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qk_norm: bool = False,
        backend: str = "auto",
        cublaslt_gemms: bool = False,
    ):
        super().__init__()
        self.packed = backend == "fa4"
        self.cublaslt_gemms = cublaslt_gemms
        preferred = ATTENTION_BACKENDS.get(backend)
        self.backends = (
            None
            if preferred is None
            else [preferred] + [b for b in ATTENTION_BACKENDS.values() if b not in (None, preferred)]
        )
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.qk_norm = qk_norm
        self.q_norm = nn.LayerNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, proj_bias: bool = True) -> torch.Tensor:
        """``proj_bias=False`` leaves out ``proj``'s bias (the caller adds it: ``deferred_bias``)."""
        B, N, C = x.shape
        plain = type(self.qkv) is nn.Linear and type(self.proj) is nn.Linear  # not converted (FP8)
        linear = cublaslt_linear if self.cublaslt_gemms and CUBLASLT_ATTENTION_LINEARS and plain else F.linear

        def qkv_projection(x: torch.Tensor) -> torch.Tensor:
            # a converted layer (FP8) keeps its own forward: the module is called, not its weights
            return self.qkv(x) if linear is F.linear else linear(x, self.qkv.weight, self.qkv.bias)

        def proj(out: torch.Tensor) -> torch.Tensor:
            if proj_bias and linear is F.linear:
                return self.proj(out)
            return linear(out, self.proj.weight, self.proj.bias if proj_bias else None)

        if self.packed:
            if FOLD_QKV_BIAS_GRAD and plain and self.qkv.bias is not None and not self.qk_norm:
                # the bias's gradient comes from the attention backward (packed_attention's docstring)
                qkv = linear(x, self.qkv.weight, self.qkv.bias.detach())
                qkv = qkv.view(B, N, 3, self.num_heads, self.head_dim)
                return proj(packed_attention(qkv, self.qkv.bias).reshape(B, N, C))
            qkv = qkv_projection(x).view(B, N, 3, self.num_heads, self.head_dim)
            if self.qk_norm:
                q, k, v = qkv.unbind(2)
                qkv = torch.stack((self.q_norm(q), self.k_norm(k), v), dim=2)
            return proj(packed_attention(qkv).reshape(B, N, C))
        qkv = qkv_projection(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, nh, N, hs)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.backends is None:
            x = F.scaled_dot_product_attention(q, k, v)  # (B, nh, N, hs)
        else:
            with sdpa_kernel(self.backends, set_priority=True):
                x = F.scaled_dot_product_attention(q, k, v)
        return proj(x.transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    """``fc2(gelu_tanh(fc1(x)))``; with ``fused_gelu`` fc1's bias add and the GELU are one kernel,
    with ``fused_mlp`` the GELU lives in the GEMMs' cuBLASLt epilogues (``models/fused_mlp.py``).

    The ``fused_gelu`` path runs fc1 as ``F.linear(x, fc1.weight)`` and only while ``fc1`` is a
    plain ``nn.Linear``; the ``fused_mlp`` path only while ``fc1`` and ``fc2`` both are. A converted
    layer (e.g. torchao's Float8Linear) has its own forward, so it keeps the unfused path.
    Parameters (``fc1.weight``, ``fc1.bias``, ...) are the same either way.
    """

    def __init__(self, dim: int, hidden: int, fused_gelu: bool = False, fused_mlp: bool = False):
        super().__init__()
        if fused_gelu and fused_mlp:
            raise ValueError(
                "Mlp: fused_gelu and fused_mlp exclude each other (model.fused_gelu, model.fused_mlp)"
            )
        self.fused_gelu = fused_gelu
        self.fused_mlp = fused_mlp
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, fc2_bias: bool = True) -> torch.Tensor:
        """``fc2_bias=False`` leaves out ``fc2``'s bias (the caller adds it: ``deferred_bias``)."""
        fc2 = self.fc2 if fc2_bias else (lambda act: F.linear(act, self.fc2.weight))
        if self.fused_mlp and type(self.fc1) is nn.Linear and type(self.fc2) is nn.Linear:
            b2 = self.fc2.bias if fc2_bias else None
            return mlp_gelu(x, self.fc1.weight, self.fc1.bias, self.fc2.weight, b2)
        if self.fused_gelu and type(self.fc1) is nn.Linear:
            return fc2(bias_gelu(F.linear(x, self.fc1.weight), self.fc1.bias))
        return fc2(self.act(self.fc1(x)))


# the chained fused_adaln blocks add proj's and fc2's biases in the adaLN kernels (deferred_bias);
# False keeps them in the GEMMs (tools/bench_image.py --no-deferred-biases, for A/B timings)
DEFER_BRANCH_BIASES = True
# how SiT.embed_patches runs the patch embedding: "linear" (one Linear on the flattened patches,
# token-major output) or "conv" (the Conv2d, as DiT/SiT write it; its output is strided)
PATCH_EMBED = "linear"


def deferred_bias(linear: nn.Module) -> torch.Tensor | None:
    """The bias of a branch's last Linear that the fused adaLN kernel can add in its place (the
    bias gradient then comes from the kernel's backward pass, not from one more read of the branch
    gradient); None for a converted layer (FP8) or one without a bias, which keeps its own, and
    while ``DEFER_BRANCH_BIASES`` is off."""
    return linear.bias if DEFER_BRANCH_BIASES and type(linear) is nn.Linear else None


class SiTBlock(nn.Module):
    """Transformer block with adaLN-Zero conditioning."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qk_norm: bool = False,
        attention: str = "auto",
        fused_adaln: bool = False,
        fused_gelu: bool = False,
        fused_mlp: bool = False,
    ):
        super().__init__()
        self.fused_adaln = fused_adaln
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(
            hidden_size, num_heads, qk_norm=qk_norm, backend=attention, cublaslt_gemms=fused_mlp
        )
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio), fused_gelu=fused_gelu, fused_mlp=fused_mlp)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(
        self,
        x: torch.Tensor,
        c: torch.Tensor,
        h: torch.Tensor | None = None,
        modulation: torch.Tensor | None = None,
        next_adaln: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The block output ``x [B, N, D]`` from ``x`` and the conditioning ``c [B, D]``.

        Chained form (``fused_adaln``, as ``SiT.forward`` calls it): ``modulation`` (this block's
        adaLN output ``[B, 6D]``) and ``h = modulate(LN(x), shift_msa, scale_msa)`` come from the
        step before; ``next_adaln`` is the ``(weight, bias)`` of the next block's (or the final
        layer's) adaLN Linear. Returns ``(x_out, h_next, next_modulation)``: the block's last
        residual add runs in one kernel with the next LayerNorm + modulate, whose shift/scale are
        the first two chunks of ``next_modulation = Linear(SiLU(c))``. Taps read ``x_out``.
        """
        if h is not None:
            if not self.fused_adaln or modulation is None or next_adaln is None:
                raise ValueError("SiTBlock: h, modulation and next_adaln are for fused_adaln blocks only")
            D = x.shape[-1]
            adaln_linear = cublaslt_linear if self.mlp.fused_mlp and CUBLASLT_ADALN_LINEARS else F.linear
            next_modulation = adaln_linear(F.silu(c), *next_adaln)  # (B, 6D), or (B, 2D) for the final layer
            _, _, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation.chunk(6, dim=-1)
            # proj's and fc2's biases are added in the kernels, before the gates (deferred_bias)
            proj_bias, fc2_bias = deferred_bias(self.attn.proj), deferred_bias(self.mlp.fc2)
            attn = self.attn(h, proj_bias=proj_bias is None)
            x, h = add_norm_modulate(
                x, attn, gate_msa, shift_mlp, scale_mlp, out_dtype=h.dtype, bias=proj_bias
            )
            x, h = add_norm_modulate(
                x,
                self.mlp(h, fc2_bias=fc2_bias is None),
                gate_mlp,
                next_modulation[:, :D],
                next_modulation[:, D : 2 * D],
                out_dtype=h.dtype,
                bias=fc2_bias,
            )
            return x, h, next_modulation
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(
            6, dim=-1
        )  # each (B, D)
        if self.fused_adaln:  # alone (not chained): the add and LN2 + modulate in one kernel
            out_dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled() else None
            x, h = add_norm_modulate(x, None, None, shift_msa, scale_msa, out_dtype=out_dtype)
            x, h = add_norm_modulate(x, self.attn(h), gate_msa, shift_mlp, scale_mlp, out_dtype=out_dtype)
            return x + gate_mlp.unsqueeze(1) * self.mlp(h)
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
        self.register_buffer(
            "pos_embed", torch.from_numpy(pos).float().unsqueeze(0), persistent=False
        )  # (1, N, D)
        self.blocks = nn.ModuleList(
            [
                SiTBlock(
                    hidden,
                    heads,
                    cfg.mlp_ratio,
                    cfg.qk_norm,
                    cfg.attention,
                    cfg.fused_adaln,
                    cfg.fused_gelu,
                    cfg.fused_mlp,
                )
                for _ in range(depth)
            ]
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

    def embed_patches(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, C, H, W] -> [B, N, D]``: the patch embedding, ``x_embedder`` (a Conv2d with
        kernel = stride = p), as one Linear on the flattened patches.

            patches[b, (i, j), (c, u, v)] = x[b, c, i p + u, j p + v]
            h = patches W^T + b,      W = x_embedder.weight viewed [D, C p p]

        The same sum as the convolution, with its parameters (checkpoints unchanged); ``h`` comes
        out token-major and contiguous. ``PATCH_EMBED = "conv"`` runs the Conv2d instead, whose
        output transposed to ``[B, N, D]`` is strided: at SiT-XL/2 shapes on an H100 cuDNN's
        convolution, its layout conversions and the strided adds and copies after it took about
        0.9 ms of a training step, forward and backward.
        """
        if PATCH_EMBED == "conv":
            return self.x_embedder(x).flatten(2).transpose(1, 2)
        p, g = self.patch_size, self.grid
        patches = x.reshape(x.shape[0], self.in_channels, g, p, g, p).permute(0, 2, 4, 1, 3, 5)
        patches = patches.reshape(x.shape[0], g * g, self.in_channels * p * p)
        weight = self.x_embedder.weight.reshape(self.hidden_size, -1)
        return F.linear(patches, weight, self.x_embedder.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, N, p*p*C] -> [B, C, H, W]``."""
        p, c, g = self.patch_size, self.out_channels, self.grid
        x = x.reshape(x.shape[0], g, g, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, g * p, g * p)

    def forward(self, x: torch.Tensor, tau: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``x [B, C, H, W]``, ``tau [B]`` in [0, 1], ``y [B]`` long (``num_classes`` = null).

        Returns the velocity ``[B, C, H, W]``. Block outputs ``[B, N, D]`` are read by forward
        hooks (:class:`reed_core.taps.FeatureTaps` through ``tap_points()``).
        """
        self.check_input(x)
        c = self.t_embedder(tau) + self.y_embedder(y)  # (B, D)
        # at least float32 (also with bf16 parameters, train.param_dtype): every block adds to its gradient
        c = c.to(torch.promote_types(c.dtype, torch.float32))
        patches = self.embed_patches(x)  # (B, N, D)
        if self.cfg.fused_adaln:
            return self.unpatchify(self._forward_fused_adaln(patches, c))
        h = (patches + self.pos_embed).to(self.residual_dtype(patches))
        for block in self.blocks:
            h = block(h, c)
        return self.unpatchify(self.final_layer(h, c))  # (B, C, H, W)

    def residual_dtype(self, patches: torch.Tensor) -> torch.dtype:
        """The residual stream's dtype for the patch embedding ``patches`` (``model.residual_dtype``):
        ``patches + pos_embed``'s (float32 under autocast), or the autocast dtype with "autocast"."""
        device_type = patches.device.type
        if self.cfg.residual_dtype == "autocast" and torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
        return torch.promote_types(self.pos_embed.dtype, patches.dtype)

    def _forward_fused_adaln(self, patches: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Blocks and final layer with every residual add fused into the LayerNorm + modulate after it.

        The same equations as the unfused loop, from the patch embedding ``patches [B, N, D]``: the
        first kernel forms the residual stream ``x = pos_embed + patches`` (in ``residual_dtype``:
        float32 as autocast's type promotion makes it, or the autocast dtype) and block 0's LN1 +
        modulate. Block ``i`` forms block ``i+1``'s
        adaLN output (it needs its LN1 shift/scale), so each adaLN Linear still runs once, inside a
        block.
        """
        D = patches.shape[-1]
        modulation = self.blocks[0].adaLN_modulation(c)  # (B, 6D)
        autocast = torch.is_autocast_enabled(patches.device.type)
        out_dtype = torch.get_autocast_dtype(patches.device.type) if autocast else patches.dtype
        pos_embed = self.pos_embed.to(self.residual_dtype(patches))
        x, h = add_norm_modulate(
            pos_embed, patches, None, modulation[:, :D], modulation[:, D : 2 * D], out_dtype=out_dtype
        )
        nexts = [block.adaLN_modulation[-1] for block in self.blocks[1:]] + [
            self.final_layer.adaLN_modulation[-1]
        ]
        for block, next_linear in zip(self.blocks, nexts):
            x, h, modulation = block(x, c, h, modulation, (next_linear.weight, next_linear.bias))
        return self.final_layer.linear(h)  # (B, N, p*p*C)


def build_sit(cfg: SiTConfig) -> SiT:
    return SiT(cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
