"""GPU time of the packed attention backward's pre- and postprocess: Triton's against FlashAttention-4's.

    python packages/reed-kernels/benchmarks/bench_attention_prepost.py   # SiT-XL/2: B 64, N 256, 16 x 72

Times, as replays of a CUDA graph of 20 calls (median of 5), FlashAttention-4's own preprocess and
dq postprocess (``flash_attn.cute.interface``; needs ``flash-attn-4`` and a Hopper GPU) and
``reed_kernels/attention_prepost.py``'s kernels on the same tensors, the postprocess at each
``col_groups`` x ``num_warps``; for scale also the sum over tokens of a whole ``dqkv``
(what autograd does for the qkv bias without them) and a copy of ``do``. Prints one JSON object (us).
"""

from __future__ import annotations

import argparse
import json

import torch
from bench_attention import graph_replay_ms  # the script's folder, first on sys.path

from reed_kernels import attention_prepost, flash_attention


def gpu_us(fn) -> float:
    """GPU time of one ``fn()`` in us: a CUDA graph of 20 calls, replayed (median of 5 groups)."""
    return round(1000 * graph_replay_ms(fn, reps=1, calls_per_graph=20), 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--head-dim", type=int, default=72)
    args = p.parse_args()
    interface = flash_attention._flash_interface()
    if interface is None or not torch.cuda.is_available():
        raise SystemExit("bench_attention_prepost: needs a CUDA GPU and flash-attn-4 (reed-kernels[fa4])")
    B, N, H, d = args.batch, args.tokens, args.heads, args.head_dim
    config = interface._tile_size_bwd_sm90(d, d, False, False)
    tile_m = config.m_block_size
    post_threads = 128 if config.dQ_single_wg else 128 * config.num_wg
    cute_bf16 = interface.torch2cute_dtype_map[torch.bfloat16]
    arch = 10 * torch.cuda.get_device_capability()[0] + torch.cuda.get_device_capability()[1]
    out = torch.randn(B, N, H, d, device="cuda", dtype=torch.bfloat16)
    dout = torch.randn_like(out)
    lse = torch.randn(B, H, N, device="cuda")
    dq_accum = torch.randn(B, H, N * ((d + 31) // 32 * 32), device="cuda")  # as _flash_attn_bwd allocates it
    dpsum, lse_log2 = torch.empty(B, H, N, device="cuda"), torch.empty(B, H, N, device="cuda")
    dqkv = torch.empty(B, N, 3, H, d, device="cuda", dtype=torch.bfloat16)
    colsum = attention_prepost.colsum_buffer(B, N, H, d, "cuda")
    tile_hdim = (d + 15) // 16 * 16
    results = {
        "fa4_preprocess": gpu_us(
            lambda: interface._bwd_preprocess(
                out,
                dout,
                dpsum,
                lse,
                lse_log2,
                dq_accum,
                None,
                None,
                None,
                cute_bf16,
                d,
                d,
                tile_m,
                fake_mode=False,
                hdim_multiple_of=32,
            )
        ),
        "fa4_postprocess": gpu_us(
            lambda: interface._bwd_postprocess_convert(
                dq_accum,
                dqkv[:, :, 0],
                d**-0.5,
                None,
                None,
                arch,
                cute_bf16,
                d,
                tile_m,
                post_threads,
                config.AtomLayoutMdQ,
                config.dQ_swapAB,
                fake_mode=False,
            )
        ),
        "triton_preprocess": gpu_us(
            lambda: attention_prepost.attention_bwd_preprocess(
                out, dout, lse, dpsum, lse_log2, dq_accum, tile_hdim, colsum
            )
        ),
    }
    for groups in (1, 2, 4, 16):
        for warps in (2, 4, 8):
            results[f"triton_postprocess_groups{groups}_warps{warps}"] = gpu_us(
                lambda groups=groups, warps=warps: attention_prepost.attention_bwd_postprocess(
                    dq_accum, dqkv[:, :, 0], d**-0.5, tile_m, tile_hdim, colsum, groups, warps
                )
            )
    results["colsum_sum"] = gpu_us(lambda: colsum.sum(0))
    results["dqkv_token_sum"] = gpu_us(lambda: dqkv.sum((0, 1), dtype=torch.float32))
    results["copy_of_do"] = gpu_us(lambda: dout.clone())
    shape = {"batch": B, "tokens": N, "heads": H, "head_dim": d, "tile_m": tile_m}
    defaults = {
        "col_groups": attention_prepost.POST_COL_GROUPS,
        "num_warps": attention_prepost.POST_NUM_WARPS,
    }
    device = torch.cuda.get_device_name()
    print(
        json.dumps(
            {"shape": shape, "device": device, "postprocess_defaults": defaults, "gpu_us": results}, indent=1
        )
    )


if __name__ == "__main__":
    main()
