"""FP8 matmuls for training: chosen ``nn.Linear`` layers computed by torchao's ``Float8Linear``.

A converted layer computes ``y = x W^T + b`` with both operands cast to float8 on the fly
(dynamic scaling, no state)::

    s_x = 448 / amax(x),  s_W = 448 / amax(W)          (e4m3; per tensor, or per row for "rowwise")
    y   = (fp8(s_x x) fp8(s_W W)^T) / (s_x s_W) + b    (one scaled matmul, fp32 accumulation)

and the backward does the same for ``dL/dx = g W`` and ``dL/dW = g^T x`` (``g`` cast to e5m2 in
"tensorwise", e4m3 in "rowwise"; "rowwise_with_gw_hp" keeps ``dL/dW`` in bf16). Weights, biases,
gradients and optimizer state stay in their usual dtypes: only the matmul operands are float8, so
checkpoints are unchanged and a run can switch FP8 on or off at a resume. This changes the numerics
the model trains with: keep it opt-in, and compare quality against bf16 before relying on it.

H100 FP8 tensor cores run at twice the bf16 rate, but every converted matmul adds amax
reductions and casts, so only large matmuls can gain. Measured: a SiT-XL/2 step (D = 1152,
batch 64, H100) was 7% slower with the blocks' matmuls in FP8 "tensorwise", and used 6.8 GiB less
memory (docs/results/image.md). Small matmuls (per-sample conditioning, heads with a few outputs)
gain least, so conversion is by name: ``modules`` are ``fnmatch`` patterns on qualified module
names (``"denoiser.blocks.*.mlp.fc1"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

import torch.nn as nn

FLOAT8_RECIPES = ("off", "tensorwise", "rowwise", "rowwise_with_gw_hp")


def float8_linear_names(model: nn.Module, modules: Sequence[str]) -> list[str]:
    """Qualified names of the ``nn.Linear`` layers of ``model`` that match one of ``modules``.

    Raises ``ValueError`` naming the layer when a match cannot run in float8 (``torch._scaled_mm``
    needs both feature sizes to be multiples of 16), or when nothing matches at all.
    """
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or not any(fnmatchcase(name, p) for p in modules):
            continue
        if module.in_features % 16 or module.out_features % 16:
            raise ValueError(
                f"train.speed.float8_modules: layer {name!r} ({module.in_features} -> {module.out_features}) "
                "cannot run in float8: both sizes must be multiples of 16; narrow the patterns"
            )
        names.append(name)
    if not names:
        raise ValueError(
            f"train.speed.float8_modules: no nn.Linear of the model matches {list(modules)} "
            f"(linear layers are named like {_example_names(model)})"
        )
    return names


def convert_to_float8(model: nn.Module, recipe: str, modules: Sequence[str]) -> list[str]:
    """Swap the matching ``nn.Linear`` layers of ``model`` in place for ``Float8Linear``.

    The new layers hold the same ``weight`` and ``bias`` parameters (same objects, same names), so
    optimizer state, EMA pairing and ``state_dict`` keys are unchanged. Returns the converted names.
    """
    if recipe not in FLOAT8_RECIPES or recipe == "off":
        raise ValueError(f"train.speed.float8: unknown recipe {recipe!r}; choose one of {FLOAT8_RECIPES[1:]}")
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except ImportError as err:
        raise ImportError(
            "train.speed.float8 needs torchao: pip install 'reed-core[float8]' (torchao 0.17 for torch 2.11)"
        ) from err
    names = set(float8_linear_names(model, modules))
    convert_to_float8_training(
        model,
        config=Float8LinearConfig.from_recipe_name(recipe),
        module_filter_fn=lambda module, fqn: fqn in names,
    )
    return sorted(names)


def _example_names(model: nn.Module, k: int = 3) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][:k]
