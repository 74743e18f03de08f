#!/usr/bin/env bash
# Vanilla SiT vs one vision target (REPA-like) vs REED on Fashion-MNIST (32x32, SiT-S/2), one GPU,
# every variant at every seed of SEEDS as its own process, all side by side.
#
#   OUT=out STEPS=2000 EVAL_EVERY=500 SEEDS="0 1 2" bash experiments/image/image_experiment.sh
#
# Needs the carried folder from `python experiments/image/image_prepare_carry.py` (CARRY, default
# .carry/image) and an evaluation classifier (CLASSIFIER, default the committed
# experiments/image/fmnist-classifier-32.pt: the FD is in its features, so every run of a study
# must use the same file; trained here when the file is missing).
# Builds the two feature stores once (EfficientNet-Lite0 tokens from the carried weight file;
# caption store from the carried MiniLM table), then trains the runs as parallel processes with the
# same model, data, batch and budget. Target tables are memory-mapped (LOCATION=mmap: one copy in
# the page cache shared by every process; LOCATION=device gathers on the GPU, 9.8 GB a process).
# Runs checkpoint every CKPT_EVERY steps into WORK (and at the step the deadline's SIGTERM stops
# them) and resume from there, so a curve can be longer than one call: call again with the same
# WORK (on a machine that kept it) and it goes on.
# Variants: vanilla, repa, reed (vision + caption + 50-step diffusion warm-up), reed-nowarmup,
# repa-stop / reed-stop (alignment switched off at STOP_AT steps: "HASTE"-style early stop),
# repa-window (vision alignment only for tau in [0, WINDOW_HIGH]: alpha_k a window).
# Writes results.json, results.md, image_fd.png, experiment.log and runs.tgz (logs, metrics,
# evaluations, configs and sample grids of every run) into $OUT; at most 8 files come back from
# the GPU machine, so everything else is packed into runs.tgz.
set -euo pipefail
export PYTHONUNBUFFERED=1
CARRY=${CARRY:-.carry/image}
FINAL=${OUT:-out}
WORK=${WORK:-runs/image-experiment}  # ignored by git; runs resume from here
OUT=$WORK/results  # full results; the summary files are copied to $FINAL at the end
STEPS=${STEPS:-2000}
EVAL_EVERY=${EVAL_EVERY:-250}
NUM_SAMPLES=${NUM_SAMPLES:-1000}
EVAL_STEPS=${EVAL_STEPS:-30}  # Euler ODE steps of the evaluation sampler
BATCH=${BATCH:-128}
DEADLINE_S=${DEADLINE_S:-100000}  # whole-script budget; training is stopped in time to report
VARIANTS=${VARIANTS:-"vanilla repa reed"}
SEEDS=${SEEDS:-0}
EVAL_WEIGHTS=${EVAL_WEIGHTS:-both}  # ema | raw | both
EMA_EVERY=${EMA_EVERY:-0}  # with both: the EMA weights only at multiples of this step (0: always)
CKPT_EVERY=${CKPT_EVERY:-250}
# trainings at once. GPU memory per SiT-S/2 training at batch 256 (bf16, compiled), measured on an
# H100: vanilla 12.5 GB, repa 14.1 GB, reed 14+ GB; nine at once ran out of the H100's 80 GB.
PARALLEL=${PARALLEL:-5}
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
STOP_AT=${STOP_AT:-$((STEPS / 2))}  # repa-stop / reed-stop: the step alignment stops at
WINDOW_HIGH=${WINDOW_HIGH:-0.5}  # repa-window: alpha_k(tau) on [0, WINDOW_HIGH]
CLASSIFIER=${CLASSIFIER:-experiments/image/fmnist-classifier-32.pt}
PY=${PY:-python}
EXTRA=${EXTRA:-}  # overrides for every step (CPU smoke test: a tiny model and a data subset)
export PYTHONPATH="packages/reed-core/src:packages/reed-image/src:$CARRY/pylib${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT" "$WORK" "$FINAL"

DATA="data.path=$CARRY/fashion-mnist"
LOCATION=${LOCATION:-mmap}  # where training keeps the target tables (mmap | host | device | online:
# the vision encoder runs on each batch, no store; the caption table is then memory-mapped)
TARGETS="reed.targets.vision.store=$WORK/features/vision \
 reed.targets.vision.checkpoint=$CARRY/efficientnet-lite0.pth \
 reed.targets.caption.store=$WORK/features/caption \
 reed.targets.caption.encoder=table:$CARRY/captions.npz \
 reed.targets.vision.location=$LOCATION reed.targets.caption.location=${LOCATION/online/mmap}"

if [ ! -f "$CLASSIFIER" ]; then
  # trained once into WORK and reused when the runs resume (one classifier for a whole curve);
  # copied to $FINAL so that a later call can carry it (CLASSIFIER=...)
  CLASSIFIER=$WORK/fmnist-classifier-32.pt
  [ -f "$CLASSIFIER" ] || $PY -m reed_image.eval_classifier --data-path "$CARRY/fashion-mnist" --epochs 6 \
    --out "$CLASSIFIER" 2>&1 | tee "$OUT/classifier.log"
  cp "$CLASSIFIER" "$FINAL/"
