#!/usr/bin/env bash
# The demo, from a fresh clone: set up, shard the embedded corpus (Bach chorales from music21), train on
# 2 CPU processes (real DDP over gloo), then sample and evaluate. About 10 minutes on a 2-core machine.
# Extra key=value arguments go to the trainer, e.g. `bash launch/demo.sh train.steps=100`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh demo,audio
. .venv/bin/activate
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
NPROC=${B2B_DEMO_PROCESSES:-2}

b2b shards build --source demo --output shards/demo
# --multi_gpu starts NPROC real ranks (gloo on CPU, NCCL on GPUs); --cpu would start only one.
accelerate launch --multi_gpu --num_processes "$NPROC" --num_machines 1 --mixed_precision no \
  --dynamo_backend no --main_process_port "${B2B_DEMO_PORT:-29517}" \
  b2b/train.py --config configs/demo.yaml "$@"
b2b sample --checkpoint runs/demo --n 8 --out runs/demo/gallery
b2b eval --checkpoint runs/demo --data shards/demo --n 256 --out runs/demo/eval
echo
echo "Done. Listen and look: runs/demo/gallery/index.html (MIDI, WAV, PNG per sample);"
echo "training snapshots: runs/demo/samples/; curves: runs/demo/metrics.jsonl; metrics: runs/demo/eval/"
