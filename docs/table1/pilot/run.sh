#!/bin/bash
# The Table 1 LR pilot (2026-12-06): every model of `table1` at one LR for 200 steps (1/3 of the sweep's
# length then; the sweep now runs 640), seed 0, no records; validation loss on 64 windows. Its results.json
# files are lr1.0e-3.json, lr3.0e-3.json and lr1.0e-2.json here. Run from anywhere: ~1 h on 2 cores.
cd "$(dirname "$0")/../../.." || exit 1
for lr in 3.0e-3 1.0e-3 1.0e-2; do
  .venv/bin/moc-lab run table1 --out runs/table1-pilot/lr$lr \
    --set seeds=1 --set pretrain.steps=200 --set pretrain.eval_every=0 --set records=null \
    --set pretrain.lr=$lr --set 'lrs={}' --set eval.val_windows=64 --set eval.probe_limit=20 \
    --set eval.ablations=false --set eval.split_val=false || exit 1
done
