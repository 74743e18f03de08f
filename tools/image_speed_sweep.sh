#!/usr/bin/env bash
# The speed measurements of docs/results/image.md on one GPU: SDPA kernels for SiT-XL/2's attention,
# then tools/bench_image.py (SiT-XL/2, batch 64, two stored targets, compiled) for
#   v0  the reference update (clip_grad_norm_ + fused AdamW + foreach EMA), PyTorch's attention choice
#   v1  the fused update (reed_core.optim)
#   v2  v1 + the fastest attention kernel of the sweep
#   v3  v2 + inductor multi-kernel (persistent reductions over the 1152-wide rows, benchmarked)
#   v4  v2 + inductor coordinate-descent tuning of the elementwise/reduction kernels
#   v5  v2 + CUDA graphs (compile mode reduce-overhead)
#   v6  v2 + max-autotune of the matmuls only (Triton templates with fused epilogues vs cuBLAS)
#   f1  v1 + FP8 matmuls in the blocks, per-tensor scales (train.float8=tensorwise, torchao)
#   f2  v1 + FP8 matmuls in the blocks, per-row scales (train.float8=rowwise)
#   f3  v1 + FP8 matmuls, per-row scales, weight gradients in bf16 (rowwise_with_gw_hp)
#   a1  v1 + fused residual/LayerNorm/modulate Triton kernels (model.fused_adaln)
#   a2  f1 + fused residual/LayerNorm/modulate kernels
#   a3  f2 + fused residual/LayerNorm/modulate kernels
#   a4  a1 + inductor's C++ wrapper (kernel launches without the Python wrapper)
#   a5  a1 + CUDA graphs (compile mode reduce-overhead)
#   g1  a1 + fused MLP bias add + GELU Triton kernels, bias gradient in the backward (model.fused_gelu)
#   g2  g1 + CUDA graphs (compile mode reduce-overhead)
#   g3  g2 + bf16 parameters with float32 masters in the fused update (train.param_dtype)
#   s1  g1 + bf16 parameters + the whole step as one CUDA graph (train.cuda_graph)
#   m1  s1 with the MLP's GELU in cuBLASLt GEMM epilogues (model.fused_mlp) in place of fused_gelu
#   p1  m1 + packed attention: cuDNN forward, FlashAttention-4 backward writing the qkv gradient
#       (model.attention=fa4; needs flash-attn-4)
#   m0, p0  m1, p1 with proj's and fc2's biases in their GEMMs, not in the adaLN kernels
#   p2  p1 + the EMA step one step late on a side stream (train.ema_overlap)
#   pe  p1 with fc1's bias gradient in the BGRADB epilogue (before 93f983e; now a gemv)
#   pq  p1 with FlashAttention-4's own backward pre/postprocess and autograd's qkv bias reduction
#       (p1 as of 968ad96); pt  p1 with the Triton pre/postprocess but autograd's qkv bias reduction
#   pb  p1 with changes to FlashAttention-4's backward configuration: FA4_BWD_CONFIG (a JSON dict)
#   pl  p1 with the attention's qkv and proj Linears through PyTorch (p1 as of 5eabfff), not
#       autotuned cuBLASLt GEMMs
#   pa  p1 with cuBLASLt's algorithms timed on the stream among those with a workspace (p1 as of
#       f2452fd), not inside a CUDA graph with workspace-free candidates too
#   pm  p1 with the adaLN modulation Linears through PyTorch, not autotuned cuBLASLt GEMMs
#   ps  p1 with the adaLN backward's partial sums finished by a torch sum each (the default again
#       since the kernel's first version measured slower); pk  the same with the one Triton kernel
#   pp  p1 without the memset penalty in cuBLASLt's graph autotuning (cublaslt.MEMSET_PENALTY_US)
#   p7  p1 as of f2452fd (the seventh session's): pa + pm + ps (the colsum_total kernel stays)
#   pc  p1 with the patch embedding as SiT's Conv2d (sit.PATCH_EMBED = conv), not one Linear
#   p8  p1 as of 9239d76 (the eighth session's): pc with the torch partial sums
#   pn  p1 with cuBLASLt plans timing the heuristic's first CANDIDATES (default 32) algorithms of
#       each query, not 8 (cublaslt.AUTOTUNE_CANDIDATES)
#   pf  p1 with the cuBLASLt plans loaded from PLANS (a file written by bench_image.py
#       --save-cublaslt-plans, e.g. through EXTRA; shapes not in it autotune as usual)
#   pr  p1 with the residual stream in bf16 (model.residual_dtype = autocast), not float32
# EXTRA="--flag ..." is added to every variant's bench_image.py command.
# Each variant is its own process under a time limit (LIMIT s); results land in $OUT (default
# runs/speed). ATTENTION=cudnn skips the attention sweep; PROFILE="v1 f1" profiles those variants;
# REGIONS="denoiser.blocks.* aligner" compiles those submodules only (train.compile_regions).
# The sources timed are this checkout's packages/*/src, which go first on PYTHONPATH; to time
# another commit's code (an A/B in one call), point SRC at its source folders, e.g.
#     git archive OLD packages | tar -x -C old
#     SRC=old/packages/reed-core/src:old/packages/reed-image/src VARIANTS=p1 bash tools/image_speed_sweep.sh
# (a PYTHONPATH of its own would come after this checkout's sources and not be used).
#
#     OUT=runs/speed VARIANTS="v1 a1" REGIONS="denoiser.blocks.* aligner" bash tools/image_speed_sweep.sh
#     python tools/image_speed_report.py runs/speed --out docs/results/image_speed_regions   # JSON + PNG
#
# FP8 variants need torchao (reed-core[float8]). A cold whole-model compile of SiT-XL/2 took over
# 185 s on the H100; with REGIONS the warm-up is 21-34 s.
set -uo pipefail
OUT="${OUT:-runs/speed}"
LIMIT="${LIMIT:-150}"
VARIANTS="${VARIANTS:-v0 v1 v2 v3 v4}"
mkdir -p "$OUT"
SRC="${SRC:-packages/reed-core/src:packages/reed-image/src}"
export PYTHONPATH="$SRC${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"

nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv > "$OUT/gpu.csv" 2>&1
if [ -z "${ATTENTION:-}" ]; then
"$PY" tools/bench_attention.py > "$OUT/attention.json" 2> "$OUT/attention.err"
cat "$OUT/attention.json"
best=$("$PY" - "$OUT/attention.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
times = {k: v["fwd_bwd_ms"] for k, v in r.items() if isinstance(v, dict) and "fwd_bwd_ms" in v}
print(min(times, key=times.get) if times else "auto")
EOF
)
fi
best="${ATTENTION:-${best:-auto}}"
echo "fastest attention kernel: $best"

bench() {  # name, flags...; PROFILE="v1 f1" also writes those variants' kernel tables
    local name=$1
    shift
    case " ${PROFILE:-} " in *" $name "*) set -- "$@" --profile "$OUT/${name}_profile.txt" ;; esac
    # shellcheck disable=SC2086  # REGIONS is a list of patterns
    if [ -n "${REGIONS:-}" ]; then set -f; set -- "$@" --compile-regions $REGIONS; set +f; fi
    echo "== $name: $*"
    # shellcheck disable=SC2086  # EXTRA is a list of flags
    timeout "$LIMIT" "$PY" tools/bench_image.py --json "$OUT/$name.json" "$@" ${EXTRA:-} >> "$OUT/bench.log" 2>&1
    echo "   rc=$? $(tr -d '\n ' 2>/dev/null < "$OUT/$name.json" | head -c 400)"
}
for v in $VARIANTS; do
    case $v in
        v0) bench v0 --fused-update off ;;
        v1) bench v1 --fused-update on ;;
        v2) bench v2 --fused-update on --attention "$best" ;;
        v3) bench v3 --fused-update on --attention "$best" --inductor triton.multi_kernel=1 ;;
        v4) bench v4 --fused-update on --attention "$best" --inductor coordinate_descent_tuning=True ;;
        v5) bench v5 --fused-update on --attention "$best" --compile-mode reduce-overhead ;;
        v6) bench v6 --fused-update on --attention "$best" --inductor max_autotune_gemm=True \
                --inductor "max_autotune_gemm_backends='ATEN,TRITON'" ;;
        f1) bench f1 --fused-update on --float8 tensorwise ;;
        f2) bench f2 --fused-update on --float8 rowwise ;;
        f3) bench f3 --fused-update on --float8 rowwise_with_gw_hp ;;
        a1) bench a1 --fused-update on --fused-adaln ;;
        a2) bench a2 --fused-update on --fused-adaln --float8 tensorwise ;;
        a3) bench a3 --fused-update on --fused-adaln --float8 rowwise ;;
        a4) bench a4 --fused-update on --fused-adaln --inductor cpp_wrapper=True ;;
        a5) bench a5 --fused-update on --fused-adaln --compile-mode reduce-overhead ;;
        g1) bench g1 --fused-update on --fused-adaln --fused-gelu ;;
        g2) bench g2 --fused-update on --fused-adaln --fused-gelu --compile-mode reduce-overhead ;;
        g3) bench g3 --fused-update on --fused-adaln --fused-gelu --compile-mode reduce-overhead --param-dtype bfloat16 ;;
        s1) bench s1 --fused-update on --fused-adaln --fused-gelu --param-dtype bfloat16 --cuda-graph ;;
        m1) bench m1 --fused-update on --fused-adaln --fused-mlp --param-dtype bfloat16 --cuda-graph ;;
        p1) bench p1 --fused-update on --fused-adaln --fused-mlp --param-dtype bfloat16 --cuda-graph --attention fa4 ;;
        p0) bench p0 --fused-update on --fused-adaln --fused-mlp --param-dtype bfloat16 --cuda-graph --attention fa4 \
                --no-deferred-biases ;;
        p2) bench p2 --fused-update on --fused-adaln --fused-mlp --param-dtype bfloat16 --cuda-graph --attention fa4 \
                --ema-overlap ;;
        pe) bench pe --fused-update on --fused-adaln --fused-mlp --param-dtype bfloat16 --cuda-graph --attention fa4 \
                --fc1-bias-grad epilogue ;;
        pq) bench pq --fused-update on --fused-adaln --fused-mlp --param-dtype bfloat16 --cuda-graph --attention fa4 \
                --fa4-prepost fa4 --no-fold-qkv-bias ;;
        pt) bench pt --fused-update on --fused-adaln --fused-mlp --param-dtype bfloat16 --cuda-graph --attention fa4 \
                --no-fold-qkv-bias ;;
        pb) bench pb --fused-update on --fused-adaln --fused-mlp --param-dtype bfloat16 --cuda-graph --attention fa4 \
                --fa4-backward-config "${FA4_BWD_CONFIG:-{\}}" ;;
        pl) bench pl --fused-update on --fused-adaln --fused-mlp --param-dtype bfloat16 --cuda-graph --attention fa4 \
                --torch-attention-linears ;;
        pa) bench pa --fused-update on --fused-adaln --fused-mlp --param-dtype bfloat16 --cuda-graph --attention fa4 \
                --cublaslt-autotune eager ;;
        pm) bench pm --fused-update on --fused-adaln --fused-mlp --param-dtype bfloat16 --cuda-graph --attention fa4 \
                --torch-adaln-linears ;;
        ps) bench ps --fused-update on --fused-adaln --fused-mlp --param-dtype bfloat16 --cuda-graph --attention fa4 \
                --adaln-partial-sums torch ;;
        pk) bench pk --fused-update on --fused-adaln --fused-mlp --param-dtype bfloat16 --cuda-graph --attention fa4 \
                --adaln-partial-sums kernel ;;
        pp) bench pp --fused-update on --fused-adaln --fused-mlp --param-dtype bfloat16 --cuda-graph --attention fa4 \
                --cublaslt-memset-penalty 0 ;;
        p7) bench p7 --fused-update on --fused-adaln --fused-mlp --param-dtype bfloat16 --cuda-graph --attention fa4 \
                --cublaslt-autotune eager --torch-adaln-linears --adaln-partial-sums torch ;;
        pc) bench pc --fused-update on --fused-adaln --fused-mlp --param-dtype bfloat16 --cuda-graph --attention fa4 \
                --conv-patch-embed ;;
        p8) bench p8 --fused-update on --fused-adaln --fused-mlp --param-dtype bfloat16 --cuda-graph --attention fa4 \
                --conv-patch-embed --adaln-partial-sums torch ;;
        pn) bench pn --fused-update on --fused-adaln --fused-mlp --param-dtype bfloat16 --cuda-graph --attention fa4 \
                --cublaslt-candidates "${CANDIDATES:-32}" ;;
        pf) bench pf --fused-update on --fused-adaln --fused-mlp --param-dtype bfloat16 --cuda-graph --attention fa4 \
                --cublaslt-plans "${PLANS:?pf needs PLANS=FILE}" ;;
        pr) bench pr --fused-update on --fused-adaln --fused-mlp --param-dtype bfloat16 --cuda-graph --attention fa4 \
                --residual-dtype autocast ;;
        m0) bench m0 --fused-update on --fused-adaln --fused-mlp --param-dtype bfloat16 --cuda-graph --no-deferred-biases ;;
        *) echo "unknown variant $v" ;;
    esac
done
