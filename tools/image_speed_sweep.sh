#!/usr/bin/env bash
# The speed measurements of docs/results/image.md on one GPU: tools/bench_image.py (SiT-XL/2,
# batch 64, two stored targets, compiled) for
#   v0  the plain SiT (model.kernels=none), the reference update (clip_grad_norm_ + fused AdamW +
#       foreach EMA), PyTorch's attention choice
#   v1  v0 with the fused update (reed_core.optim)
#   v3  v1 + inductor multi-kernel (persistent reductions over the 1152-wide rows, benchmarked)
#   v4  v1 + inductor coordinate-descent tuning of the elementwise/reduction kernels
#   v5  v1 + CUDA graphs (compile mode reduce-overhead)
#   v6  v1 + max-autotune of the matmuls only (Triton templates with fused epilogues vs cuBLAS)
#   f1  v1 + FP8 matmuls in the blocks, per-tensor scales (train.speed.float8=tensorwise, torchao)
#   f2  v1 + FP8 matmuls in the blocks, per-row scales (train.speed.float8=rowwise)
#   f3  v1 + FP8 matmuls, per-row scales, weight gradients in bf16 (rowwise_with_gw_hp)
#   n1  the plain SiT with p1's trainer options: bf16 parameters with float32 masters in the fused
#       update (train.speed.param_dtype), the whole step as one CUDA graph (train.speed.cuda_graph)
#   k1  n1 with FusedSiT (model.kernels=fused: reed-kernels' fused adaLN chain, cuBLASLt MLP and
#       Linears; attention by SDPA)
#   p1  k1 with the packed FlashAttention-4 attention too (model.kernels=fused-fa4; Hopper GPUs,
#       reed-kernels[fa4])
#   pf  p1 with the cuBLASLt plans loaded from PLANS (a file written by bench_image.py
#       --save-cublaslt-plans, e.g. through EXTRA; shapes not in it autotune as usual)
#   pr  p1 with the residual stream in bf16 (model.residual_dtype=autocast), not float32: the
#       fastest setting (with REGIONS="denoiser.blocks.* aligner")
# Variants of earlier sessions that measured switches since deleted (their losing paths are gone
# from the code) are in this script's history; their results are in the git history of docs/results/image.md.
# EXTRA="--flag ..." is added to every variant's bench_image.py command.
# Each variant is its own process under a time limit (LIMIT s); results land in $OUT (default
# runs/speed). PROFILE="v1 f1" profiles those variants;
# REGIONS="denoiser.blocks.* aligner" compiles those submodules only (train.speed.compile_regions).
# The sources timed are this checkout's packages/*/src, which go first on PYTHONPATH; to time
# another commit's code (an A/B in one call), point SRC at its source folders, e.g.
#     git archive OLD packages | tar -x -C old
#     SRC=old/packages/reed-core/src:old/packages/reed-kernels/src:old/packages/reed-image/src \
#         VARIANTS=p1 bash tools/image_speed_sweep.sh
# (a PYTHONPATH of its own would come after this checkout's sources and not be used).
#
#     OUT=runs/speed VARIANTS="v1 pr" REGIONS="denoiser.blocks.* aligner" bash tools/image_speed_sweep.sh
#     python tools/compare_runs.py --bench v1='runs/speed/v1.json' pr='runs/speed/pr.json'
#
# FP8 variants need torchao (reed-core[float8]). A cold whole-model compile of SiT-XL/2 took over
# 185 s on the H100; with REGIONS the warm-up is 21-34 s.
set -uo pipefail
OUT="${OUT:-runs/speed}"
LIMIT="${LIMIT:-150}"
VARIANTS="${VARIANTS:-v0 v1 n1 p1 pr}"
mkdir -p "$OUT"
SRC="${SRC:-packages/reed-core/src:packages/reed-kernels/src:packages/reed-image/src}"
export PYTHONPATH="$SRC${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
# p1's trainer options (the plain model's n1 too)
FAST_TRAIN="--fused-update on --param-dtype bfloat16 --cuda-graph"

nvidia-smi --query-gpu=name,power.limit,clocks.max.sm --format=csv > "$OUT/gpu.csv" 2>&1

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
    # shellcheck disable=SC2086  # FAST_TRAIN is a list of flags
    case $v in
        v0) bench v0 --fused-update off ;;
        v1) bench v1 --fused-update on ;;
        v3) bench v3 --fused-update on --inductor triton.multi_kernel=1 ;;
        v4) bench v4 --fused-update on --inductor coordinate_descent_tuning=True ;;
        v5) bench v5 --fused-update on --compile-mode reduce-overhead ;;
        v6) bench v6 --fused-update on --inductor max_autotune_gemm=True \
                --inductor "max_autotune_gemm_backends='ATEN,TRITON'" ;;
        f1) bench f1 --fused-update on --float8 tensorwise ;;
        f2) bench f2 --fused-update on --float8 rowwise ;;
        f3) bench f3 --fused-update on --float8 rowwise_with_gw_hp ;;
        n1) bench n1 --kernels none $FAST_TRAIN ;;
        k1) bench k1 --kernels fused $FAST_TRAIN ;;
        p1) bench p1 --kernels fused-fa4 $FAST_TRAIN ;;
        pf) bench pf --kernels fused-fa4 $FAST_TRAIN --cublaslt-plans "${PLANS:?pf needs PLANS=FILE}" ;;
        pr) bench pr --kernels fused-fa4 $FAST_TRAIN --residual-dtype autocast ;;
        *) echo "unknown variant $v" ;;
    esac
done
