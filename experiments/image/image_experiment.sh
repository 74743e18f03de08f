#!/usr/bin/env bash
# Vanilla SiT vs one vision target (REPA-like) vs REED on Fashion-MNIST (32x32, SiT-S/2), one GPU.
#
#   OUT=out STEPS=4000 EVAL_EVERY=500 bash experiments/image/image_experiment.sh   # from the repo root
#
# Needs the carried folder from `python experiments/image/image_prepare_carry.py` (CARRY, default
# .carry/image) and an evaluation classifier (CLASSIFIER; trained here on the GPU when the file
# is missing). Builds the two feature stores once (EfficientNet-Lite0 tokens on the GPU from the
# carried weight file; caption store from the carried MiniLM table), then trains the variants as
# parallel processes with the same model, data, seed and budget. Target tables are gathered on
# the GPU (LOCATION=device, 9.8 GB per process that aligns to the vision tokens); LOCATION=host
# keeps them in RAM and copies each batch through pinned memory. The first GPU run with
# LOCATION=host and unlimited CPU threads ran the aligned variants at ~1 step/s (vanilla: ~20/s).
# Each trainer gets OMP_NUM_THREADS=2.
# Writes results.json, results.md and image_fd.png (tools/compare_runs.py), experiment.log and
# runs.tgz (logs, metrics, evaluations, configs and sample grids of every variant) into $OUT; at
# most 8 files come back from the GPU machine, so everything else is packed into runs.tgz.
set -euo pipefail
export PYTHONUNBUFFERED=1
CARRY=${CARRY:-.carry/image}
FINAL=${OUT:-out}
WORK=${WORK:-/tmp/reed-image}
OUT=$WORK/results  # full results; the summary files are copied to $FINAL at the end
STEPS=${STEPS:-2000}
EVAL_EVERY=${EVAL_EVERY:-250}
NUM_SAMPLES=${NUM_SAMPLES:-1000}
EVAL_STEPS=${EVAL_STEPS:-30}  # Euler ODE steps of the evaluation sampler
BATCH=${BATCH:-128}
DEADLINE_S=${DEADLINE_S:-100000}  # whole-script budget; training is stopped in time to report
VARIANTS=${VARIANTS:-"vanilla repa reed"}
CLASSIFIER=${CLASSIFIER:-$CARRY/fmnist-classifier-32.pt}
PY=${PY:-python}
EXTRA=${EXTRA:-}  # overrides for every step (CPU smoke test: a tiny model and a data subset)
export PYTHONPATH="packages/reed-core/src:packages/reed-image/src:$CARRY/pylib${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT" "$WORK" "$FINAL"

DATA="data.path=$CARRY/fashion-mnist"
LOCATION=${LOCATION:-device}  # where training keeps the target tables (device: GPU gather)
TARGETS="reed.targets.vision.store=$WORK/features/vision \
 reed.targets.vision.checkpoint=$CARRY/efficientnet-lite0.pth \
 reed.targets.caption.store=$WORK/features/caption \
 reed.targets.caption.encoder=table:$CARRY/captions.npz \
 reed.targets.vision.location=$LOCATION reed.targets.caption.location=$LOCATION"

if [ ! -f "$CLASSIFIER" ]; then
  CLASSIFIER=$OUT/fmnist-classifier-32.pt
  $PY -m reed_image.eval_classifier --data-path "$CARRY/fashion-mnist" --epochs 6 --out "$CLASSIFIER" \
    2>&1 | tee "$OUT/classifier.log"
fi
t0=$(date +%s)
echo "config: steps $STEPS batch $BATCH eval every $EVAL_EVERY with $NUM_SAMPLES samples (Euler $EVAL_STEPS)" \
  | tee "$OUT/experiment.log"
$PY -m reed_image.features --preset fmnist-reed $DATA $TARGETS $EXTRA 2>&1 | grep -v "batch/s" | tee "$OUT/features.log"
echo "features: $(( $(date +%s) - t0 ))s" | tee -a "$OUT/features.log"

TRAIN_TIMEOUT=$(( DEADLINE_S - (SECONDS + 40) ))  # leave 40 s to collect and report
pids=()
for v in $VARIANTS; do
  preset=fmnist-$v
  extra=""
  case $v in
    reed-nowarmup) preset=fmnist-reed; extra="reed.curriculum.w_diff.kind=constant" ;;
  esac
  OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} timeout "$TRAIN_TIMEOUT" $PY -m reed_image.train --preset "$preset" $DATA $TARGETS $extra $EXTRA \
    train.run_dir="$WORK/runs/$v" train.steps="$STEPS" train.eval_every="$EVAL_EVERY" \
    train.batch_size="$BATCH" train.ckpt_every=1000000 train.progress_bar=false \
    train.tensorboard=false eval.num_samples="$NUM_SAMPLES" eval.classifier="$CLASSIFIER" \
    eval.sampler.steps="$EVAL_STEPS" \
    > "$OUT/train_$v.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
echo "training: $(( $(date +%s) - t0 ))s since the features started (status $status)" | tee -a "$OUT/experiment.log"
for v in $VARIANTS; do
  mkdir -p "$OUT/runs/$v"
  cp "$WORK/runs/$v"/{config.yaml,metrics.jsonl} "$OUT/runs/$v/" 2>/dev/null || true
  cp "$WORK/runs/$v"/eval.jsonl "$OUT/runs/$v/" 2>/dev/null || true
  cp -r "$WORK/runs/$v/samples" "$OUT/runs/$v/" 2>/dev/null || true
  cp "$OUT/train_$v.log" "$OUT/runs/$v/train.log"
done
tail -n 3 "$OUT"/train_*.log
specs=(); for v in $VARIANTS; do specs+=("$v=$OUT/runs/$v"); done
$PY tools/compare_runs.py "${specs[@]}" --metric ema/fd --lower-is-better --also ema/precision ema/recall ema/is \
  --log-y --title "SiT-S/2 on Fashion-MNIST 32x32 (batch $BATCH)" --plot "$OUT/image_fd.png" \
  --md "$OUT/results.md" --json "$OUT/results.json" || status=1
tar czf "$FINAL/runs.tgz" --exclude='*.pt' -C "$OUT" . || status=1
cp "$OUT"/results.json "$OUT"/results.md "$OUT"/image_fd.png "$OUT"/experiment.log "$FINAL"/ 2>/dev/null || true
exit $status
