#!/bin/bash
# Table 1 LR pilot: every model at one LR, 200 steps (1/3 of the sweep's 600), seed 0, no records.
cd /work/main
for lr in 3.0e-3 1.0e-3 1.0e-2; do
  PYTHONPATH=src .venv/bin/moc-lab run table1 --out runs/table1-pilot/lr$lr \
    --set seeds=1 --set pretrain.steps=200 --set pretrain.eval_every=0 --set records=null \
    --set pretrain.lr=$lr --set eval.val_windows=64 --set eval.probe_limit=20 \
    --set eval.ablations=false --set eval.split_val=false > runs/table1-pilot/lr$lr.log 2>&1
done
