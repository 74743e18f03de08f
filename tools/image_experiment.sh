#!/usr/bin/env bash
# Vanilla SiT vs one vision target (REPA-like) vs REED on Fashion-MNIST (32x32, SiT-S/2), one GPU.
#
#   OUT=out STEPS=4000 EVAL_EVERY=500 bash tools/image_experiment.sh
#
# Needs the carried folder from `python tools/image_prepare_carry.py` (CARRY, default .carry/image)
# and an evaluation classifier (CLASSIFIER; trained here on the GPU when the file is missing).
# Builds the two feature stores once (EfficientNet-Lite0 tokens on the GPU from the carried weight
# file; caption store from the carried MiniLM table), then trains the variants as parallel
# processes with the same model, data, seed and budget. Shared targets stay in host memory.
# Writes logs, metrics, sample grids, results.json and the plot into $OUT.
set -euo pipefail
export PYTHONUNBUFFERED=1
CARRY=${CARRY:-.carry/image}
OUT=${OUT:-out}
WORK=${WORK:-/tmp/reed-image}
STEPS=${STEPS:-4000}
EVAL_EVERY=${EVAL_EVERY:-500}
NUM_SAMPLES=${NUM_SAMPLES:-2000}
BATCH=${BATCH:-256}
VARIANTS=${VARIANTS:-"vanilla repa reed"}
CLASSIFIER=${CLASSIFIER:-$CARRY/fmnist-classifier-32.pt}
PY=${PY:-python}
EXTRA=${EXTRA:-}  # overrides for every step (CPU smoke test: a tiny model and a data subset)
export PYTHONPATH="packages/reed-core/src:packages/reed-image/src:$CARRY/pylib${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT" "$WORK"

DATA="data.path=$CARRY/fashion-mnist"
TARGETS="objective.targets.vision.store=$WORK/features/vision \
 objective.targets.vision.checkpoint=$CARRY/efficientnet-lite0.pth \
 objective.targets.caption.store=$WORK/features/caption \
 objective.targets.caption.encoder=table:$CARRY/captions.npz"

if [ ! -f "$CLASSIFIER" ]; then
  CLASSIFIER=$OUT/fmnist-classifier-32.pt
  $PY -m reed_image.eval_classifier --data-path "$CARRY/fashion-mnist" --epochs 6 --out "$CLASSIFIER" \
    2>&1 | tee "$OUT/classifier.log"
fi
t0=$(date +%s)
$PY -m reed_image.features --preset fmnist-reed $DATA $TARGETS $EXTRA 2>&1 | grep -v "batch/s" | tee "$OUT/features.log"
echo "features: $(( $(date +%s) - t0 ))s" | tee -a "$OUT/features.log"

pids=()
for v in $VARIANTS; do
  preset=fmnist-$v
  extra=""
  case $v in
    reed-nowarmup) preset=fmnist-reed; extra="objective.curriculum.w_diff.kind=constant" ;;
  esac
  $PY -m reed_image.train --preset "$preset" $DATA $TARGETS $extra $EXTRA \
    train.run_dir="$WORK/runs/$v" train.steps="$STEPS" train.eval_every="$EVAL_EVERY" \
    train.batch_size="$BATCH" train.ckpt_every=1000000 train.progress_bar=false \
    train.tensorboard=false eval.num_samples="$NUM_SAMPLES" eval.classifier="$CLASSIFIER" \
    > "$OUT/train_$v.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
for v in $VARIANTS; do
  mkdir -p "$OUT/runs/$v"
  cp "$WORK/runs/$v"/{config.yaml,metrics.jsonl} "$OUT/runs/$v/" 2>/dev/null || true
  cp "$WORK/runs/$v"/eval.jsonl "$OUT/runs/$v/" 2>/dev/null || true
  cp -r "$WORK/runs/$v/samples" "$OUT/runs/$v/" 2>/dev/null || true
done
tail -n 3 "$OUT"/train_*.log
$PY tools/image_report.py --runs "$OUT/runs" --variants $VARIANTS --out "$OUT" || status=1
exit $status
