"""``FusedSiT``: the SiT of ``sit.py`` with reed-kernels' hand-written kernels (``model.kernels``).

The same modules, parameters and ``state_dict`` as :class:`~reed_image.models.sit.SiT` (a checkpoint
of either loads into the other), the same equations, another way to run them: the fastest SiT-XL/2
training step measured (one H100, docs/results/image.md). What changes, from the input on:

* the patch embedding runs as one Linear on the flattened patches with the Conv2d's parameters
  (token-major output; cuDNN's convolution and the layout copies around it took ~0.9 ms a step);
* every residual add runs in one kernel with the LayerNorm + modulate after it
  (``reed_kernels.fused_adaln.add_norm_modulate``), the blocks chained: the first kernel adds the
  positional embedding to the patches and forms block 0's modulated input; block ``i``'s second
  kernel forms block ``i+1``'s (or the final layer's), so block ``i`` computes block ``i+1``'s adaLN
  output. The attention's ``proj`` bias and the MLP's ``fc2`` bias are added inside those kernels,
  before the gates, which also form their gradients (-0.7 ms a step);
* the MLP is ``reed_kernels.fused_mlp.mlp_gelu`` (GELU in cuBLASLt GEMM epilogues), and the
  attention's qkv/proj and the adaLN Linears are ``reed_kernels.cublaslt_linear`` (autotuned
  cuBLASLt GEMMs);
* with ``kernels="fused-fa4"`` attention is ``reed_kernels.flash_attention.packed_attention`` on the
  qkv output viewed ``[B, N, 3, H, d]`` (cuDNN forward, FlashAttention-4 backward writing the packed
  gradient); without qk-norm the qkv bias gets its gradient from that backward (the key bias's is
  then exactly 0, where autograd's reduction gave rounding noise). Otherwise attention is SDPA's.

A layer swapped for another Linear class (FP8: ``reed_core.float8``) keeps its own forward (and
its bias) wherever it is used. Off CUDA every kernel runs its PyTorch reference, so ``FusedSiT``
also runs (and is tested) on a CPU. ``model.residual_dtype`` is honoured by the first kernel.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from reed_image.models.sit import Attention, Mlp, SiT, SiTBlock, SiTConfig

try:
    from reed_kernels import cublaslt, cublaslt_plans
    from reed_kernels.cublaslt_linear import cublaslt_linear
    from reed_kernels.flash_attention import packed_attention
    from reed_kernels.fused_adaln import add_norm_modulate
    from reed_kernels.fused_mlp import mlp_gelu
except ImportError as err:  # pragma: no cover - the extra is part of the workspace
    raise ImportError(
        f"model.kernels=fused / fused-fa4 needs reed-kernels ({err}): pip install 'reed-image[kernels]' "
        "(or 'reed-image[fa4]' for fused-fa4)"
    ) from err


def plain_linear(layer: nn.Module) -> bool:
    """Whether ``layer`` is an ``nn.Linear`` itself (not converted, e.g. to FP8): only then do the
    kernels use its weight and bias in its place."""
    return type(layer) is nn.Linear


def deferred_bias(layer: nn.Module) -> torch.Tensor | None:
    """The bias of a branch's last Linear that the adaLN kernel adds in its place (the gradient
    then comes from the kernel's backward pass, not from one more read of the branch gradient);
    None for a converted layer or one without a bias, which keeps its own."""
    return layer.bias if plain_linear(layer) else None


def attention(attn: Attention, x: torch.Tensor, packed: bool, proj_bias: bool = True) -> torch.Tensor:
    """``attn(x)`` with its qkv and proj Linears through ``cublaslt_linear`` (both plain Linears),
    and with ``packed`` through ``packed_attention``; ``proj_bias=False`` leaves out proj's bias
    (the caller adds it)."""
    B, N, C = x.shape
    plain = plain_linear(attn.qkv) and plain_linear(attn.proj)
    linear = cublaslt_linear if plain else F.linear

    def proj(out: torch.Tensor) -> torch.Tensor:
        if proj_bias and not plain:
            return attn.proj(out)  # a converted layer's own forward
        return linear(out, attn.proj.weight, attn.proj.bias if proj_bias else None)

    if packed and plain and attn.qkv.bias is not None and not attn.qk_norm:
        # the bias's gradient comes from the attention backward (packed_attention's docstring)
        qkv = linear(x, attn.qkv.weight, attn.qkv.bias.detach())
        qkv = qkv.view(B, N, 3, attn.num_heads, attn.head_dim)
        return proj(packed_attention(qkv, attn.qkv.bias).reshape(B, N, C))
    qkv = linear(x, attn.qkv.weight, attn.qkv.bias) if plain else attn.qkv(x)
    qkv = qkv.reshape(B, N, 3, attn.num_heads, attn.head_dim)
    if packed:
        if attn.qk_norm:
            q, k, v = qkv.unbind(2)
            qkv = torch.stack((attn.q_norm(q), attn.k_norm(k), v), dim=2)
        return proj(packed_attention(qkv).reshape(B, N, C))
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, nh, N, hs)
    out = F.scaled_dot_product_attention(attn.q_norm(q), attn.k_norm(k), v)
    return proj(out.transpose(1, 2).reshape(B, N, C))


def mlp(module: Mlp, x: torch.Tensor, fc2_bias: bool = True) -> torch.Tensor:
    """``module(x)`` as ``mlp_gelu`` (fc1 and fc2 plain Linears); ``fc2_bias=False`` leaves out
    fc2's bias (the caller adds it)."""
    if plain_linear(module.fc1) and plain_linear(module.fc2):
        b2 = module.fc2.bias if fc2_bias else None
        return mlp_gelu(x, module.fc1.weight, module.fc1.bias, module.fc2.weight, b2)
    act = module.act(module.fc1(x))
    return module.fc2(act) if fc2_bias else F.linear(act, module.fc2.weight)


