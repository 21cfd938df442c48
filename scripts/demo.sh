#!/usr/bin/env bash
# The main job: set up (once), write the embedded synthetic dataset (once), then run the whole
# pipeline (CAM -> dCRF affinity labels -> AffinityNet -> random walk -> segmentation network
# -> mIoU) with the tiny backbone on the CPU, and print the metrics. An interrupted run picks up where it stopped.
#   AFFEXT_DATA   dataset folder (default data/synth)
#   AFFEXT_WORK   work directory (default work/demo)
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$ROOT"
DATA=${AFFEXT_DATA:-$ROOT/data/synth}
WORK=${AFFEXT_WORK:-$ROOT/work/demo}
LISTS="$DATA/ImageSets/Segmentation"
if [ ! -f "$DATA/synth.config.json" ]; then
  affext data synth --out "$DATA"
fi
affext run --voc-root "$DATA" --train-list "$LISTS/train.txt" --eval-list "$LISTS/val.txt" \
  --workdir "$WORK" --backbone tiny --device cpu