fi
t0=$(date +%s)
echo "config: steps $STEPS batch $BATCH seeds $SEEDS eval every $EVAL_EVERY ($EVAL_WEIGHTS) with $NUM_SAMPLES samples (Euler $EVAL_STEPS)" \
  | tee "$OUT/experiment.log"
echo "evaluation classifier: $CLASSIFIER sha256 $(sha256sum "$CLASSIFIER" | cut -c1-16)" | tee -a "$OUT/experiment.log"
$PY -m reed_image.features --preset fmnist-reed $DATA $TARGETS $EXTRA 2>&1 | grep -v "batch/s" | tee -a "$OUT/features.log"
echo "features: $(( $(date +%s) - t0 ))s" | tee -a "$OUT/features.log"

status=0
RUNS=()
STOP="kind=linear start=$STOP_AT end=$((STOP_AT + 1)) v_start=1.0 v_end=0.0"
# seeds outer, variants inner: with PARALLEL below the number of runs, every variant advances
for seed in $SEEDS; do
  for v in $VARIANTS; do
    preset=fmnist-$v
    extra=""
    case $v in
      reed-nowarmup) preset=fmnist-reed; extra="reed.curriculum.w_diff.kind=constant" ;;
      repa-stop) preset=fmnist-repa; extra=$(printf 'reed.curriculum.w_align.%s ' $STOP) ;;
      reed-stop) preset=fmnist-reed; extra=$(printf 'reed.curriculum.w_align.%s ' $STOP) ;;
      repa-window) preset=fmnist-repa
        extra="reed.targets.vision.alpha.kind=window reed.targets.vision.alpha.low=0.0 reed.targets.vision.alpha.high=$WINDOW_HIGH" ;;
    esac
    run=$v-s$seed
    RUNS+=("$run")
    # at most PARALLEL trainings at once: the next starts when one ends
    while [ "$(jobs -rp | wc -l)" -ge "$PARALLEL" ]; do wait -n || status=1; done
    TRAIN_TIMEOUT=$(( DEADLINE_S - (SECONDS + 45) ))  # leave 45 s to collect and report
    [ "$TRAIN_TIMEOUT" -gt 60 ] || { echo "deadline: $run not started" | tee -a "$OUT/experiment.log"; status=1; continue; }
    # SIGTERM at the deadline: the trainer checkpoints its current step and exits (KILL 30 s later)
    OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} timeout -k 30 "$TRAIN_TIMEOUT" $PY -m reed_image.train --preset "$preset" $DATA $TARGETS $extra $EXTRA \
      train.run_dir="$WORK/runs/$run" train.seed="$seed" train.steps="$STEPS" train.eval_every="$EVAL_EVERY" \
      train.batch_size="$BATCH" train.ckpt_every="$CKPT_EVERY" train.progress_bar=false \
      train.tensorboard=false eval.num_samples="$NUM_SAMPLES" eval.classifier="$CLASSIFIER" \
      eval.sampler.steps="$EVAL_STEPS" eval.weights="$EVAL_WEIGHTS" eval.ema_every="$EMA_EVERY" eval.reference_split=test \
      >> "$OUT/train_$run.log" 2>&1 &
  done
done
for pid in $(jobs -p); do wait "$pid" || status=1; done
echo "training: $(( $(date +%s) - t0 ))s since the features started (status $status)" | tee -a "$OUT/experiment.log"
for run in "${RUNS[@]}"; do
  mkdir -p "$OUT/runs/$run"
  cp "$WORK/runs/$run"/{config.yaml,metrics.jsonl} "$OUT/runs/$run/" 2>/dev/null || true
  cp "$WORK/runs/$run"/eval.jsonl "$OUT/runs/$run/" 2>/dev/null || true
  cp -r "$WORK/runs/$run/samples" "$OUT/runs/$run/" 2>/dev/null || true
  cp "$OUT/train_$run.log" "$OUT/runs/$run/train.log"
done
tail -n 3 "$OUT"/train_*.log
# a variant's runs are NAME-s<seed>: "repa-s*" would also take repa-stop's runs
specs=(); for v in $VARIANTS; do specs+=("$v=$OUT/runs/$v-s[0-9]*"); done
$PY tools/compare_runs.py "${specs[@]}" --metric ${METRIC:-raw/fd} --lower-is-better --also ${ALSO:-ema/fd raw/precision raw/recall} \
  --log-y --title "SiT-S/2 on Fashion-MNIST 32x32 (batch $BATCH, seeds $SEEDS)" --plot "$OUT/image_fd.png" \
  --md "$OUT/results.md" --json "$OUT/results.json" || status=1
tar czf "$FINAL/runs.tgz" --exclude='*.pt' -C "$OUT" . || status=1
cp "$OUT"/results.json "$OUT"/results.md "$OUT"/image_fd.png "$OUT"/experiment.log "$FINAL"/ 2>/dev/null || true
exit $status