class FusedSiTBlock(SiTBlock):
    """A ``SiTBlock`` (same parameters) whose forward is one link of ``FusedSiT``'s chain.

    Called as ``(x, c)`` it is the plain block. ``FusedSiT`` calls it as ``(x, c, h, modulation,
    next_adaln)``: ``modulation`` (this block's adaLN output ``[B, 6D]``) and ``h =
    modulate(LN(x), shift_msa, scale_msa)`` come from the link before, ``next_adaln`` is the
    ``(weight, bias)`` of the next block's (or the final layer's) adaLN Linear. It returns
    ``(x_out, h_next, next_modulation)``: the block output (what taps read), and the next
    LayerNorm + modulate, formed in the kernel of the block's last residual add.
    """

    packed: bool = False  # attention through packed_attention: FusedSiT(kernels="fused-fa4") sets it

    def forward(
        self,
        x: torch.Tensor,
        c: torch.Tensor,
        h: torch.Tensor | None = None,
        modulation: torch.Tensor | None = None,
        next_adaln: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if h is None:
            return super().forward(x, c)
        D = x.shape[-1]
        next_modulation = cublaslt_linear(F.silu(c), *next_adaln)  # (B, 6D), or (B, 2D): final layer
        _, _, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation.chunk(6, dim=-1)
        proj_bias, fc2_bias = deferred_bias(self.attn.proj), deferred_bias(self.mlp.fc2)
        branch = attention(self.attn, h, self.packed, proj_bias=proj_bias is None)
        x, h = add_norm_modulate(x, branch, gate_msa, shift_mlp, scale_mlp, out_dtype=h.dtype, bias=proj_bias)
        branch = mlp(self.mlp, h, fc2_bias=fc2_bias is None)
        shift, scale = next_modulation[:, :D], next_modulation[:, D : 2 * D]  # the next LN's
        x, h = add_norm_modulate(x, branch, gate_mlp, shift, scale, out_dtype=h.dtype, bias=fc2_bias)
        return x, h, next_modulation


class FusedSiT(SiT):
    """``SiT`` run through reed-kernels (module docstring); ``cfg.kernels`` is fused or fused-fa4."""

    block_class = FusedSiTBlock

    def __init__(self, cfg: SiTConfig):
        if cfg.kernels not in ("fused", "fused-fa4"):
            raise ValueError(f"FusedSiT: model.kernels must be fused or fused-fa4, got {cfg.kernels!r}")
        super().__init__(cfg)
        for block in self.blocks:
            block.packed = cfg.kernels == "fused-fa4"

    def embed_patches(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, C, H, W] -> [B, N, D]``: ``x_embedder`` (a Conv2d with kernel = stride = p) as
        one Linear on the flattened patches, with its parameters:

            patches[b, (i, j), (c, u, v)] = x[b, c, i p + u, j p + v]
            h = patches W^T + b,      W = x_embedder.weight viewed [D, C p p]
        """
        p, g = self.patch_size, self.grid
        patches = x.reshape(x.shape[0], self.in_channels, g, p, g, p).permute(0, 2, 4, 1, 3, 5)
        patches = patches.reshape(x.shape[0], g * g, self.in_channels * p * p)
        weight = self.x_embedder.weight.reshape(self.hidden_size, -1)
        return F.linear(patches, weight, self.x_embedder.bias)

    def forward(self, x: torch.Tensor, tau: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        patches = self.embed_patches(x)  # (B, N, D)
        c = self.embed(tau, y)  # (B, D)
        D = patches.shape[-1]
        modulation = self.blocks[0].adaLN_modulation(c)  # (B, 6D)
        autocast = torch.is_autocast_enabled(patches.device.type)
        out_dtype = torch.get_autocast_dtype(patches.device.type) if autocast else patches.dtype
        pos_embed = self.pos_embed.to(self.residual_dtype(patches))
        # x = pos_embed + patches (the residual stream), h = block 0's modulate(LN1(x))
        x, h = add_norm_modulate(
            pos_embed, patches, None, modulation[:, :D], modulation[:, D : 2 * D], out_dtype=out_dtype
        )
        next_linears = [block.adaLN_modulation[-1] for block in self.blocks[1:]]
        next_linears.append(self.final_layer.adaLN_modulation[-1])
        for block, next_linear in zip(self.blocks, next_linears):
            x, h, modulation = block(x, c, h, modulation, (next_linear.weight, next_linear.bias))
        return self.unpatchify(self.final_layer.linear(h))  # h: the final layer's modulate(LN(x))


def install_cublaslt_plans(path: str, device: torch.device) -> int:
    """``model.cublaslt_plans``: the plan file is read and checked on any device, and its plans
    installed where cuBLASLt runs (a CUDA device); returns how many were installed. A missing,
    malformed or foreign file is a ``ValueError`` naming the option and the file."""
    try:
        if device.type != "cuda" or not cublaslt.available():
            cublaslt_plans.read_plan_file(path)
            return 0
        with torch.cuda.device(device):
            return cublaslt_plans.load_plans(path, device)  # reads and checks the file itself
    except (FileNotFoundError, ValueError) as err:
        raise ValueError(f"model.cublaslt_plans: {err}") from None
