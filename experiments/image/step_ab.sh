#!/usr/bin/env bash
# Why is a REPA-like training step slower than vanilla's on the GPU? One process at a time, the
# Fashion-MNIST presets at batch 256, 100 steps each, no evaluation: vanilla; REPA-like with the
# target table memory-mapped / in pinned RAM / in GPU memory; compile off and on. Prints each
# run's steps/s and host batch time (the trainer's metrics) on one line.
#
#   bash experiments/image/step_ab.sh            # GPU, repo root; needs .carry/image (image_prepare_carry.py)
#
# Seen on an H100 in a seeded run (three processes side by side): vanilla 7.4 steps/s, REPA-like
# with LOCATION=mmap 1.83 steps/s; on the CPU the REPA-like step is only 12% slower.
set -uo pipefail
CARRY=${CARRY:-.carry/image}
WORK=${WORK:-/tmp/reed-step-ab}
STEPS=${STEPS:-100}
BATCH=${BATCH:-256}
EXTRA=${EXTRA:-}  # overrides for every step (CPU smoke test: a tiny model and a data subset)
PY=${PY:-python}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export PYTHONPATH="packages/reed-core/src:packages/reed-image/src:$CARRY/pylib${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$WORK/runs"
V="reed.targets.vision.store=$WORK/vision reed.targets.vision.checkpoint=$CARRY/efficientnet-lite0.pth"
$PY -m reed_image.features --preset fmnist-repa data.path="$CARRY/fashion-mnist" $V $EXTRA 2>&1 | grep -v batch/s | tail -n 1
# SPECS: "variant location compile" triples separated by commas
SPECS=${SPECS:-"vanilla - false,repa mmap false,repa host false,repa device false,vanilla - true,repa mmap true,repa device true"}
IFS=, read -ra SPEC_LIST <<< "$SPECS"
for spec in "${SPEC_LIST[@]}"; do
  set -- $spec
  targets=""
  [ "$1" = repa ] && targets="$V reed.targets.vision.location=$2"
  run="$WORK/runs/$1-$2-compile_$3"
  rm -rf "$run"
  $PY -m reed_image.train --preset "fmnist-$1" data.path="$CARRY/fashion-mnist" $targets $EXTRA \
    train.run_dir="$run" train.steps="$STEPS" train.log_every=25 train.batch_size="$BATCH" \
    train.speed.compile="$3" train.progress_bar=false train.tensorboard=false train.ckpt_every=100000 \
    eval.metrics=false eval.num_samples=10 eval.grid_size=10 > "$run.log" 2>&1 || echo "failed: $run.log"
  rates=$(grep -o '"steps_per_s": [0-9.]*' "$run/metrics.jsonl" 2>/dev/null | cut -d' ' -f2 | tail -n 2 | tr '\n' ' ')
  host=$(grep -o '"host/batch_ms": [0-9.]*' "$run/metrics.jsonl" 2>/dev/null | cut -d' ' -f2 | tail -n 1)
  echo "$1 location=$2 compile=$3: steps/s (last two windows) $rates host batch ms $host"
done
