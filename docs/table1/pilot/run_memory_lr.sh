#!/bin/bash
# The Table 1 pilot of MoC's memory and bank LR (2026-12-06): MoC with token and with causal routing at the
# sweep's backbone LR 3e-3, memory layers and bank at 1x and 5x it (the LR pilot's 2x, the paper's ratio,
# is lr3.0e-3.json here), 200 steps, seed 0, no records; validation loss on 64 windows, as run.sh. Its
# results.json files are mem1x.json and mem5x.json here. Run from anywhere: ~15 min on 2 cores.
cd "$(dirname "$0")/../../.." || exit 1
for scale in 1.0 5.0; do
  .venv/bin/moc-lab run table1 --out runs/table1-pilot/mem${scale} \
    --set seeds=1 --set pretrain.steps=200 --set pretrain.eval_every=0 --set records=null \
    --set pretrain.lr=3.0e-3 --set 'lrs={}' --set eval.val_windows=64 --set eval.probe_limit=20 \
    --set eval.ablations=false --set eval.split_val=false --set 'baselines=[]' \
    --set pretrain.memory_lr_scale=$scale --set pretrain.bank_lr_scale=$scale || exit 1
done
